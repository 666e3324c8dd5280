"""What a diffusion run trains on: a split's images or their cached latents, the weights that
balance its batches over a metadata field, and the word tokenizer of its captions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..data import captions_of, load_dataset
from ..data.latents import LatentDataset
from ..errors import UserError
from ..models.vae import AutoencoderKL
from ..text.clip import TextEncoderConfig
from ..text.tokenizer import Tokenizer
from ..text.words import WordTokenizer
from .batches import group_weights
from .config import RunConfig


def make_tokenizer(dataset, text_config: TextEncoderConfig) -> Tokenizer:
    """A word tokenizer over every caption of the training set, as long as the encoder reads."""
    captions = captions_of(dataset)
    tokenizer = WordTokenizer.build(captions, max_length=text_config.max_length)
    longest = max(len(tokenizer.encode(c)) for c in captions)
    if longest > text_config.max_length:
        warnings.warn(f"the longest caption is {longest} tokens and the text encoder reads "
                      f"{text_config.max_length}: longer captions are cut (raise max_length)", stacklevel=2)
    return tokenizer


def balance_weights(dataset, field: str) -> torch.Tensor:
    """Sampling weights under which every value of an image's metadata `field` (e.g. the emoji,
    whatever its skin tones) is drawn equally often."""
    records = [dataset.record(i) for i in range(len(dataset))] if hasattr(dataset, "record") else []
    if not records or any(field not in record for record in records):
        raise UserError(f"balance_by {field!r}: every image's row of metadata.jsonl must have a {field!r} field")
    return group_weights([json.dumps(record[field], sort_keys=True) for record in records])


def latent_dataset(dataset, vae: AutoencoderKL, out: Path, config: RunConfig, device,
                   split: str = "train") -> LatentDataset:
    """A split's posteriors under `vae`, from the run's cache (encoded on first use, in batches of as many
    pixels as 256 images of 64×64: SD's encoder at 512×512 holds about 1 GiB of feature maps an image)."""
    description = {"data": str(config.data), "image_size": config.image_size, "split": split, "size": len(dataset),
                   "captioned": isinstance(dataset[0], tuple)}
    batch_size = max(1, min(256, 256 * 64 * 64 // config.image_size**2))
    return LatentDataset.cached(dataset, vae, out / "cache", description, device, batch_size=batch_size)


def held_out_dataset(config: RunConfig, captioned: bool, vae: AutoencoderKL | None, out: Path, device):
    """The data's test split (as latents for a latent run), or None with a warning if it has none."""
    try:
        held_out = load_dataset(config.data, config.image_size, "test", captioned=captioned)
    except UserError as error:
        warnings.warn(f"no held-out loss: {error}", stacklevel=2)
        return None
    return latent_dataset(held_out, vae, out, config, device, split="test") if vae is not None else held_out
