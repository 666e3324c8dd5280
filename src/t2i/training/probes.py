"""Loss probes: L_simple of fixed examples, logged beside the running training loss."""

from __future__ import annotations

import torch

from ..data.folder import caption_choices
from ..data.latents import sample_latents
from ..diffusion import Diffusion


class LossProbe:
    """L_simple of fixed examples at fixed timesteps and noise, with each image's first
    (canonical) caption and none dropped: for the same weights it is the same number, so a
    probe of training examples and one of held-out examples, taken at the same steps, are
    the two curves whose gap shows overfitting (the running training loss is too noisy for it).
    """

    def __init__(self, dataset, count: int, diffusion: Diffusion, seed: int, scaling_factor: float | None = None):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique().tolist()
        items = [dataset[i] for i in indices]
        captioned = isinstance(items[0], tuple)
        self.x0 = torch.stack([item[0] if captioned else item for item in items])
        if scaling_factor is not None:  # latent moments → one fixed posterior sample each
            self.x0 = sample_latents(self.x0, scaling_factor, generator)
        self.captions = [caption_choices(item[1])[0] for item in items] if captioned else None
        self.t = diffusion.sample_timesteps(len(self.x0), generator)
        self.noise = torch.randn(self.x0.shape, generator=generator)

    @torch.no_grad()
    def __call__(self, diffusion: Diffusion, unet: torch.nn.Module, condition, batch_size: int, device,
                 min_snr_gamma: float | None = None) -> float:
        """The mean loss; `condition(captions)` gives the U-Net's keyword arguments."""
        total = 0.0
        for start in range(0, len(self.x0), batch_size):
            part = slice(start, start + batch_size)
            cond = condition(self.captions[part]) if self.captions is not None else {}
            loss = diffusion.training_loss(unet, self.x0[part].to(device), self.t[part].to(device),
                                           self.noise[part].to(device), min_snr_gamma=min_snr_gamma, **cond)
            total += loss.sum().item()
        return total / len(self.x0)


def loss_probes(dataset, held_out, diffusion: Diffusion, count: int, seed: int,
                scaling_factor: float | None = None) -> dict[str, LossProbe]:
    """{"train_fixed", "held_out_fixed"}: probes of `count` examples of the training set and of
    the held-out split (latents already for a latent run, which gives `scaling_factor`); the
    second only if there is a held-out split."""
    probes = {"train_fixed": LossProbe(dataset, count, diffusion, seed, scaling_factor)}
    if held_out is not None:
        probes["held_out_fixed"] = LossProbe(held_out, count, diffusion, seed + 1, scaling_factor)
    return probes
