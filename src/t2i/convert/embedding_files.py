"""Textual-inversion embeddings (Gal et al. 2022) as AUTOMATIC1111 and diffusers save them.

- AUTOMATIC1111's `.pt`: a pickled dict whose `string_to_param` is {"*": vectors [n, width]}
  (with `name`, `step`, the checkpoint it was trained on); its `.safetensors`: {"emb_params":
  [n, width]}. The word in prompts is the file's name without its extension, as in its web UI.
- diffusers' `learned_embeds.safetensors` / `.bin`: {word: [width] or [n, width]}.

Pickles are read with `weights_only=True` (`tensors.load_pickle`): tensors, dicts, strings and
numbers are built, anything else is refused before it runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from .tensors import PICKLES, SAFETENSORS, load_pickle, open_weights


def embedding_content(path: Path):
    """What the file holds: a dict of tensors (and other values), or a tensor."""
    if path.suffix in SAFETENSORS:
        weights = open_weights(path)
        return {key: weights[key] for key in weights}
    if path.suffix in PICKLES:
        return load_pickle(path)
    raise UserError(f"{str(path)!r}: an embedding is a .pt, .bin or .safetensors file")


def read_embedding(path: str | Path, word: str | None = None) -> tuple[str, torch.Tensor]:
    """(the word prompts use, its vectors [n, width] in float32) of an embedding file; `word`, if given,
    replaces the file's own (its name for AUTOMATIC1111's formats, its key for diffusers')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is not a file")
    content = embedding_content(path)
    if isinstance(content, torch.Tensor):  # torch.save(vectors): the word must be given
        own, vectors = path.stem, content
    elif not isinstance(content, dict):
        raise UserError(f"{str(path)!r} holds a {type(content).__name__}, not an embedding")
    elif "string_to_param" in content:  # AUTOMATIC1111's .pt
        params = content["string_to_param"]  # a dict, or the original code's nn.ParameterDict
        tensors = [value for value in params.values() if isinstance(value, torch.Tensor)] \
            if isinstance(params, (dict, torch.nn.ParameterDict)) else []
        if len(tensors) != 1:
            raise UserError(f"{str(path)!r}: its string_to_param holds {len(tensors)} tensors, not one")
        own, vectors = path.stem, tensors[0]
    elif "emb_params" in content:  # AUTOMATIC1111's .safetensors
        own, vectors = path.stem, content["emb_params"]
    elif "clip_l" in content or "clip_g" in content:
        raise UserError(f"{str(path)!r} is an SDXL embedding (clip_l and clip_g, one per text encoder): "
                        "this model has one text encoder")
    else:  # diffusers: {word: vectors}
        tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
        if len(tensors) != 1:
            raise UserError(f"{str(path)!r} is not a textual-inversion embedding: it holds "
                            f"{', '.join(list(tensors)[:4]) or 'no tensors'}, not one word's vectors")
        own, vectors = next(iter(tensors.items()))
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point() or vectors.ndim not in (1, 2) \
            or not vectors.numel():
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise UserError(f"{str(path)!r}: the embedding is {shape}, not vectors [n, width]")
    vectors = vectors.detach().float().reshape(-1, vectors.shape[-1])
    if not torch.isfinite(vectors).all():
        raise UserError(f"{str(path)!r}: the embedding's vectors are not all finite numbers: the file is damaged")
    return (word if word is not None else own), vectors
