"""What a run shows of itself while it trains: grids of EMA samples (diffusion) and of
reconstructions (autoencoder), in the run's samples/step_NNNNNN.png."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import load_dataset
from ..diffusion import Diffusion
from ..errors import UserError
from ..images import make_grid, save_png
from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..sampling import Guidance, SamplerSettings, sample
from ..text.condition import text_condition
from ..text.tokenizer import Tokenizer
from .config import RunConfig

GRID_SAMPLER, GRID_STEPS, GRID_CFG = "ddim", 50, 5.0  # the pipeline's defaults for a model without its own


def sample_prompts(config: RunConfig, captioned: bool) -> list[str]:
    """What the sample grids show: captions of the first test images (of the first training images when
    a small folder holds none out), or nothing (unconditional)."""
    if not captioned:
        return [""] * config.num_samples
    try:
        shown = load_dataset(config.data, config.image_size, "test", captioned=True)
    except UserError:
        shown = load_dataset(config.data, config.image_size, "train", captioned=True)
    return [shown.caption(i % len(shown)) for i in range(config.num_samples)]


@torch.no_grad()
def save_sample_grid(path: Path, unet: UNet, diffusion: Diffusion, prompts: list[str], image_size: int, seed: int,
                     step: int, text_encoder: torch.nn.Module | None = None, tokenizer: Tokenizer | None = None,
                     vae: AutoencoderKL | None = None, convention: dict | None = None, steps: int | None = None,
                     spacing: str | None = None, cfg: float = GRID_CFG) -> None:
    """A fixed-seed grid of EMA samples to watch training: DDIM, 50 steps (or `steps` on the grid
    `spacing`), image i drawn with seed `seed + i`, guided at scale `cfg` against the empty caption
    for a text model; a latent model's samples decoded by `vae`; on the grid of the model's timestep
    `convention` (SD's `steps_offset` and `set_alpha_to_one`, as `Pipeline` keeps them). These are the
    images `Pipeline` draws for the same networks and seed."""
    device = next(unet.parameters()).device
    steps = steps or min(GRID_STEPS, diffusion.num_timesteps)
    cond, uncond = {}, None
    if text_encoder is not None:
        def condition(texts: list[str]) -> dict[str, torch.Tensor]:
            ids = tokenizer(texts, text_encoder.config.max_length, truncate=True).to(device)
            return text_condition(text_encoder, ids, unet.config)

        cond = condition(prompts)
        uncond = condition([""] * len(prompts)) if cfg != 1 else None
    factor = vae.config.downsample_factor if vae is not None else 1
    channels = vae.config.latent_channels if vae is not None else unet.config.in_channels
    shape = (len(prompts), channels, image_size // factor, image_size // factor)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    settings = SamplerSettings(GRID_SAMPLER, steps, spacing, clip=vae is None, **(convention or {}))
    x = sample(unet, diffusion, shape, settings, cond=cond,
               guidance=None if uncond is None else Guidance(uncond, cfg), generator=generators, device=device,
               progress=False)
    if vae is not None:
        x = vae.decode(x / vae.config.scaling_factor).clamp(-1, 1)
    parameters = {"step": step, "sampler": GRID_SAMPLER, "steps": steps, "seed": seed, "cfg": cfg,
                  **({"spacing": spacing} if spacing else {})}
    if any(prompts):
        parameters["prompts"] = prompts
    save_png(make_grid(x), path, parameters)


@torch.no_grad()
def save_reconstructions(path: Path, vae: AutoencoderKL, images: torch.Tensor, step: int) -> None:
    """Originals (top row) over their reconstructions D(μ(x)) (bottom row)."""
    device = next(vae.parameters()).device
    reconstructed = vae.decode(vae.encode(images.to(device)).mean).clamp(-1, 1).cpu()
    save_png(make_grid(torch.cat([images, reconstructed]), ncols=len(images)), path,
             {"step": step, "rows": "originals, reconstructions"})
