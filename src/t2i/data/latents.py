"""A dataset's images encoded once by a frozen autoencoder, for training latent diffusion.

Every image's posterior q(z | x) = N(μ, σ²) is computed in one pass and kept on disk
(safetensors, with the captions), so the epochs of a latent run never run the encoder
again. Training draws z = μ + σ ε afresh at each step, as latent diffusion trains on
posterior samples (Rombach et al. 2022, §3). The cache file is named by a hash of the
autoencoder's weights and of the dataset, so a changed autoencoder or dataset is
encoded again rather than read stale.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..checkpoints import load_weights, save_weights
from ..files import short_hash
from ..models.vae import AutoencoderKL
from ..randomness import Generators, randn


def cache_key(vae: AutoencoderKL, description: dict) -> str:
    """A digest of the autoencoder's weights and of what the dataset is."""
    return short_hash(json.dumps(description, sort_keys=True), vae.state_dict())


@torch.no_grad()
def encode_dataset(dataset, vae: AutoencoderKL, batch_size: int = 256, device="cpu",
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """(μ, σ) [N, C, h, w] of every image, and the captions of a captioned dataset."""
    means, stds, captions = [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="encode latents", disable=not progress):
        images, texts = batch if isinstance(batch, (list, tuple)) else (batch, None)
        posterior = vae.encode(images.to(device))
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        if texts is not None:
            captions.extend(texts)
    return torch.cat(means), torch.cat(stds), (captions if captions else None)


class LatentDataset(torch.utils.data.Dataset):
    """Items are `moments` [2C, h, w] (μ then σ), or `(moments, caption)`: what
    `sample_latents` turns into a training batch."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, captions: list[str] | None = None):
        self.mean, self.std, self.captions = mean, std, captions

    @classmethod
    def cached(cls, dataset, vae: AutoencoderKL, cache_dir: str | Path, description: dict, device="cpu",
               progress: bool = True, batch_size: int = 256) -> "LatentDataset":
        """The latents of `dataset` from `cache_dir`, encoding and saving them first if needed (`batch_size`
        images at a time)."""
        path = Path(cache_dir) / f"latents-{cache_key(vae, description)}.safetensors"
        if path.is_file():
            tensors = load_weights(path)
            with safe_open(str(path), "pt") as f:
                captions = json.loads(f.metadata()["captions"])
            return cls(tensors["mean"], tensors["std"], captions)
        mean, std, captions = encode_dataset(dataset, vae, batch_size, device, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(path, {"mean": mean, "std": std},
                     {"captions": json.dumps(captions), "dataset": json.dumps(description)})
        return cls(mean, std, captions)

    def __len__(self) -> int:
        return len(self.mean)

    def caption(self, index: int) -> str:
        return self.captions[index]

    def __getitem__(self, index: int):
        moments = torch.cat([self.mean[index], self.std[index]])
        return moments if self.captions is None else (moments, self.captions[index])


def sample_latents(moments: torch.Tensor, scaling_factor: float, generator: Generators = None) -> torch.Tensor:
    """z · scaling_factor with z = μ + σ ε ~ q(z | x), from a batch of `LatentDataset` moments (one
    generator per example if a list)."""
    mean, std = moments.chunk(2, dim=1)
    noise = randn(mean.shape, generator).to(mean)
    return (mean + std * noise) * scaling_factor
