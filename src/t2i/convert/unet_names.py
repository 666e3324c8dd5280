"""The U-Net's weights under diffusers' and the original Stable Diffusion files' names.

`foreign_names(config, fmt)` is {our key: their key} for every weight of `UNet(config)`,
walking the levels as `UNet` builds them; `build` reads with it, `to_foreign_state_dict` writes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models.layers import Downsample, ResBlock, SpatialTransformer
from ..models.unet import UNet, UNetConfig
from .naming import module_names, replace_all, to_theirs

FOREIGN_FORMATS = ("diffusers", "original")  # diffusers' UNet2DConditionModel; CompVis' openaimodel.py (SD's own files)
# Inside a block, the names that differ from ours: both wrap to_out and the feed-forward in
# Sequentials; the original code numbers a ResBlock's layers and calls a Downsample's conv `op`.
_TRANSFORMER_NAMES = ((".to_out.", ".to_out.0."), (".ff.proj.", ".ff.net.0.proj."), (".ff.out.", ".ff.net.2."))
_RESBLOCK_NAMES = {
    "diffusers": ((".skip.", ".conv_shortcut."),),
    "original": ((".norm1.", ".in_layers.0."), (".conv1.", ".in_layers.2."), (".time_emb_proj.", ".emb_layers.1."),
                 (".norm2.", ".out_layers.0."), (".conv2.", ".out_layers.3."), (".skip.", ".skip_connection.")),
}


def _diffusers_prefixes(c: UNetConfig) -> dict[str, str]:
    """Our block prefixes -> diffusers' `UNet2DConditionModel` ones, walking the levels as `UNet` does."""
    levels = len(c.channel_mult)
    names = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out",
             "middle.0": "mid_block.resnets.0", f"middle.{1 + c.mid_attention}": "mid_block.resnets.1"}
    if c.mid_attention:
        names["middle.1"] = "mid_block.attentions.0"
    step = 0
    for level in range(levels):
        for j in range(c.num_res_blocks):
            names[f"down.{step}.0"] = f"down_blocks.{level}.resnets.{j}"
            if level in c.attention_levels:
                names[f"down.{step}.1"] = f"down_blocks.{level}.attentions.{j}"
            step += 1
        if level < levels - 1:
            names[f"down.{step}.0"] = f"down_blocks.{level}.downsamplers.0"
            step += 1
    step = 0
    for i, level in enumerate(reversed(range(levels))):
        attention = level in c.attention_levels
        for j in range(c.num_res_blocks + 1):
            names[f"up.{step}.0"] = f"up_blocks.{i}.resnets.{j}"
            if attention:
                names[f"up.{step}.1"] = f"up_blocks.{i}.attentions.{j}"
            step += 1
        if level > 0:
            names[f"up.{step - 1}.{1 + attention}"] = f"up_blocks.{i}.upsamplers.0"
    return names


def _original_prefixes(model: UNet) -> dict[str, str]:
    """Our block prefixes -> the original ones: our down, middle and up steps are its
    input_blocks (after conv_in, its input_blocks.0), middle_block and output_blocks."""
    names = {"time_embed.0": "time_embed.0", "time_embed.2": "time_embed.2", "conv_in": "input_blocks.0.0",
             "norm_out": "out.0", "conv_out": "out.2"}
    for ours, theirs, offset in (("down", "input_blocks", 1), ("up", "output_blocks", 0)):
        for i, step in enumerate(getattr(model, ours)):
            names.update({f"{ours}.{i}.{j}": f"{theirs}.{i + offset}.{j}" for j in range(len(step))})
    names.update({f"middle.{j}": f"middle_block.{j}" for j in range(len(model.middle))})
    return names


def foreign_names(config: UNetConfig, fmt: str) -> dict[str, str]:
    """{our key: the key in `fmt`} for every weight of `UNet(config)` (the keys of the
    original files lack their `model.diffusion_model.` prefix)."""
    c = config
    if c.block_type != "resnet" or c.pooled_dim or c.coord_channels or c.scale_shift_norm or c.mask_context_padding:
        raise UserError("only a U-Net of Stable Diffusion's layout has diffusers or original names: ResBlocks, "
                        "no pooled text embedding, coordinate channels, scale-shift norm or padding mask")

    def inner(block: nn.Module | None, rest: str) -> str:
        if isinstance(block, ResBlock):
            return replace_all(rest, _RESBLOCK_NAMES[fmt])
        if isinstance(block, SpatialTransformer):
            return replace_all(rest, _TRANSFORMER_NAMES)
        if isinstance(block, Downsample) and fmt == "original":
            return rest.replace(".conv.", ".op.")
        return rest

    with torch.device("meta"):
        model = UNet(config)
    prefixes = _diffusers_prefixes(config) if fmt == "diffusers" else _original_prefixes(model)
    return module_names(model, prefixes, inner)


def to_foreign_state_dict(state_dict: dict[str, torch.Tensor], config: UNetConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict in `fmt`'s names: what `build` with `foreign_names` reads back."""
    return to_theirs(state_dict, foreign_names(config, fmt))
