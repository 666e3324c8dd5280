"""The U-Net's text condition: what a text encoder's states become as keyword arguments."""

from __future__ import annotations

from typing import Callable

import torch

from ..models.unet import UNetConfig


def text_condition(text_encoder: torch.nn.Module, ids: torch.Tensor, unet: UNetConfig,
                   encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The U-Net's keyword arguments for token ids [B, L]: the context τ_θ(y) [B, L, D], and
    the pooled embedding [B, D] and the padding mask [B, L] if the U-Net takes them. `encode`
    computes the context in the encoder's place (its replica when several processes train it)."""
    cond = {"context": (encode or text_encoder)(ids)}
    if unet.pooled_dim is not None:
        cond["pooled"] = text_encoder.pool(cond["context"], ids)
    if unet.mask_context_padding:
        cond["context_mask"] = text_encoder.padding_mask(ids)
    return cond
