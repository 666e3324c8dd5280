"""The U-Net's text condition: what a text encoder's states become as keyword arguments."""

from __future__ import annotations

import torch

from ..models.unet import UNetConfig


def text_condition(text_encoder: torch.nn.Module, ids: torch.Tensor, unet: UNetConfig) -> dict[str, torch.Tensor]:
    """The U-Net's keyword arguments for token ids [B, L]: the context τ_θ(y) [B, L, D], and
    the pooled embedding [B, D] and the padding mask [B, L] if the U-Net takes them."""
    cond = {"context": text_encoder(ids)}
    if unet.pooled_dim is not None:
        cond["pooled"] = text_encoder.pool(cond["context"], ids)
    if unet.mask_context_padding:
        cond["context_mask"] = text_encoder.padding_mask(ids)
    return cond
