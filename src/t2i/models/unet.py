"""The time-conditioned U-Net ε_θ(x_t, t, c) (Ho et al. 2020, §4 and appendix B; text
conditioning by cross-attention, Rombach et al. 2022, §3.3).

Laid out as Stable Diffusion's `openaimodel.py`: a flat list of down steps whose outputs
are kept as skips, a middle step, and a flat list of up steps that each consume one skip.
Every step is a short sequence of blocks sharing the `(x, emb, context, context_mask)` call, so
cross-attention blocks slot in where self-attention blocks would be without changing
the skeleton (or, for unconditional configs, the state-dict keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .config import ModelConfig, check_divisible
from .layers import (ConvNeXtBlock, Downsample, ResBlock, SelfAttentionBlock, SpatialTransformer, Upsample,
                     group_norm, timestep_embedding, zero_init)

BLOCK_TYPES = ("resnet", "convnext")


@dataclass
class UNetConfig(ModelConfig):
    """Every constructor argument of `UNet`; saved whole as the model's config.json.

    The defaults are a 1.6M-parameter model for 32×32 images that trains on a laptop CPU.
    Its GroupNorms have 8 groups, so at least 4 channels each: with one channel per group
    (32 groups of a 32-wide level) a norm removes every channel's spatial mean, and with it
    the absolute colour of the image, from every nonlinear path of the network. A first run
    so configured drew the right shapes on backgrounds tinted by them, never pure.

    `attention_levels` lists the resolution levels (0 = full resolution, each next level
    halves H and W) that get an attention block after every residual block (and the
    middle gets one if `mid_attention`). With `context_dim` None these are self-attention
    blocks and the model is unconditional; with `context_dim` set they are
    `SpatialTransformer`s of `transformer_depth` blocks that cross-attend to a
    [B, L, context_dim] context, as in Stable Diffusion.

    Attention heads: `num_heads` fixed heads of width channels / num_heads (SD v1's
    choice: 8), or, when `num_heads` is None, heads of width `head_dim` (SD 2's: 64).
    `linear_projection`: the transformers' proj_in/proj_out are Linear layers (SD 2's), not 1×1 convs.

    `pooled_dim` set, a pooled text embedding [B, pooled_dim] (the text encoder's state at
    the end token) is projected and added to the timestep embedding, as in GLIDE and
    Imagen: a global condition that reaches every residual block at every resolution,
    where cross-attention runs only at `attention_levels`.

    `mask_context_padding` keeps cross-attention off the padding after a prompt's end
    token (the condition then carries a `context_mask`). Without it, as in Stable Diffusion,
    a short prompt's few tokens share the attention with a tail of padding states.

    `scale_shift_norm` makes the embedding (time, and pooled text) scale and shift each
    ResBlock's second GroupNorm (ADM's AdaGN) instead of being added before it.

    `coord_channels` appends two input channels holding each pixel's x and y in [-1, 1]
    (CoordConv, Liu et al. 2018): convolutions are translation-equivariant and learn
    absolute position only slowly from the zero padding at the borders, which leaves a
    prompt's "on the left" without anything to attach to.
    """

    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2,)
    mid_attention: bool = True
    block_type: str = "resnet"
    dropout: float = 0.0
    head_dim: int = 32
    norm_groups: int = 8
    convnext_mult: int = 2
    context_dim: int | None = None
    transformer_depth: int = 1
    num_heads: int | None = None
    pooled_dim: int | None = None
    coord_channels: bool = False
    mask_context_padding: bool = False
    scale_shift_norm: bool = False
    linear_projection: bool = False

    RANGES = {"in_channels": (1, 64), "out_channels": (1, 64), "model_channels": (1, 4096), "channel_mult": (1, 64),
              "num_res_blocks": (1, 64), "attention_levels": (0, 63), "dropout": (0.0, 1.0), "head_dim": (1, 4096),
              "norm_groups": (1, 4096), "convnext_mult": (1, 64), "context_dim": (1, 65536),
              "transformer_depth": (1, 64), "num_heads": (1, 1024), "pooled_dim": (1, 65536)}

    @classmethod
    def sd_v1(cls) -> UNetConfig:
        """Stable Diffusion v1's U-Net (859.5M parameters) on 4-channel latents and CLIP ViT-L/14 text."""
        return cls(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                   attention_levels=(0, 1, 2), mid_attention=True, num_heads=8, context_dim=768, transformer_depth=1,
                   norm_groups=32)

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= len(self.channel_mult) <= 8:
            raise UserError(f"channel_mult must list 1 to 8 levels, got {len(self.channel_mult)}")
        if self.block_type not in BLOCK_TYPES:
            raise UserError(f"unknown block type {self.block_type!r}; choose one of: {', '.join(BLOCK_TYPES)}")
        if self.dropout == 1:
            raise UserError("dropout must be below 1: at 1 every residual branch is dropped")
        if self.block_type == "convnext" and self.scale_shift_norm:  # it adds the embedding, it never norms by it
            raise UserError("scale_shift_norm is for ResNet blocks: a ConvNeXt block adds the embedding after its "
                            "depthwise convolution; leave out --scale-shift-norm, or use --block resnet")
        bad = [level for level in self.attention_levels if not 0 <= level < len(self.channel_mult)]
        if bad:
            raise UserError(f"attention levels {bad} do not exist: "
                            f"the U-Net has levels 0..{len(self.channel_mult) - 1}")
        if self.transformer_depth < 1:
            raise UserError(f"transformer_depth must be at least 1, not {self.transformer_depth}")
        levels = set(self.attention_levels) | ({len(self.channel_mult) - 1} if self.mid_attention else set())
        widths = sorted({self.channel_mult[level] * self.model_channels for level in levels})
        if self.num_heads and any(width % self.num_heads for width in widths):
            raise UserError(f"num_heads {self.num_heads} must divide the widths of the attention blocks, {widths}")

    def attention_heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, head width) of an attention block over `channels` channels."""
        if self.num_heads:
            return self.num_heads, channels // self.num_heads
        return max(1, channels // self.head_dim), min(self.head_dim, channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """[B, 2, H, W]: the x and y of every pixel centre of `x`, from -1 to 1 (CoordConv)."""
    h, w = x.shape[-2:]
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype)
    grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)])
    return grid.expand(x.shape[0], -1, -1, -1)


class TimestepSequential(nn.ModuleList):
    """Blocks applied in turn, each given the timestep embedding and the context."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self:
            x = block(x, emb, context, context_mask)
        return x


