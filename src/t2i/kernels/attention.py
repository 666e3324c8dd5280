"""softmax(QKᵀ/√d) V for bfloat16 inference on CPUs with AVX512-BF16 and no AMX, by `attention.c`.

There, torch's fused bfloat16 attention runs its products at float32's speed, and two bfloat16 matrix
products with a softmax between them (`models.layers.attend_in_chunks`) round the scores to bfloat16.
This kernel does both products with the CPU's bfloat16 dot-product instruction (float32 sums) and keeps
the scores in float32 through the softmax, 16 query rows at a time so that they stay in cache: the
fused kernel's precision at the bfloat16 products' speed (docs/benchmarks.md). Here K and V are laid
out in the pairs that instruction reads; the row blocks are split over PyTorch's threads.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .build import avx512_bf16_library, run_split

ROWS = 16  # query rows a block: attention.c's ROWS


@cache
def _kernel() -> ctypes.CDLL | None:
    """attention.c compiled and loaded, or None where the CPU has no AVX512-BF16 or nothing builds it."""
    def declare(lib: ctypes.CDLL) -> None:
        lib.attention.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 11 + [ctypes.c_float] + [ctypes.c_long] * 2
        lib.attention.restype = ctypes.c_int

    return avx512_bf16_library(Path(__file__).with_name("attention.c"), declare)


def available() -> bool:
    return _kernel() is not None


def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attention` computes these: bfloat16 CPU tensors [..., L, d] with the same leading shape (no
    broadcasting), an even head size, and the kernel built."""
    return (q.device.type == k.device.type == v.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and q.shape[-1] == k.shape[-1]
            and k.shape[-2] == v.shape[-2] > 0 and q.shape[-1] % 2 == 0 and available())


# Outside torch.compile's graphs: the C code reads tensors by address, and a graph broken around the call could free
# the packed K and V that only their addresses still name (they are also kept referenced to the end below).
@torch.compiler.disable
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(Q Kᵀ · scale) V (scale 1/√d by default) of bfloat16 [..., L, d] queries and [..., S, d], [..., S, dv]
    keys and values (`takes`): [..., L, dv] in bfloat16. Queries strided as `Attention._split` leaves them ([B, H, L,
    d] views of [B, L, H, d]) are read in place, and the output is such a view: merging the heads copies nothing."""
    *batch, L, d = q.shape
    S, dv = k.shape[-2], v.shape[-1]
    scale = d ** -0.5 if scale is None else scale
    if not scale > 0:  # the largest score is taken before the scale: a negative one would pick the smallest
        raise ValueError(f"attention's scale must be positive, got {scale}")
    if q.dim() != 4:  # [..., L, d] as [B, 1, L, d]
        q, k, v = (a.reshape(-1, 1, *a.shape[-2:]) for a in (q, k, v))
    if q.stride(-1) != 1:
        q = q.contiguous()
    B, H = q.shape[:2]
    keys, columns = -(-S // 16) * 16, -(-dv // 16) * 16
    # K in pairs of one key's consecutive entries, 16 keys side by side; V in pairs of two consecutive keys' entries
    if keys != S:
        k = F.pad(k, (0, 0, 0, keys - S))
    kp = k.unflatten(2, (keys // 16, 16)).unflatten(-1, (d // 2, 2)).permute(0, 1, 2, 4, 3, 5).contiguous()
    if (keys, columns) != (S, dv):
        v = F.pad(v, (0, columns - dv, 0, keys - S))
    vp = v.unflatten(2, (keys // 2, 2)).unflatten(-1, (columns // 16, 16)).permute(0, 1, 4, 2, 5, 3).contiguous()
    out = q.new_empty(B, L, H, dv)  # the heads side by side in each row, as the output projection reads them
    failed = []

    def run(*args) -> None:
        if _kernel().attention(*args):
            failed.append(True)

    run_split(run, B * H * -(-L // ROWS), B * H * L * S, q.data_ptr(), kp.data_ptr(), vp.data_ptr(), out.data_ptr(),
              H, L, S, d, dv, *q.stride()[:3], L * H * dv, dv, H * dv, scale)
    del q, kp, vp  # alive until here: the kernel read them by address
    if failed:
        raise MemoryError(f"attention.c could not allocate its {ROWS} × {keys} score buffers")
    return out.transpose(1, 2).reshape(*batch, L, dv)
