"""CLIP's text transformer under transformers' `CLIPTextModel` names, which diffusers folders
and the original Stable Diffusion files use too."""

from __future__ import annotations


from ..text.clip import CLIPTextTransformer, TextEncoderConfig, TransformerBlock
from .naming import block_table_names
from .tensors import Renamed, Weights

# Inside a block, transformers' names where they differ from ours.
_TRANSFORMERS_BLOCK_NAMES = ((".attention.to_out.", ".self_attn.out_proj."), (".attention.to_q.", ".self_attn.q_proj."),
                             (".attention.to_k.", ".self_attn.k_proj."), (".attention.to_v.", ".self_attn.v_proj."),
                             (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".fc1.", ".mlp.fc1."),
                             (".fc2.", ".mlp.fc2."))


def transformers_names(config: TextEncoderConfig) -> dict[str, str]:
    """{our key: transformers' `CLIPTextModel` key} for every weight of `CLIPTextTransformer(config)`."""
    prefixes = {"token_embedding": "text_model.embeddings.token_embedding",
                "position_embedding": "text_model.embeddings.position_embedding.weight",
                "final_norm": "text_model.final_layer_norm",
                **{f"blocks.{i}": f"text_model.encoder.layers.{i}" for i in range(config.layers)}}
    return block_table_names(CLIPTextTransformer, config, prefixes, TransformerBlock, _TRANSFORMERS_BLOCK_NAMES)


def transformers_view(weights: Weights | Renamed) -> Renamed:
    """A CLIP text transformer's weights under transformers' `text_model.` names, whether
    or not the file has that prefix (old SD files and transformers 5 have not), without
    the `position_ids` buffer some carry."""
    return Renamed(weights, {key if key.startswith("text_model.") else f"text_model.{key}": key
                             for key in weights if not key.endswith("position_ids")})
