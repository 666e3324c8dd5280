"""Building blocks shared by the networks: timestep embedding, attention, residual blocks.

Every U-Net block takes `(x, emb, context, context_mask)`: `emb` is the [B, E] timestep
embedding, `context` the [B, L, C] text tokens (None for an unconditional model) and
`context_mask` [B, L] which of them are real (None: all). Each block uses what it needs,
so the U-Net calls them all alike.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import amx
from ..kernels import attention as kernel_attention


def parameter_count(module: nn.Module) -> int:
    """How many values a network's parameters hold."""
    return sum(p.numel() for p in module.parameters())


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim].

    Transformer positions (Vaswani et al. 2017) as DDPM uses them: frequencies
    max_period^(-i/half), cosines first, as in Stable Diffusion's U-Net.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def group_norm(channels: int, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide `channels`, at most `groups`."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


# Output pixels (batch × height × width) up to which a bfloat16 convolution on a CPU without AMX runs as one matrix
# product (`conv_as_matmul`): oneDNN's direct kernel falls to 0.3–0.8x of its speed on maps this small, the
# matrix product does not (docs/benchmarks.md). Below MATMUL_CONV_CHANNELS input channels the gathering's
# Python costs more than it saves (the emoji U-Net's 64–128).
MATMUL_CONV_ROWS = 512
MATMUL_CONV_CHANNELS = 256


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and state-dict keys) that takes `conv_as_matmul` where `conv_path` says."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if conv_path(self, x) == "matmul":
            return conv_as_matmul(x, weight, bias, self.stride, self.padding)
        return super()._conv_forward(x, weight, bias)


def conv_path(conv: nn.Conv2d, x: torch.Tensor) -> str:
    """How `Conv2d` computes: as one "matmul" for inference in bfloat16 on a CPU without AMX, at MATMUL_CONV_ROWS
    output pixels or fewer and MATMUL_CONV_CHANNELS input channels or more, with zero padding and no groups or
    dilation; else "direct" (oneDNN's or cuDNN's)."""
    if (x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.dim() != 4 or amx(x.device)
            or conv.in_channels < MATMUL_CONV_CHANNELS
            or torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
            or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str)):
        return "direct"
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    rows = x.shape[0] * ((x.shape[2] + 2 * ph - kh) // sh + 1) * ((x.shape[3] + 2 * pw - kw) // sw + 1)
    return "matmul" if rows <= MATMUL_CONV_ROWS else "direct"


def conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor:
    """A zero-padded convolution as one matrix product: each output pixel's kh·kw·C inputs gathered into a row
    (im2col), times the filters [O, kh·kw·C]. The rows are copies, kh·kw times the input: cheap where maps are
    small. Returns NHWC memory (channels_last) whatever x's."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N, H', W', C: a view for channels_last maps
    taps = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    # the rows' order follows the filters' memory, so that flattening them is a view, not a copy per call
    if weight.is_contiguous(memory_format=torch.channels_last):
        rows, filters = torch.stack(taps, dim=3), weight.permute(0, 2, 3, 1)  # (kh, kw, C)
    else:
        rows, filters = torch.stack(taps, dim=4), weight  # (C, kh, kw)
    rows, filters = rows.reshape(n * oh * ow, -1), filters.reshape(o, -1)
    out = rows @ filters.t() if bias is None else torch.addmm(bias, rows, filters.t())
    return out.view(n, oh, ow, o).permute(0, 3, 1, 2)


def uninitialised_embedding(num_embeddings: int, dim: int) -> nn.Embedding:
    """An embedding table whose values are left to its owner (loaded weights, or its own init).
    nn.Embedding's default N(0, 1) init would be wasted, and on the meta device, where models are
    built to be loaded, the first `normal_` costs ~1.5–2.5 s of lazy imports."""
    return nn.Embedding(num_embeddings, dim, _weight=torch.empty(num_embeddings, dim))


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# Scores (queries × keys) from which CPU bfloat16 attention without AMX runs in our kernel (`kernels.attention`),
# and, where it is not built, as row chunks (`attend_in_chunks`): below, their set-up costs more than they save
# (docs/benchmarks.md). And the bytes of one chunk's scores.
KERNEL_SCORES = 128 * 128
CHUNKED_SCORES = 1024 * 1024
CHUNK_SCORE_BYTES = 4 << 20


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
           causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention`, computed where it runs fastest for bfloat16 on the CPU
    (`attention_path`, docs/benchmarks.md)."""
    path = attention_path(q, k, v, attn_mask, causal)
    if path == "fused":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    with torch.autocast("cpu", enabled=False):
        if path == "kernel":
            return kernel_attention.attention(q, k, v)
        if path == "chunks":
            return attend_in_chunks(q, k, v)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=causal)
    return out.to(torch.bfloat16)


