"""Stable Diffusion v1's U-Net at full size on the CPU: ours against diffusers', same weights.

One guided denoising step of SD v1 at 512×512 is one U-Net call on a batch of 2 latents
[2, 4, 64, 64] (conditional and unconditional) with a [2, 77, 768] text context. Both networks
hold the same random weights (ours is built on diffusers' tensors, no copy). Variants of ours:
plain (NCHW), Winograd F(4×4, 3×3) 3×3 convolutions (`t2i.kernels.winograd`), channels_last, and
channels_last + torch.compile (inductor, frozen weights; compiled once before timing, its compile
time reported); diffusers plain and channels_last. GFLOP/s count the direct convolution's FLOPs
for every variant (Winograd's are "effective": it does fewer multiplications for the same output).
Each variant's output is compared with diffusers' plain output (max abs difference), its
FLOPs counted (`t2i.bench.count_flops`), and the calls interleaved (`t2i.bench.interleaved_times`).

Run:  python benchmarks/sd_unet_speed.py [--size 512] [--repeats 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time

import diffusers
import torch

from t2i.bench import count_flops, interleaved_times, matmul_peak_gflops, random_sd_v1_unet, ours_from
from t2i.kernels.winograd import WinogradConv2d, use_winograd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="image side (latents are size/8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()

    theirs = random_sd_v1_unet()
    ours = ours_from(theirs)
    side = args.size // 8
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, side, side, generator=generator)
    t = torch.tensor([500, 500])
    context = torch.randn(2, 77, 768, generator=generator)
    ours_winograd = ours_from(theirs)
    replaced = use_winograd(ours_winograd)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # channels_last copies: .to() gives the 4-d weights new NHWC tensors, the plain networks keep theirs
    ours_cl = ours_from(theirs).to(memory_format=torch.channels_last)
    theirs_cl = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    variants = {
        "diffusers": lambda: theirs(x, t, encoder_hidden_states=context).sample,
        "t2i": lambda: ours(x, t, context),
    }
    with torch.no_grad():
        flops = count_flops(variants["t2i"])
        reference = variants["diffusers"]()
        variants["t2i, winograd"] = lambda: ours_winograd(x, t, context)
        filters = sum(m.filters().numel() for m in ours_winograd.modules() if isinstance(m, WinogradConv2d))
        variants["t2i, channels_last"] = lambda: ours_cl(x_cl, t, context)
        variants["diffusers, channels_last"] = lambda: theirs_cl(x_cl, t, encoder_hidden_states=context).sample
        compile_seconds = None
        if args.compile:
            compiled = torch.compile(ours_cl, options={"freezing": True})
            start = time.perf_counter()
            compiled(x_cl, t, context)
            compile_seconds = time.perf_counter() - start
            variants["t2i, channels_last + compile"] = lambda: compiled(x_cl, t, context)
        differences = {name: (fn() - reference).abs().max().item() for name, fn in variants.items()}
        times = interleaved_times(variants, args.repeats, warmup=0)
    peak = matmul_peak_gflops()

    print(f"Command: `{shlex.join(['python', 'benchmarks/sd_unet_speed.py', *sys.argv[1:]])}`")
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, {torch.get_num_threads()} threads; "
          f"SD v1 U-Net ({sum(q.numel() for q in ours.parameters()):,} parameters), input [2, 4, {side}, {side}] "
          f"+ context [2, 77, 768], {flops / 1e9:.0f} GFLOP per call; fp32 matmul peak ~{peak:.0f} GFLOP/s "
          f"(2048² torch.mm); median of {args.repeats} interleaved calls"
          + (f"; compiling took {compile_seconds:.0f} s" if compile_seconds else "")
          + f"; Winograd: {replaced} convolutions, transformed filters {filters * 4 / 2**30:.1f} GiB\n")
    base = statistics.median(times["diffusers"])
    print("| network | median s/call | × diffusers' time | GFLOP/s | of peak | max abs diff to diffusers |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        seconds = statistics.median(ts)
        print(f"| {name} | {seconds:.2f} | {seconds / base:.3f} | {flops / 1e9 / seconds:.1f} | "
              f"{flops / 1e9 / seconds / peak:.0%} | {differences[name]:.1e} |")


if __name__ == "__main__":
    main()
