"""How well an autoencoder reconstructs held-out images: PSNR of D(μ(x)) against x."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoints import load_vae, read_config, resolve_model
from ..data import load_dataset
from ..devices import resolve_device
from ..images import to_levels


@dataclass
class ReconstructionResult:
    psnr: float  # dB, of the mean squared error over all images (pixels in [0, 1])
    psnr_per_image: float  # dB, the mean of each image's PSNR
    num_images: int
    data: str | None = None  # the dataset and split the images came from, where known
    split: str | None = None

    def __str__(self) -> str:
        text = (f"PSNR {self.psnr:.2f} dB over all pixels, {self.psnr_per_image:.2f} dB averaged per image "
                f"({self.num_images} images)")
        return text + (f", {self.data} {self.split} split" if self.data is not None else "")


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / MSE) for images in [0, 1]."""
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


@torch.no_grad()
def reconstruction_psnr(vae, dataset, num_images: int = 512, batch_size: int = 128,
                        progress: bool = True) -> ReconstructionResult:
    """PSNR of D(μ(x)) against x over the first images of `dataset`, both quantised to 8 bits
    as saved images would be."""
    device = next(vae.parameters()).device
    num_images = min(num_images, len(dataset))
    errors = []
    for start in tqdm(range(0, num_images, batch_size), desc="psnr", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, num_images))]
        x = torch.stack([item[0] if isinstance(item, tuple) else item for item in items]).to(device)
        x_hat = vae.decode(vae.encode(x).mean)
        errors.append((((to_levels(x_hat) - to_levels(x)) / 255) ** 2).flatten(1).mean(1).cpu())
    mse = torch.cat(errors).double()
    return ReconstructionResult(psnr(mse.mean()).item(), psnr(mse).mean().item(), len(mse))


def autoencoder_psnr(model: str | Path, data: str = "shapes", split: str = "test", num_images: int = 512,
                     batch_size: int = 128, device: str = "auto", progress: bool = True) -> ReconstructionResult:
    """`reconstruction_psnr` of the autoencoder in the folder `model` (an autoencoder or a latent
    model, or a shipped model's name) on `split` of `data` ("shapes" or a folder of images), at the
    model's image size."""
    model = resolve_model(model)
    vae = load_vae(model, resolve_device(device))
    dataset = load_dataset(data, read_config(model)["image_size"], split)
    result = reconstruction_psnr(vae, dataset, num_images, batch_size, progress)
    result.data, result.split = str(data), split
    return result