def attention_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                   causal: bool = False) -> str:
    """How `attend` computes: "fused" (torch's kernel in the tensors' dtype) but for bfloat16 on the CPU, where
    the backward pass runs in "fused fp32" (also under autocast), and so does inference without AMX (whose absence
    leaves the fused bfloat16 kernel no faster than float32's), except unmasked attention from KERNEL_SCORES scores
    in our AVX512-BF16 "kernel" (`kernels.attention`: bfloat16 products, float32 scores) or, where that is not
    built, from CHUNKED_SCORES in "chunks" of bfloat16 matrix products (`attend_in_chunks`)."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return "fused"
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not backward and amx(q.device):
        return "fused"
    if not backward and attn_mask is None and not causal:
        if q.shape[-2] * k.shape[-2] >= KERNEL_SCORES and kernel_attention.takes(q, k, v):
            return "kernel"
        if chunks_take(q, k, v):
            return "chunks"
    return "fused fp32"


def chunks_take(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attend_in_chunks` takes these: CHUNKED_SCORES scores or more, one dtype, the same batch and heads
    (no broadcasting), and V's head size Q's."""
    return (q.shape[-2] * k.shape[-2] >= CHUNKED_SCORES and q.dtype == k.dtype == v.dtype
            and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and q.shape[-1] == k.shape[-1] == v.shape[-1])