class UNet(nn.Module):
    """ε_θ(x_t, t, c): [B, C, H, W], integer timesteps [B] and, for a text-conditioned
    config, a context [B, L, context_dim] (and a pooled [B, pooled_dim]) -> [B, C_out, H, W].

    With `gradient_checkpointing` set (a training's choice, not the model's), a forward pass that
    records gradients keeps only each step's input and recomputes the step's feature maps in the
    backward pass (`torch.utils.checkpoint`): the same gradients for about a third more compute and
    far less memory."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.gradient_checkpointing = False
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.pooled_proj = nn.Linear(c.pooled_dim, emb_dim) if c.pooled_dim else None
        self.conv_in = nn.Conv2d(c.in_channels + 2 * c.coord_channels, c.model_channels, 3, padding=1)

        ch = c.model_channels
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                blocks = [self._block(ch, mult * c.model_channels, emb_dim)]
                ch = mult * c.model_channels
                if level in c.attention_levels:
                    blocks.append(self._attention(ch))
                self.down.append(TimestepSequential(blocks))
                skip_channels.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(TimestepSequential([Downsample(ch)]))
                skip_channels.append(ch)

        middle = [self._block(ch, ch, emb_dim)]
        if c.mid_attention:
            middle.append(self._attention(ch))
        self.middle = TimestepSequential(middle + [self._block(ch, ch, emb_dim)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                blocks = [self._block(ch + skip_channels.pop(), mult * c.model_channels, emb_dim)]
                ch = mult * c.model_channels
                if level in c.attention_levels:
                    blocks.append(self._attention(ch))
                if level > 0 and i == c.num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(TimestepSequential(blocks))

        self.norm_out = group_norm(ch, c.norm_groups)
        self.conv_out = zero_init(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def _block(self, channels: int, out_channels: int, emb_dim: int) -> nn.Module:
        c = self.config
        if c.block_type == "convnext":
            return ConvNeXtBlock(channels, out_channels, emb_dim, c.dropout, c.convnext_mult)
        return ResBlock(channels, out_channels, emb_dim, c.dropout, c.norm_groups, scale_shift=c.scale_shift_norm)

    def _attention(self, channels: int) -> nn.Module:
        c = self.config
        heads, head_dim = c.attention_heads(channels)
        if c.context_dim is None:
            return SelfAttentionBlock(channels, heads, head_dim, c.norm_groups)
        return SpatialTransformer(channels, heads, head_dim, c.context_dim, c.transformer_depth, c.norm_groups,
                                  c.dropout, c.linear_projection)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`context_mask` [B, L] marks the context tokens cross-attention may read (None: all)."""
        check_divisible(x.shape[-1], x.shape[-2], self.config.downsample_factor, "the input", "this U-Net needs",
                        "resize or crop it")
        if (context is None) != (self.config.context_dim is None):
            raise UserError("this U-Net is text-conditioned and needs a context" if context is None
                            else "this U-Net is unconditional and takes no context")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if (pooled is None) != (self.pooled_proj is None):
            raise UserError("this U-Net adds a pooled text embedding and needs one" if pooled is None
                            else "this U-Net takes no pooled text embedding")
        if pooled is not None:
            emb = emb + self.pooled_proj(pooled)
        h = self.conv_in(torch.cat([x, coordinates(x)], dim=1) if self.config.coord_channels else x)
        skips = [h]
        for step in self.down:
            h = self._run(step, h, emb, context, context_mask)
            skips.append(h)
        h = self._run(self.middle, h, emb, context, context_mask)
        for step in self.up:
            h = self._run(step, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _run(self, step: TimestepSequential, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None,
             context_mask: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            # non-reentrant: parameters the step reads without being given them (LoRA hooks') get gradients too
            return checkpoint(step, h, emb, context, context_mask, use_reentrant=False)
        return step(h, emb, context, context_mask)

