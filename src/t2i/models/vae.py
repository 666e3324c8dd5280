"""The autoencoder of latent diffusion (Rombach et al. 2022, §3.1): images to latents and back.

E(x) parameterises a diagonal Gaussian posterior q(z | x) = N(μ(x), diag σ²(x)) over a
latent z with H/f × W/f positions (f = 2^(levels-1)); D(z) maps a latent back to an image.
Trained as a VAE (Kingma & Welling 2014): a reconstruction loss plus β · KL(q(z|x) ‖ N(0, I)),
β small, so the latent space stays close to a standard Gaussian without blurring the images.

Diffusion runs on z · `scaling_factor`, the factor that gives the latents of the training
data unit variance (SD v1's is 0.18215). The layout is Stable Diffusion's `AutoencoderKL`;
`t2i.convert.vae_names` gives the names of diffusers and of SD's original files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..randomness import Generators, randn
from .config import ModelConfig, check_divisible
from .layers import Downsample, ResBlock, SelfAttentionBlock, Upsample, group_norm

NORM_EPS = 1e-6  # SD's autoencoder's GroupNorm eps


@dataclass
class VAEConfig(ModelConfig):
    """Every constructor argument of `AutoencoderKL`; saved whole as its config.

    `block_channels` gives the width of each level: with n levels the latent is 2^(n-1)
    times smaller than the image on each side. The defaults are a small f = 4 autoencoder
    for 32×32 images; `sd_v1()` is Stable Diffusion v1's (f = 8, 83.7M parameters).
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    norm_groups: int = 8
    mid_attention: bool = True
    scaling_factor: float = 1.0

    RANGES = {"in_channels": (1, 64), "out_channels": (1, 64), "latent_channels": (1, 256), "block_channels": (1, 4096),
              "num_res_blocks": (1, 64), "norm_groups": (1, 4096), "scaling_factor": (0.0, 1000.0, "above")}

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= len(self.block_channels) <= 8:
            raise UserError(f"block_channels must list 1 to 8 levels, got {len(self.block_channels)}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_channels) - 1)

    @classmethod
    def sd_v1(cls) -> "VAEConfig":
        return cls(block_channels=(128, 256, 512, 512), num_res_blocks=2, norm_groups=32, scaling_factor=0.18215)


class DiagonalGaussian:
    """q(z | x) = N(mean, diag exp(logvar)), logvar clamped to [-30, 20] as in SD."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Generators = None) -> torch.Tensor:
        """z = μ + σ ε, ε ~ N(0, I) (the reparameterisation trick); one generator per example if a list."""
        noise = randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) per example, [B]."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(dim=1)


class Level(nn.Module):
    """The residual blocks of one resolution, then a resampling (or none, at the end)."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.resample is None else self.resample(x)


def levels(widths: tuple[int, ...], blocks_per_level: int, resample, c: VAEConfig) -> nn.ModuleList:
    """One `Level` per width, resampled by `resample(width)` between levels, not after the last."""
    built = []
    for i, width in enumerate(widths):
        previous = widths[max(i - 1, 0)]
        blocks = [ResBlock(previous if j == 0 else width, width, None, groups=c.norm_groups, eps=NORM_EPS)
                  for j in range(blocks_per_level)]
        built.append(Level(blocks, resample(width) if i < len(widths) - 1 else None))
    return nn.ModuleList(built)


def middle(channels: int, c: VAEConfig) -> nn.ModuleList:
    """ResBlock, single-head self-attention over all positions, ResBlock."""
    blocks = [ResBlock(channels, channels, None, groups=c.norm_groups, eps=NORM_EPS)]
    if c.mid_attention:
        blocks.append(SelfAttentionBlock(channels, 1, channels, c.norm_groups, bias=True, eps=NORM_EPS))
    blocks.append(ResBlock(channels, channels, None, groups=c.norm_groups, eps=NORM_EPS))
    return nn.ModuleList(blocks)


class Encoder(nn.Module):
    """x [B, C, H, W] -> the moments (μ, log σ²) [B, 2L, H/f, W/f]."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = c.block_channels
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        self.down = levels(widths, c.num_res_blocks, lambda width: Downsample(width, asymmetric=True), c)
        self.mid = middle(widths[-1], c)
        self.norm_out = group_norm(widths[-1], c.norm_groups, NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, L, h, w] -> x̂ [B, C, f·h, f·w]."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = c.block_channels[::-1]
        self.conv_in = nn.Conv2d(c.latent_channels, widths[0], 3, padding=1)
        self.mid = middle(widths[0], c)
        self.up = levels(widths, c.num_res_blocks + 1, Upsample, c)
        self.norm_out = group_norm(widths[-1], c.norm_groups, NORM_EPS)
        self.conv_out = nn.Conv2d(widths[-1], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """E and D with SD's 1×1 convs on the moments (`quant_conv`) and on z (`post_quant_conv`)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) for images x in [-1, 1]."""
        check_divisible(x.shape[-1], x.shape[-2], self.config.downsample_factor, "the image", "this autoencoder needs",
                        "resize or crop it")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z): the image of an (unscaled) latent."""
        return self.decoder(self.post_quant_conv(z))

    def decode_tiled(self, z: torch.Tensor, tile: int = 64, overlap: int | None = None) -> torch.Tensor:
        """D(z) in overlapping tiles of `tile`² latents (overlap: a quarter tile unless given),
        blended by weights that ramp linearly across each overlap: the decoder's memory is then
        that of one tile, whatever the image size. Not exactly `decode`: a tile's GroupNorms
        take their statistics over the tile, its convolutions see zero padding at the cut, and
        a mid-block attention sees the tile alone, so the larger the tiles and overlaps the
        closer the image (tests/test_vae.py). A latent no larger than a tile is decoded whole."""
        overlap = tile // 4 if overlap is None else overlap
        if not 0 <= overlap < tile:
            raise UserError(f"the tile overlap must be at least 0 and less than the tile ({tile}), got {overlap}")
        height, width = z.shape[-2:]
        if height <= tile and width <= tile:
            return self.decode(z)
        factor = self.config.downsample_factor
        out = norm = None
        for y in _tile_starts(height, tile, overlap):
            for x in _tile_starts(width, tile, overlap):
                part = self.decode(z[..., y:y + tile, x:x + tile])
                weight = (_ramp(part.shape[-2], overlap * factor, y > 0, y + tile < height)[:, None]
                          * _ramp(part.shape[-1], overlap * factor, x > 0, x + tile < width)[None, :]).to(part)
                if out is None:
                    out = part.new_zeros(*part.shape[:2], height * factor, width * factor)
                    norm = part.new_zeros(height * factor, width * factor)
                rows = slice(y * factor, y * factor + part.shape[-2])
                cols = slice(x * factor, x * factor + part.shape[-1])
                out[..., rows, cols] += weight * part
                norm[rows, cols] += weight
        return out / norm

    def forward(self, x: torch.Tensor, generator: Generators = None
                ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(D(z), q(z | x)) with z drawn from the posterior."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every tile - overlap, the last moved back to end at the edge."""
    starts = list(range(0, max(size - tile, 0) + 1, tile - overlap))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """Blending weights along one tile axis: rising over the first `overlap` pixels where a tile
    comes before, falling over the last where one comes after, 1 between; never 0."""
    weight = torch.ones(length)
    ramp = (torch.arange(overlap) + 0.5) / overlap
    if rise and overlap:
        weight[:overlap] = ramp
    if fall and overlap:
        weight[-overlap:] = ramp.flip(0)
    return weight