def attend_in_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d) V for [..., L, d] queries, one head's block of rows at a time: two matrix products in
    q's precision with float32 accumulation and a softmax over scores [rows, S] small enough
    (`CHUNK_SCORE_BYTES`) to stay in cache. On a CPU with AVX512-BF16 but no AMX, where torch's fused kernel
    runs its products at float32's speed, this takes 0.57–0.84x float32's time at SD's sizes. The scores are
    rounded to q's precision before the softmax, as fp16 pipelines round them, less their row's offset, so
    that in bfloat16 even peaked attention stays near the fused kernel's error (docs/benchmarks.md)."""
    *batch, length, d = q.shape
    q, k, v = (a.reshape(-1, a.shape[-2], d) for a in (q, k, v))
    keys_t = (k * d ** -0.5).transpose(1, 2).contiguous()  # the 1/√d folded into Kᵀ once
    # every 8th key's score gives a row an offset near its largest, subtracted inside the product (softmax does
    # not change): the scores that carry the weight are then rounded near 0, finely (docs/benchmarks.md)
    sampled_keys_t = keys_t[:, :, ::8].contiguous()
    # V's columns padded to a multiple of 16: P·V with SD v1's 40 ran at half the speed of 48 (docs/benchmarks.md)
    v = F.pad(v, (0, -d % 16))
    rows = min(length, max(64, CHUNK_SCORE_BYTES // (k.shape[1] * k.element_size())))
    out = q.new_empty(q.shape[0], length, v.shape[-1])
    scores = q.new_empty(1, rows, k.shape[1])
    for h in range(q.shape[0]):
        for i in range(0, length, rows):
            s, queries = scores[:, : min(rows, length - i)], q[h:h + 1, i:i + rows]
            offset = torch.bmm(queries, sampled_keys_t[h:h + 1]).amax(-1, keepdim=True)
            torch.baddbmm(offset.neg_(), queries, keys_t[h:h + 1], out=s)
            torch.bmm(torch.softmax(s, dim=-1), v[h:h + 1], out=out[h:h + 1, i:i + rows])
    return out.view(*batch, length, -1)[..., :d]


def epilogues_fuse(x: torch.Tensor, *layers: nn.Module) -> bool:
    """Whether `x`'s pass through `layers` may take oneDNN's matrix products with the element-wise work after them
    fused in (`linear_pointwise`: applied to the float32 sums, in the same pass over the output): bfloat16
    inference on the CPU, through layers in eval mode without hooks (an on-the-fly LoRA's adds to their output).
    SD v1's U-Net step took 0.95x the time of the unfused (docs/benchmarks.md)."""
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and not torch.is_grad_enabled()
            and linear_pointwise() is not None
            and not any(layer.training or layer._forward_hooks or layer._forward_pre_hooks for layer in layers))


@functools.cache
def linear_pointwise():
    """torch's oneDNN linear layer with a fused element-wise epilogue (what its compiler emits on the CPU): `(x, W,
    b, "gelu", [], "none")` gives GELU(xWᵀ + b), `.binary(x, other, W, b, "add" | "mul")` (xWᵀ + b) + or × other.
    None where torch is built without oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


def linear_add(layer: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + layer(x), the sum fused into the product where `epilogues_fuse`."""
    if (epilogues_fuse(x, layer) and residual.dtype == x.dtype
            and residual.shape == x.shape[:-1] + (layer.out_features,)):
        return linear_pointwise().binary(x, residual, layer.weight, layer.bias, "add")
    return residual + layer(x)


class Attention(nn.Module):
    """Multi-head attention softmax(QKᵀ/sqrt(d)) V with Q = W_Q x, K = W_K c, V = W_V c.

    Self-attention when no context is given; cross-attention on `context` [B, L, C]
    otherwise (Rombach et al. 2022, §3.3). Runs on `F.scaled_dot_product_attention`.
    `bias` gives Q, K, V biases, as CLIP's text transformer has; `causal=True` lets
    position i attend only to j ≤ i (a decoder's mask, Vaswani et al. 2017 §3.2.3).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, bias: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False,
                mask: torch.Tensor | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` [B, L] (True = attend) keeps queries off some keys, e.g. the padding of a prompt. With `residual`,
        returns residual + the attention."""
        context = x if context is None else context
        q, k, v = (self._split(f(a)) for f, a in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        heads = attend(q, k, v, attn_mask, causal).transpose(1, 2).flatten(2)
        return self.to_out(heads) if residual is None else linear_add(self.to_out, heads, residual)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, N, H*D] -> [B, H, N, D]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C]: a feature map as a sequence of positions."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, HW, C] -> [B, C, H, W], the inverse of `to_tokens` for a map shaped like `like`."""
    return tokens.transpose(1, 2).reshape(like.shape[0], -1, *like.shape[2:])


class SelfAttentionBlock(nn.Module):
    """x + Attention(GroupNorm(x)) over the H×W positions of a feature map."""

    def __init__(self, channels: int, heads: int, head_dim: int, groups: int = 32, bias: bool = False,
                 eps: float = 1e-5):
        super().__init__()
        self.norm = group_norm(channels, groups, eps)
        self.attention = Attention(channels, heads, head_dim, bias=bias)
        zero_init(self.attention.to_out)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None):
        return x + from_tokens(self.attention(to_tokens(self.norm(x))), x)


