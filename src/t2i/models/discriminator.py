"""A patch discriminator (Isola et al. 2017, pix2pix §3.2.2), the adversarial part of the
autoencoder loss of latent diffusion (Esser et al. 2021, §3.1; Rombach et al. 2022, §3.1).

Strided 4×4 convolutions end in one logit per patch, so the discriminator judges local
texture and sharpness, not global layout, which the reconstruction loss already fixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import group_norm


@dataclass
class DiscriminatorConfig(ModelConfig):
    in_channels: int = 3
    channels: int = 32
    layers: int = 2  # stride-2 convolutions; each patch logit sees a 4·2^layers - 2 pixel window
    norm_groups: int = 8

    RANGES = {"in_channels": (1, 64), "channels": (1, 4096), "layers": (1, 8), "norm_groups": (1, 4096)}


class PatchDiscriminator(nn.Module):
    """Images [B, C, H, W] -> patch logits [B, 1, H/2^layers - 1, W/2^layers - 1]."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = c = config
        blocks: list[nn.Module] = [nn.Conv2d(c.in_channels, c.channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = c.channels
        for _ in range(c.layers - 1):
            blocks += [nn.Conv2d(width, 2 * width, 4, 2, 1), group_norm(2 * width, c.norm_groups), nn.LeakyReLU(0.2)]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(x̂))] (Lim & Ye 2017), halved as in taming-transformers."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(x̂)]: the decoder's adversarial loss."""
    return -fake_logits.mean()
