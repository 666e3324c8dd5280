"""Stable Diffusion v1's U-Net at full size on the CPU: ours against diffusers and OpenVINO, same weights.

One guided denoising step of SD v1 at 512×512 is one U-Net call on a batch of 2 latents
[2, 4, 64, 64] (conditional and unconditional) with a [2, 77, 768] text context. Every variant reads
the same random SD v1 folder (`t2i.random_weights.random_sd_v1_folder`, float16 on disk; see `peers.py`):
diffusers in float32 and bfloat16, OpenVINO compiled in f32 and bf16, ours in float32 and in the
precision and layout `Pipeline.load` picks with no flags ("t2i default": bfloat16 and channels_last where the
CPU has bfloat16 natively; its peak memory includes the VAE and text encoder `Pipeline.load` loads too;
on a CPU without AMX, also the default without each of its own paths there, to show what each gains: "t2i default,
attention in chunks" with `layers.attend_in_chunks`, the default before our attention kernel, instead of
`t2i.kernels.attention`; "t2i default, convolutions direct" with oneDNN's direct convolution on small maps too,
not `layers.conv_as_matmul`; "t2i default, epilogues unfused" with the feed-forward's GELU and product and the
residual sums as ops of their own, not fused into the products, `layers.epilogues_fuse`).
Each variant's output is compared with diffusers float32's (relative L2), the calls interleaved
(`t2i.bench.interleaved_times`), and each variant's peak memory measured in a process of its own
(loading and one call). GFLOP/s count the direct convolutions' FLOPs for every variant.

Run:  python benchmarks/sd_unet_speed.py [--dir /tmp/t2i-bench] [--repeats 3] [--winograd]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

import torch

from peers import diffusers_unet, measure_peak, openvino_compiled, peak_rss, sd_folder, setup, unet_inputs
from t2i.bench import count_flops, interleaved_times, matmul_peak_gflops
from t2i.devices import amx
from t2i.models import layers
from t2i.pipeline import Pipeline


def load(folder: Path, variant: str):
    """The variant's U-Net as a function of (x, t, context) giving float32."""
    x, t, context = unet_inputs()
    if variant.startswith("diffusers"):
        dtype = torch.bfloat16 if variant.endswith("bf16") else torch.float32
        unet = diffusers_unet(folder, dtype)
        return lambda: unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
    if variant.startswith("OpenVINO"):
        call = openvino_compiled(folder, "unet", variant.split()[-1])
        return lambda: call(x, t, context)
    if variant.startswith("t2i"):  # the U-Net as `Pipeline.load` leaves it (its layout, its precision)
        pipe = pipeline(folder, "fp32" in variant, "winograd" in variant)
        x, context = x.to(pipe.dtype), context.to(pipe.dtype)
        settings = next((ABLATIONS[name] for name in ABLATIONS if variant.endswith(name)), {})
        return lambda: with_layers(settings, lambda: pipe.unet(x, t, context).float())
    raise ValueError(variant)


@functools.cache  # the ablations below share the default's networks: a copy each would not fit in 24 GiB
def pipeline(folder: Path, fp32: bool, winograd: bool) -> Pipeline:
    pipe = Pipeline.load(folder, "cpu", "fp32" if fp32 else None)
    return pipe.optimize(winograd=True) if winograd else pipe


# the default's own paths on CPUs without AMX, each turned off by the `layers` setting that gives the path before
ABLATIONS = {"attention in chunks": {"KERNEL_SCORES": math.inf}, "convolutions direct": {"MATMUL_CONV_ROWS": 0},
             "epilogues unfused": {"epilogues_fuse": lambda *args: False}}


def with_layers(settings: dict, call):
    """`call()` with `layers`' attributes set to `settings` meanwhile."""
    before = {name: getattr(layers, name) for name in settings}
    for name, value in settings.items():
        setattr(layers, name, value)
    try:
        return call()
    finally:
        for name, value in before.items():
            setattr(layers, name, value)


def child(folder: Path, variant: str) -> None:
    with torch.no_grad():
        load(folder, variant)()
    print(json.dumps({"peak": peak_rss()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/tmp/t2i-bench"), help="where the random SD folder is kept")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--winograd", action="store_true", help="also time ours with Winograd convolutions (fp32)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(Path(args.child[0]), args.child[1])

    args.dir.mkdir(parents=True, exist_ok=True)
    folder = sd_folder(args.dir)
    default = Pipeline.load(folder, "cpu")
    layout = "channels_last" if default.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) \
        else "NCHW"
    names = ["diffusers fp32", "diffusers bf16", "t2i fp32", "t2i default", "OpenVINO f32", "OpenVINO bf16"]
    names += ["t2i fp32, winograd"] * args.winograd
    if default.dtype == torch.bfloat16 and not amx(torch.device("cpu")):
        names += [f"t2i default, {name}" for name in ABLATIONS]
    default = f"{str(default.dtype).removeprefix('torch.')}, {layout}"
    peaks = {name: measure_peak(__file__, folder, name) for name in names}
    with torch.no_grad():
        variants = {name: load(folder, name) for name in names}
        flops = count_flops(variants["t2i fp32"])
        outputs = {name: fn() for name, fn in variants.items()}
        reference = outputs["diffusers fp32"]
        differences = {name: ((out - reference).norm() / reference.norm()).item() for name, out in outputs.items()}
        del outputs
        times = interleaved_times(variants, args.repeats, warmup=0)
    peak32, peak16 = matmul_peak_gflops(), matmul_peak_gflops(dtype=torch.bfloat16)

    print(f"Command: `{shlex.join(['python', 'benchmarks/sd_unet_speed.py', *sys.argv[1:]])}`")
    print(f"{setup()}; SD v1 U-Net, input [2, 4, 64, 64] + context [2, 77, 768], "
          f"{flops / 1e9:.0f} GFLOP per call; matmul peak ~{peak32:.0f} GFLOP/s fp32, ~{peak16:.0f} bf16 "
          f"(2048² torch.mm); median of {args.repeats} interleaved calls; peak memory: each variant loading and "
          f"calling once in a process of its own; t2i default: {default}\n")
    base = statistics.median(times["diffusers fp32"])
    print("| U-Net | median s/call | × diffusers fp32 | GFLOP/s | relative L2 to diffusers fp32 | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        seconds = statistics.median(ts)
        print(f"| {name} | {seconds:.2f} | {seconds / base:.3f} | {flops / 1e9 / seconds:.0f} | "
              f"{differences[name]:.2e} | {peaks[name] / 2**30:.2f} |")


if __name__ == "__main__":
    main()