class FeedForward(nn.Module):
    """The GEGLU feed-forward (Shazeer 2020): W_out (a ⊙ GELU(g)) with [a, g] = W_in x split in two."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """With `residual`, returns residual + the feed-forward."""
        if epilogues_fuse(x, self.proj, self.dropout):  # GELU and the product on the sums, in the products' pass
            inner = self.out.in_features
            (w_value, w_gate), (b_value, b_gate) = self.proj.weight.split(inner), self.proj.bias.split(inner)
            gate = linear_pointwise()(x, w_gate, b_gate, "gelu", [], "none")
            h = linear_pointwise().binary(x, gate, w_value, b_value, "mul")
        else:
            value, gate = self.proj(x).chunk(2, dim=-1)
            h = self.dropout(value * F.gelu(gate))
        return self.out(h) if residual is None else linear_add(self.out, h, residual)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the context, then a GEGLU feed-forward,
    each added back to its input (Stable Diffusion's `BasicTransformerBlock`)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x), residual=x)
        # Rombach et al. 2022, §3.3: Q from x, K and V from the text
        x = self.attn2(self.norm2(x), context, mask=context_mask, residual=x)
        return self.ff(self.norm3(x), residual=x)


class SpatialTransformer(nn.Module):
    """x + proj_out(TransformerBlocks(proj_in(GroupNorm(x)))) over the H×W positions of a
    feature map, cross-attending to `context` (Rombach et al. 2022, Stable Diffusion v1).

    proj_in/proj_out are 1×1 convs as in SD v1, or with `linear` the Linear layers of SD 2
    applied to the tokens: the same map, stored as SD 2's files store it. proj_out starts
    at zero so the block starts as the identity. The GroupNorm's eps is 1e-6, SD's (its
    ResBlocks keep 1e-5).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, depth: int = 1,
                 groups: int = 32, dropout: float = 0.0, linear: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.norm = group_norm(channels, groups, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = zero_init(nn.Linear(inner, channels) if linear else Conv2d(inner, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.linear:
            tokens = self.proj_in(to_tokens(self.norm(x)))
        else:
            tokens = to_tokens(self.proj_in(self.norm(x)))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, context_mask)
        if self.linear:
            return x + from_tokens(self.proj_out(tokens), x)
        return x + self.proj_out(from_tokens(tokens, x))


class ResBlock(nn.Module):
    """The DDPM residual block (Ho et al. 2020, appendix B; as in Stable Diffusion):

    GroupNorm → SiLU → conv3×3 → + W·SiLU(emb) → GroupNorm → SiLU → dropout → conv3×3,
    added to x (through a 1×1 conv when the width changes). With `emb_dim` None there is
    no embedding to add: the block of an autoencoder.

    `scale_shift` conditions the second norm instead (AdaGN, Dhariwal & Nichol 2021, §3):
    GroupNorm(h)·(1 + s) + b with [s, b] = W·SiLU(emb). The product lets the embedding
    reweight features that vary over the image, which an added bias cannot.
    """

    def __init__(self, channels: int, out_channels: int, emb_dim: int | None, dropout: float = 0.0,
                 groups: int = 32, eps: float = 1e-5, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(channels, groups, eps)
        self.conv1 = Conv2d(channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, out_channels * (1 + scale_shift)) if emb_dim is not None else None
        self.norm2 = group_norm(out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is None:
            h = self.norm2(h)
        elif self.scale_shift:
            scale, shift = self.time_emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + self.time_emb_proj(F.silu(emb))[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class ConvNeXtBlock(nn.Module):
    """The ConvNeXt block (Liu et al. 2022, as The Annotated Diffusion Model adapts it):

    depthwise conv7×7 → + W·GELU(emb) → GroupNorm(1) → conv3×3 (×mult) → GELU → dropout →
    GroupNorm(1) → conv3×3, added to x (through a 1×1 conv when the width changes).
    """

    def __init__(self, channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0, mult: int = 2):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.time_emb_proj = nn.Linear(emb_dim, channels)
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv1 = Conv2d(channels, out_channels * mult, 3, padding=1)
        self.norm2 = nn.GroupNorm(1, out_channels * mult)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(Conv2d(out_channels * mult, out_channels, 3, padding=1))
        self.skip = Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.depthwise(x) + self.time_emb_proj(F.gelu(emb))[:, :, None, None]
        h = F.gelu(self.conv1(self.norm1(h)))
        h = self.conv2(self.norm2(self.dropout(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a stride-2 conv3×3, padded by one on every side, or (`asymmetric`,
    as Stable Diffusion's autoencoder) by one on the right and bottom only."""

    def __init__(self, channels: int, asymmetric: bool = False):
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None):
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then conv3×3."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
