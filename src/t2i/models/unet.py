"""The time-conditioned U-Net ε_θ(x_t, t) (DDPM §3.3, seed 000 and 003).

Laid out as Stable Diffusion's `openaimodel.py`: a flat list of down steps whose outputs
are kept as skips, a middle step, and a flat list of up steps that each consume one skip.
Every step is a short sequence of blocks sharing the `(x, emb)` call, so a later
config can add cross-attention blocks without changing the skeleton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .config import ModelConfig
from .layers import (ConvNeXtBlock, Downsample, ResBlock, SelfAttentionBlock, Upsample, group_norm,
                     timestep_embedding, zero_init)

BLOCK_TYPES = ("resnet", "convnext")


@dataclass
class UNetConfig(ModelConfig):
    """Every constructor argument of `UNet`; saved whole as the model's config.json.

    The defaults are a 1.6M-parameter model for 32×32 images that trains on a laptop CPU.

    `attention_levels` lists the resolution levels (0 = full resolution, each next level
    halves H and W) that get a self-attention block after every residual block.
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
    norm_groups: int = 32
    convnext_mult: int = 2

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        if self.block_type not in BLOCK_TYPES:
            raise UserError(f"unknown block type {self.block_type!r}; choose one of: {', '.join(BLOCK_TYPES)}")
        bad = [level for level in self.attention_levels if not 0 <= level < len(self.channel_mult)]
        if bad:
            raise UserError(f"attention levels {bad} do not exist: the U-Net has levels 0..{len(self.channel_mult) - 1}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class TimestepSequential(nn.ModuleList):
    """Blocks applied in turn, each given the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """ε_θ(x_t, t): [B, C, H, W] and integer timesteps [B] -> [B, C_out, H, W]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)

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
        return ResBlock(channels, out_channels, emb_dim, c.dropout, c.norm_groups)

    def _attention(self, channels: int) -> nn.Module:
        return SelfAttentionBlock(channels, self.config.head_dim, self.config.norm_groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        factor = self.config.downsample_factor
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise UserError(f"image size {tuple(x.shape[-2:])} must be divisible by {factor} for this U-Net")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for step in self.down:
            h = step(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for step in self.up:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
