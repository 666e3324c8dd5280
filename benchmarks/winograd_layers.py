"""Winograd F(4×4, 3×3) against the direct 3×3 convolution, layer by layer, at SD v1's shapes (512² images:
latents 64², 32², 16² with 320, 640, 1280 channels; batch 2, a guided step). Issue 28 asked whether Winograd
can be on by default without its memory, either with its filters transformed per call instead of kept
(4× a layer's weights), or with its products in bfloat16. Each layer's variants:

- direct float32, and direct bfloat16 channels_last (what `Pipeline.load` runs by default on a bf16 CPU);
- Winograd float32, filters kept (`WinogradConv2d` as it is);
- Winograd float32, filters transformed on every call (no memory kept; one [36, 9] matmul over the weights);
- Winograd with its 36 products in bfloat16 (transforms in float32): the input tiles V and filters U rounded.

Reported: milliseconds a call (the median of `--repeats` calls after one, the variants' calls interleaved so that
a change in the machine's speed falls on all of them alike), relative L2 error against direct float32 in float64,
and the kept filters' size. Weights random, scaled as a trained network's (unit-variance outputs).

Run:  python benchmarks/winograd_layers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from t2i.devices import cpu_flags
from t2i.kernels.winograd import G, TILE, _fused_input, _fused_output, conv3x3, transform_filters

LAYERS = [(320, 64), (640, 32), (1280, 16)]  # (channels, latent side) of SD v1's levels at 512²
KRON = torch.kron(G, G).float()  # [36, 9]: U_ij = Σ_ab G_ia G_jb g_ab for every filter at once


def filters_per_call(weight: torch.Tensor) -> torch.Tensor:
    """`transform_filters` as one float32 matmul, [36, C_in, C_out]: what a per-call transform would run."""
    c_out, c_in = weight.shape[:2]
    return (KRON @ weight.permute(1, 0, 2, 3).reshape(c_in * c_out, 9).T).view(36, c_in, c_out)


def bf16_products(x: torch.Tensor, U: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Winograd with V and U in bfloat16 for the 36 batched products (accumulated in float32)."""
    N, _, H, W = x.shape
    th, tw = -(-H // TILE), -(-W // TILE)
    M = torch.bmm(_fused_input(x.contiguous(), th, tw).bfloat16(), U).float()
    return _fused_output(M, bias, N, H, W, th, tw)


def interleaved_ms(variants: dict, repeats: int) -> dict[str, float]:
    """The median milliseconds of each variant's call, after one call each, the variants taking turns."""
    for f in variants.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, f in variants.items():
            start = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    flags = " ".join(sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, flags {flags}")
    print("| channels, side | direct fp32 ms | direct bf16 CL ms (err) | Winograd kept ms | Winograd per call ms "
          "| Winograd bf16 products ms (err) | kept filters MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    for channels, side in LAYERS:
        x = torch.randn(2, channels, side, side, generator=generator)
        weight = torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)
        bias = torch.randn(channels, generator=generator)
        reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)

        def error(y: torch.Tensor) -> float:
            return ((y.double() - reference).norm() / reference.norm()).item()

        U = transform_filters(weight)
        torch.testing.assert_close(filters_per_call(weight), U, rtol=1e-5, atol=1e-6)
        U_bf16 = U.bfloat16()
        x_cl = x.bfloat16().contiguous(memory_format=torch.channels_last)
        w_cl = weight.bfloat16().contiguous(memory_format=torch.channels_last)
        bias_bf16 = bias.bfloat16()
        variants = {
            "direct": lambda: F.conv2d(x, weight, bias, padding=1),
            "bf16": lambda: F.conv2d(x_cl, w_cl, bias_bf16, padding=1),
            "kept": lambda: conv3x3(x, U, bias),
            "per call": lambda: conv3x3(x, filters_per_call(weight), bias),
            "bf16 products": lambda: bf16_products(x, U_bf16, bias),
        }
        ms = interleaved_ms(variants, args.repeats)
        err = {name: error(f()) for name, f in variants.items()}
        print(f"| {channels}, {side}² | {ms['direct']:.1f} | {ms['bf16']:.1f} ({err['bf16']:.1e}) | {ms['kept']:.1f} "
              f"| {ms['per call']:.1f} | {ms['bf16 products']:.1f} ({err['bf16 products']:.1e}) "
              f"| {U.numel() * 4 / 2**20:.0f} |", flush=True)
        assert err["kept"] < 1e-4 and err["per call"] < 1e-4, err  # Winograd in float32 is the convolution


if __name__ == "__main__":
    main()
