"""3×3 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray 2016), for inference.

A 3×3 convolution makes each 4×4 block of outputs from a 6×6 block d of inputs with 16·9 = 144
multiplications per channel pair. Winograd's algorithm makes the same block as

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

with 36 (4× fewer): the filter g is transformed once, U = G g Gᵀ; each input tile V = Bᵀ d B and each
output tile Aᵀ M A cost only additions and small constant multiplications. Summed over input
channels, the 36 elementwise products are 36 matrix products M_k = V_k @ U_k, [tiles × C_in] @
[C_in × C_out], which the BLAS runs at full speed. The two transforms are memory passes over the
feature maps; `winograd.c` does each in one pass (`build.load_library`); without a compiler they
run as PyTorch operations, slower.

In float32 the result departs from the direct convolution by ~1e-5 of its magnitude (the
transforms' constants, up to 8, amplify rounding) — tests/test_winograd.py and docs/benchmarks.md.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .build import load_library, run_split

# Lavin & Gray's matrices for F(4, 3), interpolation points 0, ±1, ±2 and ∞.
B_T = torch.tensor([[4, 0, -5, 0, 1, 0],
                    [0, -4, -4, 1, 1, 0],
                    [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0],
                    [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
G = torch.tensor([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], dtype=torch.float64)
A_T = torch.tensor([[1, 1, 1, 1, 1, 0],
                    [0, 1, -1, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
TILE = 4  # outputs per tile side (m); inputs per tile side α = m + 3 − 1 = 6


def transform_filters(weight: torch.Tensor) -> torch.Tensor:
    """U = G g Gᵀ of every filter: [C_out, C_in, 3, 3] -> [36, C_in, C_out], in float64 then cast."""
    U = torch.einsum("ia,ocab,jb->ijco", G.to(weight.device), weight.double(), G.to(weight.device))
    return U.reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def conv3x3(x: torch.Tensor, U: torch.Tensor, bias: torch.Tensor | None, fused: bool | None = None) -> torch.Tensor:
    """The 3×3 convolution (stride 1, padding 1) of x [N, C_in, H, W] by the filters U
    (`transform_filters`), plus bias: [N, C_out, H, W]. `fused` picks the C transforms (True)
    or the PyTorch ones (False); None: the C ones where they load and x is a CPU float32 tensor."""
    N, C, H, W = x.shape
    th, tw = -(-H // TILE), -(-W // TILE)
    fusable = x.device.type == "cpu" and x.dtype == torch.float32
    if fused is None:
        fused = fusable and _kernels() is not None
    elif fused and not fusable:
        raise ValueError(f"the fused Winograd transforms take float32 CPU tensors, not {x.dtype} on {x.device}")
    transforms = (_fused_input, _fused_output) if fused else (_input_ops, _output_ops)
    V = transforms[0](x.contiguous(), th, tw)  # [36, N·T, C_in]
    M = torch.bmm(V, U)  # [36, N·T, C_out]
    return transforms[1](M, bias, N, H, W, th, tw)


def _input_ops(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    N, C, H, W = x.shape
    xp = F.pad(x, (1, 1 + TILE * tw - W, 1, 1 + TILE * th - H)).contiguous()
    Hp, Wp = xp.shape[2:]
    d = xp.as_strided((6, 6, N, th, tw, C), (Wp, 1, C * Hp * Wp, TILE * Wp, TILE, Hp * Wp))
    kernel = torch.einsum("ia,jb->ijab", B_T, B_T).reshape(36, 36).to(x)
    return (kernel @ d.reshape(36, -1)).view(36, N * th * tw, C)


def _output_ops(M: torch.Tensor, bias: torch.Tensor | None, N: int, H: int, W: int, th: int, tw: int) -> torch.Tensor:
    C = M.shape[2]
    kernel = torch.einsum("pi,qj->pqij", A_T, A_T).reshape(TILE * TILE, 36).to(M)
    blocks = (kernel @ M.view(36, -1)).view(TILE, TILE, N, th, tw, C)
    y = blocks.permute(2, 5, 3, 0, 4, 1).reshape(N, C, TILE * th, TILE * tw)[:, :, :H, :W]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


@torch.compiler.disable  # read by address: kept out of graphs that could free them early
def _fused_input(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    N, C, H, W = x.shape
    V = torch.empty(36, N * th * tw, C)
    run_split(_kernels().input_transform, N * th, x.numel(), x.data_ptr(), V.data_ptr(), N, C, H, W, th, tw)
    return V


@torch.compiler.disable  # read by address: kept out of graphs that could free them early
def _fused_output(M: torch.Tensor, bias: torch.Tensor | None, N: int, H: int, W: int, th: int, tw: int) -> torch.Tensor:
    C = M.shape[2]
    y = torch.empty(N, C, H, W)
    bias = None if bias is None else bias.contiguous()  # held until the kernel has run
    bias_ptr = None if bias is None else bias.data_ptr()
    run_split(_kernels().output_transform, N * th, y.numel(), M.data_ptr(), bias_ptr, y.data_ptr(), N, C, H, W, th, tw)
    return y


@cache
def _kernels() -> ctypes.CDLL | None:
    """winograd.c compiled and loaded, or None (logged) when there is no working C compiler."""
    def declare(lib: ctypes.CDLL) -> None:
        lib.input_transform.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 8
        lib.output_transform.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 8
        for fn in (lib.input_transform, lib.output_transform):
            fn.restype = None

    return load_library(Path(__file__).with_name("winograd.c"), (["-O3", "-march=native"], ["-O3"]), declare)


class WinogradConv2d(nn.Module):
    """A 3×3, stride-1, padding-1 `nn.Conv2d` computed by `conv3x3` when no gradient is needed.

    It keeps the convolution's `weight` and `bias` (same state-dict keys, so checkpoints load
    into either) and the transformed filters U, recomputed if the weight changes. When autograd
    is recording or the input is not float32 on the CPU, it is the plain convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_eligible(conv):
            raise ValueError(f"Winograd F(4×4, 3×3) needs a 3×3, stride-1, padding-1 convolution, not {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        # the geometry of the convolution, for what reads it off a layer (a LoRA's hook: models.lora)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.weight, self.bias = conv.weight, conv.bias
        self._U: torch.Tensor | None = None
        self._version: tuple | None = None

    def filters(self) -> torch.Tensor:
        # an inference tensor (made under torch.inference_mode) keeps no version counter, so an in-place
        # change of it cannot be seen here: whoever makes one calls `refresh()`
        counter = None if self.weight.is_inference() else self.weight._version
        version = (counter, self.weight.data_ptr(), self.weight.dtype, self.weight.device)
        if self._U is None or self._version != version:
            with torch.no_grad():
                self._U = transform_filters(self.weight)
            self._version = version
        return self._U

    def refresh(self) -> None:
        """Forget the transformed filters: the weight was changed in a way its version does not show."""
        self._U = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if recording or x.device.type != "cpu" or x.dtype != torch.float32:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return conv3x3(x, self.filters(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), F(4×4, 3×3)"


def is_eligible(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def use_winograd(model: nn.Module, min_channels: int = 64) -> int:
    """Replace every eligible 3×3 convolution in `model` with at least `min_channels` input and
    output channels by a `WinogradConv2d` (few channels gain nothing: the transforms dominate).
    Returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if is_eligible(child) and min(child.in_channels, child.out_channels) >= min_channels:
                setattr(parent, name, WinogradConv2d(child))
                replaced += 1
    return replaced
