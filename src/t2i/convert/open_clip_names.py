"""OpenCLIP's text transformer, Stable Diffusion 2.x's text encoder, under the names of SD 2's
original files (`cond_stage_model.model.*`), seen as transformers' `CLIPTextModel`.

OpenCLIP keeps Q, K and V in one fused `in_proj_weight` [3D, D] (PyTorch's MultiheadAttention)
and names the blocks `transformer.resblocks.i`; transformers has three projections and
`text_model.encoder.layers.i`. Reading splits the fused weight (a `Chunk` view, no copy of the
file); writing concatenates it again. `text_projection` and `logit_scale` serve CLIP's contrastive
loss, not SD: they are skipped on reading, and not written.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .tensors import Chunk, Renamed, Weights

UNUSED = ("text_projection", "logit_scale")  # CLIP's contrastive head, not read by SD
_BLOCK = (("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
          ("attn.out_proj.", "self_attn.out_proj."))
_FUSED = ("q_proj", "k_proj", "v_proj")


def _names(layers: int) -> dict[str, str | Chunk]:
    """{transformers key: OpenCLIP key, or a Chunk of its fused in-projection} of a `layers`-block encoder."""
    names: dict[str, str | Chunk] = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    for i in range(layers):
        theirs, ours = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for open_clip, transformers in _BLOCK:
                names[ours + transformers + kind] = theirs + open_clip + kind
            for index, projection in enumerate(_FUSED):
                names[f"{ours}self_attn.{projection}.{kind}"] = Chunk(f"{theirs}attn.in_proj_{kind}", index, 3)
    return names


def count_layers(keys) -> int:
    return len({key.split(".")[2] for key in keys if key.startswith("transformer.resblocks.")})


def transformers_view(weights: Weights | Renamed) -> Renamed:
    """OpenCLIP text weights (without the `cond_stage_model.model.` prefix) under transformers' names;
    what they do not map (`UNUSED`, and anything unknown) stays visible under its own name, so
    that a file with more in it fails the name check rather than losing weights unseen."""
    names = _names(count_layers(weights))
    used = {source.key if isinstance(source, Chunk) else source for source in names.values()}
    names.update({key: key for key in weights if key not in used and key not in UNUSED})
    return Renamed(weights, names)


def open_clip_state_dict(state_dict: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A transformers-named state dict of a `layers`-block encoder in OpenCLIP's names, Q, K and V fused."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for transformers, source in _names(layers).items():
        if isinstance(source, Chunk):
            fused.setdefault(source.key, [None] * source.count)[source.index] = state_dict[transformers]
        else:
            out[source] = state_dict[transformers]
    out.update({key: torch.cat(parts) for key, parts in fused.items()})
    return out
