"""Training throughput of the t2i U-Net against diffusers' `UNet2DModel` at the same shape.

Both models are built with the same widths, depth, attention levels and head size, and are
trained in the same process on the same batch, timesteps and fixed target. One training step is
forward, MSE loss, backward, AdamW step, zero_grad. After 2 warm-up steps per model the steps are
interleaved (the order alternates every round) and the median seconds/step of each is reported,
with images/s, the ratio diffusers/ours (> 1 means ours is faster), the FLOPs of one
forward+backward (`torch.utils.flop_counter.FlopCounterMode`), the GFLOP/s achieved, and the
fraction of the GFLOP/s a 2048x2048 `torch.mm` reaches on this machine (a practical peak) in the
step's precision.
With `--mixed-precision bf16` both forward passes run under `torch.autocast(bfloat16)`, as
`t2i train --mixed-precision bf16` runs them, and the float32 steps of our model are timed too.

Run:  python benchmarks/train_throughput.py            (see --help for the shape options)
"""

from __future__ import annotations

import argparse
import copy
import functools
import shlex
import statistics
import sys

import diffusers
import torch
import torch.nn.functional as F

from t2i.bench import count_flops, interleaved_times, matmul_peak_gflops
from t2i.models.unet import UNet, UNetConfig
from t2i.training.diffusion import MIXED_PRECISION


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=32, help="model_channels / block_out_channels[0]")
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--attention-levels", type=int, nargs="*", default=[2])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: torch's")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the matmul peak and the timing then on the GPU)")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no",
                   help="bf16: forward passes under torch.autocast(bfloat16), as t2i train --mixed-precision bf16")
    return p.parse_args()


def build_models(a: argparse.Namespace) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = UNet(UNetConfig(model_channels=a.channels, channel_mult=tuple(a.channel_mult),
                           num_res_blocks=a.num_res_blocks, attention_levels=tuple(a.attention_levels),
                           mid_attention=True, block_type="resnet", head_dim=32, norm_groups=32))
    levels = range(len(a.channel_mult))
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(
        sample_size=a.image_size, in_channels=3, out_channels=3,
        block_out_channels=tuple(a.channels * m for m in a.channel_mult),
        layers_per_block=a.num_res_blocks,  # up blocks get layers_per_block + 1, as ours do
        down_block_types=tuple("AttnDownBlock2D" if i in a.attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in a.attention_levels else "UpBlock2D" for i in reversed(levels)),
        mid_block_type="UNetMidBlock2D", add_attention=True,  # mid: ResBlock, attention, ResBlock
        attention_head_dim=32, norm_num_groups=32, norm_eps=1e-5, dropout=0.0,
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,  # cos first, like ours
        downsample_type="conv", upsample_type="conv", resnet_time_scale_shift="default")
    # Parameter counts differ only by biases: diffusers' attention has biased q/k/v projections
    # (3*C per attention block) where ours has none. The layers are otherwise the same.
    return {"t2i UNet": ours, "diffusers UNet2DModel": theirs}


def predict(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = model(x, t)
    return out.sample if hasattr(out, "sample") else out


def loss_of(model, x, t, target, bf16: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16):
        return F.mse_loss(predict(model, x, t).float(), target)


def train_step(model, opt, x, t, target, bf16: bool) -> None:
    loss_of(model, x, t, target, bf16).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_flops(model, x, t, target) -> int:
    flops = count_flops(lambda: loss_of(model, x, t, target, False).backward())
    model.zero_grad(set_to_none=True)
    return flops


def main() -> None:
    a = parse_args()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    models = {name: model.to(a.device) for name, model in build_models(a).items()}
    bf16 = a.mixed_precision == "bf16"
    precision = {name: bf16 for name in models}
    if bf16:  # our model in float32 too, from the same weights, as the baseline of the speed-up
        models["t2i UNet, float32"] = copy.deepcopy(models["t2i UNet"])
        precision["t2i UNet, float32"] = False
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (a.batch_size,), generator=torch.Generator().manual_seed(2))
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    x, t, target = x.to(a.device), t.to(a.device), target.to(a.device)

    shapes = {}
    for name, model in models.items():
        model.train()
        with torch.no_grad():
            shapes[name] = tuple(predict(model, x, t).shape)
    assert len(set(shapes.values())) == 1, f"output shapes differ: {shapes}"

    flops = {name: step_flops(m, x, t, target) for name, m in models.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    steps = {name: functools.partial(train_step, model, opts[name], x, t, target, precision[name])
             for name, model in models.items()}
    times = interleaved_times(steps, a.repeats, warmup=2, device=a.device)
    peak = {False: matmul_peak_gflops(a.device)}
    if bf16:
        peak[True] = matmul_peak_gflops(a.device, dtype=torch.bfloat16)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    ours, theirs = list(models)[:2]
    print(f"Command: `{shlex.join(['python', 'benchmarks/train_throughput.py', *sys.argv[1:]])}`")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads: {torch.get_num_threads()}, "
          f"batch {a.batch_size} x 3 x {a.image_size} x {a.image_size}, {a.repeats} interleaved steps each, "
          f"{'bf16 autocast' if bf16 else 'float32'}, output shape {shapes[ours]} for all; "
          f"matmul peak ~{peak[False]:.1f} GFLOP/s in float32"
          f"{f', ~{peak[True]:.1f} in bfloat16' if bf16 else ''} (2048x2048 torch.mm)\n")
    print("| model | params | median s/step | images/s | GFLOP/step (fwd+bwd) | GFLOP/s | % of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, model in models.items():
        gflops = flops[name] / 1e9
        print(f"| {name} | {sum(p.numel() for p in model.parameters()):,} | {med[name]:.4f} | "
              f"{a.batch_size / med[name]:.1f} | {gflops:.2f} | {gflops / med[name]:.1f} | "
              f"{100 * gflops / med[name] / peak[precision[name]]:.1f}% |")
    print(f"\nRatio diffusers/t2i time per step: {med[theirs] / med[ours]:.3f} (> 1 means t2i is faster)")
    if bf16:
        print(f"Ratio float32/bf16 time per step of t2i: {med['t2i UNet, float32'] / med[ours]:.3f} "
              "(> 1 means mixed precision is faster)")


if __name__ == "__main__":
    main()
