"""Attention on the CPU in bfloat16: torch's fused kernel against `layers.attend_in_chunks` and our AVX512-BF16
kernel (`t2i.kernels.attention`), at SD's shapes.

Without AMX, torch's fused bfloat16 attention kernel runs its products at float32's speed, so for bfloat16
inference `layers.attend` used it in float32 (casting in and out), then, for large unmasked attention, two
bfloat16 matrix products and a softmax one head's block of rows at a time ("chunks"), and now our kernel
(bfloat16 products, float32 scores). For each shape (SD v1's self- and cross-attention at 512², its
decoder's, SD 2.x's at 768², the text encoder's) this times, interleaved (medians), the fused kernel in
float32, the fused kernel in bfloat16, the chunks and the kernel, names the path `attend` takes
(`layers.attention_path`), and gives each one's relative L2 error against float64. Q, K, V are strided as
`Attention._split` leaves them.

Run:  python benchmarks/attention_cpu.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys

import torch
import torch.nn.functional as F

from peers import setup
from t2i.bench import interleaved_times
from t2i.kernels import attention as kernel
from t2i.models import layers

SHAPES = {  # name: ((batch, heads, queries, keys, head size), the std of Q's and K's entries)
    "U-Net self, 64²": ((2, 8, 4096, 4096, 40), 1.0),
    "U-Net self, 64², peaked": ((2, 8, 4096, 4096, 40), 3.0),
    "U-Net self, 32²": ((2, 8, 1024, 1024, 80), 1.0),
    "U-Net self, 32², peaked": ((2, 8, 1024, 1024, 80), 3.0),
    "U-Net self, 16²": ((2, 8, 256, 256, 160), 1.0),
    "U-Net cross, 64²": ((2, 8, 4096, 77, 40), 1.0),
    "U-Net cross, 32²": ((2, 8, 1024, 77, 80), 1.0),
    "U-Net cross, 16²": ((2, 8, 256, 77, 160), 1.0),
    "decoder, 64²": ((1, 1, 4096, 4096, 512), 1.0),
    "SD 2.x self, 96²": ((2, 5, 9216, 9216, 64), 1.0),
    "text encoder": ((2, 12, 77, 77, 64), 1.0),
}


def inputs(batch: int, heads: int, queries: int, keys: int, d: int, std: float) -> tuple[torch.Tensor, ...]:
    """Q, K, V in float64 as [B, heads, N, d] views of [B, N, heads, d] tensors, Q's and K's entries of `std`
    (3: scores QKᵀ/√d of std 9, a peaked softmax, where rounding the scores costs most)."""
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, n, heads, d, generator=generator, dtype=torch.float64).transpose(1, 2) * scale
                 for n, scale in ((queries, std), (keys, std), (keys, 1.0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print(f"Command: `{shlex.join(['python', 'benchmarks/attention_cpu.py', *sys.argv[1:]])}`")
    print(f"{setup()}; AMX: {layers.amx(torch.device('cpu'))}; median of {args.repeats} interleaved calls; "
          "error: relative L2 against float64\n")
    print("| attention | [B, heads, L, S, d] | fused fp32 ms (error) | fused bf16 ms (error) | "
          "in chunks bf16 ms (error) | kernel bf16 ms (error) | kernel ÷ fused fp32 | kernel ÷ chunks | "
          "`attend` takes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    with torch.no_grad():
        for name, (shape, std) in SHAPES.items():
            q, k, v = inputs(*shape, std)
            reference = F.scaled_dot_product_attention(q, k, v)
            q32, k32, v32 = q.float(), k.float(), v.float()
            q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
            variants = {
                "fused fp32": lambda: F.scaled_dot_product_attention(q32, k32, v32),
                "fused bf16": lambda: F.scaled_dot_product_attention(q16, k16, v16),
                "chunks": lambda: layers.attend_in_chunks(q16, k16, v16),
            }
            if kernel.takes(q16, k16, v16):
                variants["kernel"] = lambda: kernel.attention(q16, k16, v16)
            errors = {key: ((fn().double() - reference).norm() / reference.norm()).item()
                      for key, fn in variants.items()}
            seconds = {key: statistics.median(ts) for key, ts in interleaved_times(variants, args.repeats).items()}
            path = layers.attention_path(q16, k16, v16)
            cells = [f"{seconds[key] * 1e3:.2f} ({errors[key]:.1e})" if key in seconds else "—"
                     for key in ("fused fp32", "fused bf16", "chunks", "kernel")]
            ratios = [f"{seconds['kernel'] / seconds[base]:.2f}" if "kernel" in seconds else "—"
                      for base in ("fused fp32", "chunks")]
            print(f"| {name} | {list(shape)} | {' | '.join(cells)} | {' | '.join(ratios)} | "
                  f"{'fused bf16' if path == 'fused' else path} |")


if __name__ == "__main__":
    main()
