"""The samplers of the discrete chain: DDPM's ancestral sampling and DDIM.

Both step from ᾱ_t to ᾱ_prev, read off the grid's noise levels (ᾱ = 1/(1+σ²)), so on a
grid coarser than every timestep they run the respaced chain of Nichol & Dhariwal (2021, §4).
"""

from __future__ import annotations

import math

import torch

from ..diffusion import VARIANCES
from ..errors import UserError
from .base import EpsFn, Generators, Grid, Progress, Project, alpha_bar, randn, steps, timestep


@torch.no_grad()
def sample_ddpm(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                generator: Generators = None, progress: Progress = True, project: Project | None = None,
                variance: str = "beta_tilde") -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2:

        x_{t-1} = 1/sqrt(α_t) (x_t - β_t/sqrt(1-ᾱ_t) ε_θ(x_t, t)) + σ_t z,   z = 0 at the last step,

    with σ_t² = β_t ("beta") or β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t ("beta_tilde"). On a coarser
    grid α_t is that of the respaced chain, ᾱ_t / ᾱ_prev, so the full grid gives the paper's
    algorithm exactly.
    """
    if variance not in VARIANCES:
        raise UserError(f"unknown variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    for i, t, sigma, sigma_next in steps(grid, progress, "ddpm"):
        x = ancestral_step(x, eps_fn(x, timestep(x, t)), sigma, sigma_next, i < len(grid) - 1, variance, generator)
        if project is not None:
            x = project(x, sigma_next)
    return x


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float, add_noise: bool,
                   variance: str = "beta_tilde", generator: Generators = None) -> torch.Tensor:
    """One step of Algorithm 2 from noise level σ to σ_next, given ε_θ at x_t."""
    abar_t, abar_prev = alpha_bar(sigma), alpha_bar(sigma_next)
    alpha_t = abar_t / abar_prev
    beta_t = 1.0 - alpha_t
    x = (x - beta_t / math.sqrt(1.0 - abar_t) * eps) / math.sqrt(alpha_t)
    if add_noise:
        sigma2 = beta_t if variance == "beta" else beta_t * (1.0 - abar_prev) / (1.0 - abar_t)
        x = x + math.sqrt(sigma2) * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                generator: Generators = None, progress: Progress = True, project: Project | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), deterministic at η = 0:

        x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε_θ + σ z,
        σ = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_prev).

    At η = 1 on the full grid this is DDPM with σ² = β̃ (eq. 16). The last step lands where
    the grid ends: on x_0 (ᾱ_prev = 1), or on ᾱ at t = 0 as Stable Diffusion's own DDIM has
    it (`sampler_grid(land_on_sigma_min=True)`).
    """
    if eta < 0:
        raise UserError(f"eta must be >= 0, got {eta}")
    for _, t, sigma, sigma_next in steps(grid, progress, "ddim"):
        abar_t, abar_prev = alpha_bar(sigma), alpha_bar(sigma_next)
        eps = eps_fn(x, timestep(x, t))
        pred_x0 = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
        noise_scale = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x = math.sqrt(abar_prev) * pred_x0 + math.sqrt(max(1 - abar_prev - noise_scale**2, 0.0)) * eps
        if noise_scale > 0:
            x = x + noise_scale * randn(x.shape, generator, x.device, x.dtype)
        if project is not None:
            x = project(x, sigma_next)
    return x
