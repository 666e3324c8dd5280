"""Guards around a generation call: what it is given, checked before any network runs (prompts,
seeds, images, sizes), and what it made, checked before it is returned.

`Pipeline.__call__` normalises its arguments here, so that a wrong type or an absurd value is one
`UserError` naming the argument, and a size that cannot fit in memory is refused from an estimate
made from the shapes, not found by the allocator after minutes of swapping (training shares the
feature-map estimates, `unet_feature_bytes` and `vae_feature_bytes`). Samples that are not finite
(black images) are an error naming the cause, not a result.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .checks import MAX_SIDE, whole_number
from .errors import UserError
from .images import read_image
from .memory import check_fits
from .models.unet import UNetConfig
from .models.vae import VAEConfig

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes up to 2**64 - 1; JSON and most tools, int64


def random_seed() -> int:
    return secrets.randbelow(2**31)


def prompt_list(name: str, prompt) -> list[str]:
    """A prompt or a non-empty list of prompts, as a list."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise UserError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")
    if not prompts:
        raise UserError(f"{name} is an empty list: give at least one prompt ('' for none)")
    return list(prompts)


def negative_prompts(negative, count: int) -> list[str] | None:
    """The negative prompt of each of `count` prompts (one given for all, or one each), None for none."""
    if negative is None:
        return None
    negatives = prompt_list("negative_prompt", negative)
    if len(negatives) == 1:
        return negatives * count
    if len(negatives) != count:
        raise UserError(f"got {len(negatives)} negative prompts for {count} prompts: give one, or one each")
    return negatives


def image_seeds(seed: int | Sequence[int] | None, count: int) -> list[int]:
    """The seed of each of `count` images: `seed + i`, a list given whole, or a random start."""
    if seed is None:
        seed = random_seed()
    if isinstance(seed, (list, tuple)):
        seeds = [whole_number("each seed", s, 0, MAX_SEED) for s in seed]
        if len(seeds) != count:
            raise UserError(f"got {len(seeds)} seeds for {count} images")
        return seeds
    seed = whole_number("seed", seed, 0, MAX_SEED - count + 1)
    return [seed + i for i in range(count)]


def as_image(name: str, value, mode: str = "RGB") -> Image.Image | None:
    """A PIL image, or the image file a path names, in `mode`; None stays None."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return read_image(value, mode)
    if not isinstance(value, Image.Image):
        raise UserError(f"{name} must be a PIL image or an image file's path, got {type(value).__name__}")
    return value


def image_side(name: str, value) -> int | None:
    return None if value is None else whole_number(name, value, 1, MAX_SIDE)


def unet_feature_bytes(unet: UNetConfig, batch: int, height: int, width: int, value_bytes: int = 4) -> float:
    """A rough lower bound on the feature maps (of `value_bytes` a value: 4 in float32, 2 in bfloat16) one
    U-Net forward pass at [batch, C, height, width] holds at once: the skip activations and a few working
    maps at every level. Self-attention is assumed to run without materialising its (hw)² matrix, as
    PyTorch's fused attention does."""
    per_position = sum((unet.num_res_blocks + 4) * unet.model_channels * mult / 4**level
                       for level, mult in enumerate(unet.channel_mult))
    return float(value_bytes) * batch * height * width * per_position


def vae_feature_bytes(vae: VAEConfig, batch: int, height: int, width: int, value_bytes: int = 4) -> float:
    """The same rough lower bound for the autoencoder's encoder or decoder at image size height × width."""
    per_position = sum((vae.num_res_blocks + 4) * channels / 4**level for level, channels in
                       enumerate(vae.block_channels))
    return float(value_bytes) * batch * height * width * per_position


def generation_bytes(unet: UNetConfig, vae: VAEConfig | None, batch: int, height: int, width: int,
                     guided: bool, decoder_tiled: bool = False, value_bytes: int = 4) -> int:
    """A rough lower bound on the memory a generation needs beyond the weights, from the shapes
    alone: the U-Net's feature maps at the latents' size (twice the batch when guided) or the
    decoder's full-resolution maps, whichever is larger (`vae` None: a model of pixels; a tiled
    decoder holds a tile's maps, which the U-Net's bound covers)."""
    factor = vae.downsample_factor if vae is not None else 1
    total = unet_feature_bytes(unet, batch * (2 if guided else 1), height // factor, width // factor, value_bytes)
    if vae is not None and not decoder_tiled:
        total = max(total, vae_feature_bytes(vae, batch, height, width, value_bytes))
    return int(total)


def check_generation_fits(unet: UNetConfig, vae: VAEConfig | None, batch: int, height: int, width: int,
                          guided: bool, device: torch.device, decoder_tiled: bool = False,
                          dtype: torch.dtype = torch.float32) -> None:
    """Refuse a generation whose feature maps (in the networks' `dtype`) cannot fit the device's free memory."""
    nbytes = generation_bytes(unet, vae, batch, height, width, guided, decoder_tiled, dtype.itemsize)
    check_fits(nbytes, f"generating {batch} image{'s' * (batch > 1)} of {width}×{height}",
               "ask for fewer or smaller images (or tile the decoder: vae_tile)", device)


def check_finite_output(z: torch.Tensor, networks: dict[str, torch.nn.Module | None], model: str) -> None:
    """Refuse to return NaN or infinite samples; name the networks whose weights are the cause, if any."""
    if torch.isfinite(z).all():
        return
    broken = [name for name, network in networks.items()
              if network is not None and not all(torch.isfinite(p).all() for p in network.parameters())]
    if broken:
        raise UserError(f"model {model!r} has weights that are NaN or infinite ({', '.join(broken)}): "
                        "re-export it from a good checkpoint, or retrain")
    raise UserError("sampling produced NaN or infinite values: lower cfg or eta, or try another sampler")
