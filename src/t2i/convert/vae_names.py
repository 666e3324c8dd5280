"""The autoencoder's weights under diffusers' and the original Stable Diffusion files' names.

`foreign_names(config, fmt)` is {our key: their key} for every weight of `AutoencoderKL(config)`;
`build` reads with it, `to_foreign_state_dict` writes.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..models.layers import ResBlock, SelfAttentionBlock
from ..models.vae import AutoencoderKL, VAEConfig
from .naming import module_names, replace_all, to_theirs

FOREIGN_FORMATS = ("diffusers", "original")  # diffusers' AutoencoderKL; CompVis' (SD's own files)
# Inside a block, the names that differ from ours.
_INNER_NAMES = {
    "diffusers": {ResBlock: ((".skip.", ".conv_shortcut."),),
                  SelfAttentionBlock: ((".norm.", ".group_norm."), (".attention.to_out.", ".to_out.0."),
                                       (".attention.to_", ".to_"))},
    "original": {ResBlock: ((".skip.", ".nin_shortcut."),),
                 SelfAttentionBlock: ((".attention.to_out.", ".proj_out."), (".attention.to_", "."))},
}
_ORIGINAL_CONV_ATTENTION = re.compile(r".*\.mid\.attn_1\.(q|k|v|proj_out)\.weight")  # 1×1 convs there


def _prefixes(model: AutoencoderKL, fmt: str) -> dict[str, str]:
    """Our block prefixes -> `fmt`'s. The original decoder numbers its levels from the
    highest resolution, the reverse of the order they run in (ours and diffusers')."""
    diffusers = fmt == "diffusers"
    names = {name: name for name in ("quant_conv", "post_quant_conv")}
    for side, steps in (("encoder", model.encoder.down), ("decoder", model.decoder.up)):
        kind = "down" if side == "encoder" else "up"
        names.update({f"{side}.conv_in": f"{side}.conv_in", f"{side}.conv_out": f"{side}.conv_out",
                      f"{side}.norm_out": f"{side}.conv_norm_out" if diffusers else f"{side}.norm_out"})
        for i, level in enumerate(steps):
            number = i if diffusers or side == "encoder" else len(steps) - 1 - i
            theirs = f"{side}.{kind}_blocks.{number}" if diffusers else f"{side}.{kind}.{number}"
            for j in range(len(level.blocks)):
                names[f"{side}.{kind}.{i}.blocks.{j}"] = f"{theirs}.{'resnets' if diffusers else 'block'}.{j}"
            if level.resample is not None:
                names[f"{side}.{kind}.{i}.resample"] = f"{theirs}.{kind}{'samplers.0' if diffusers else 'sample'}"
        mid = getattr(model, side).mid
        last = len(mid) - 1
        for j, block in enumerate(mid):
            if isinstance(block, SelfAttentionBlock):
                names[f"{side}.mid.{j}"] = f"{side}.mid_block.attentions.0" if diffusers else f"{side}.mid.attn_1"
            else:
                names[f"{side}.mid.{j}"] = (f"{side}.mid_block.resnets.{int(j == last)}" if diffusers
                                            else f"{side}.mid.block_{1 + (j == last)}")
    return names


def foreign_names(config: VAEConfig, fmt: str) -> dict[str, str]:
    """{our key: the key in `fmt`} for every weight of `AutoencoderKL(config)` (the keys of
    the original files lack their `first_stage_model.` prefix)."""
    inner_names = _INNER_NAMES[fmt]

    def inner(block: nn.Module | None, rest: str) -> str:
        return replace_all(rest, inner_names.get(type(block), ()))

    with torch.device("meta"):
        model = AutoencoderKL(config)
    return module_names(model, _prefixes(model, fmt), inner)


def to_foreign_state_dict(state_dict: dict[str, torch.Tensor], config: VAEConfig, fmt: str) -> dict[str, torch.Tensor]:
    """Our autoencoder's state dict in `fmt`'s names and shapes: what `build` with `foreign_names` reads back."""
    return to_theirs(state_dict, foreign_names(config, fmt),
                     as_conv=lambda key: fmt == "original" and bool(_ORIGINAL_CONV_ATTENTION.fullmatch(key)))
