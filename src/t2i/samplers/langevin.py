"""The score view: sampling by Langevin dynamics on s_θ(x, σ) = ∇_x log p_σ(x).

The network's ε gives the score: for x_t = sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε, ∇ log p(x_t) =
−ε_θ / sqrt(1-ᾱ) (`Diffusion.score`), and for x = x_0 + σ ε it is (D(x; σ) − x) / σ².
Langevin dynamics x ← x + (α/2) s(x) + sqrt(α) z samples p as α → 0 and the steps → ∞.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .ancestral import ancestral_step
from .base import (EpsFn, Generators, Grid, Progress, Project, alpha_bar, denoiser, project_ve, randn, steps, timestep,
                   to_ve, to_vp)


@torch.no_grad()
def sample_langevin(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                    generator: Generators = None, progress: Progress = True, project: Project | None = None,
                    langevin_steps: int = 2, step_size: float = 1.0) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) down the grid's noise levels:
    at each σ_i, `langevin_steps` steps of

        x ← x + (α_i/2) s_θ(x, σ_i) + sqrt(α_i) z,   α_i = ε σ_i² / σ_L²,

    in the form x = x_0 + σ ε. The paper's ε/σ_L², the step as a fraction of the level's
    variance, is the same at every level; it is `step_size` here, so that it does not
    depend on the grid's smallest σ_L. A last call returns the denoised D(x; σ_L)
    (Tweedie's formula; Song & Ermon 2020, §4, and Jolicoeur-Martineau et al. 2021), which
    removes the σ_L of noise that the chain ends with. langevin_steps × levels + 1 calls.
    """
    if langevin_steps < 1 or not step_size > 0:
        raise UserError(f"Langevin dynamics needs langevin_steps >= 1 and step_size > 0, "
                        f"got {langevin_steps} and {step_size}")
    denoise = denoiser(eps_fn)
    x = to_ve(x, float(grid.sigmas[0]))
    last_t, last_sigma = 0.0, float(grid.sigmas[0])
    for _, t, sigma, _ in steps(grid, progress, "langevin"):
        alpha = step_size * sigma**2
        for _ in range(langevin_steps):
            score = (denoise(x, sigma, t) - x) / sigma**2
            x = x + alpha / 2 * score + math.sqrt(alpha) * randn(x.shape, generator, x.device, x.dtype)
            x = project_ve(project, x, sigma)
        last_t, last_sigma = t, sigma
    end = float(grid.sigmas[-1])
    x = denoise(x, last_sigma, last_t) if end == 0 else x
    return to_vp(project_ve(project, x, end), end)


@torch.no_grad()
def sample_pc(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
              generator: Generators = None, progress: Progress = True, project: Project | None = None,
              corrector_steps: int = 1, snr: float = 0.16) -> torch.Tensor:
    """Predictor–corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through
    SDEs", Algorithms 1 and 3): at each level, `corrector_steps` Langevin steps at the level's
    own score correct x toward p_t, then an ancestral (DDPM) step predicts the next level.

    The corrector's step comes from the target signal-to-noise ratio r (`snr`):
    ε = 2 α_t (r ‖z‖ / ‖s_θ‖)², x ← x + ε s_θ + sqrt(2ε) z, with α_t = ᾱ_t / ᾱ_next the
    step's α. The norms are each sample's own (the paper's code averages them over the
    batch, which would make an image depend on the batch it was drawn in). The last
    prediction adds no noise. (1 + corrector_steps) calls a step.
    """
    if corrector_steps < 0 or not snr > 0:
        raise UserError(f"the corrector needs corrector_steps >= 0 and snr > 0, got {corrector_steps} and {snr}")
    dims = tuple(range(1, x.ndim))
    for i, t, sigma, sigma_next in steps(grid, progress, "pc"):
        abar_t, abar_next = alpha_bar(sigma), alpha_bar(sigma_next)
        alpha_t = abar_t / abar_next
        for _ in range(corrector_steps):
            score = -eps_fn(x, timestep(x, t)) / math.sqrt(1 - abar_t)
            z = randn(x.shape, generator, x.device, x.dtype)
            ratio = z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1).clamp(min=1e-12)
            epsilon = (2 * alpha_t * (snr * ratio) ** 2).reshape(-1, *([1] * len(dims)))
            x = x + epsilon * score + (2 * epsilon).sqrt() * z
            if project is not None:
                x = project(x, sigma)
        x = ancestral_step(x, eps_fn(x, timestep(x, t)), sigma, sigma_next, i < len(grid) - 1, generator=generator)
        if project is not None:
            x = project(x, sigma_next)
    return x
