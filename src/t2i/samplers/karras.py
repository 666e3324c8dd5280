"""Samplers of the probability-flow ODE in σ (Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models"): x = x_0 + σ ε moves as

    dx/dσ = (x − D(x; σ)) / σ        (their eq. 3 with σ(t) = t, s(t) = 1),

D the network as a denoiser (`base.denoiser`). Each sampler keeps x in that form inside and
hands back x_t; the last step, onto σ = 0, returns D itself in every one of them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError
from .base import EpsFn, Generators, Grid, Progress, Project, denoiser, project_ve, randn, steps, to_ve, to_vp


def _run(step, x: torch.Tensor, grid: Grid, project: Project | None, progress: Progress, name: str) -> torch.Tensor:
    """Walk the grid with `step(i, t, σ, σ_next, x) -> x` in the form x_0 + σ ε."""
    x = to_ve(x, float(grid.sigmas[0]))
    for i, t, sigma, sigma_next in steps(grid, progress, name):
        x = project_ve(project, step(i, t, sigma, sigma_next, x), sigma_next)
    return to_vp(x, float(grid.sigmas[-1]))


@torch.no_grad()
def sample_euler(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                 progress: Progress = True, project: Project | None = None) -> torch.Tensor:
    """Euler's method on the ODE: x_next = x + (σ_next − σ) (x − D(x; σ)) / σ.

    First order, one network call a step; in this form it is DDIM at η = 0 written in σ
    (Karras et al. §3; Song et al. 2021a, eq. 14).
    """
    denoise = denoiser(eps_fn)

    def step(i, t, sigma, sigma_next, x):
        return x + (sigma_next - sigma) * (x - denoise(x, sigma, t)) / sigma

    return _run(step, x, grid, project, progress, "euler")


def ancestral_split(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step from σ to σ_next: the deterministic part goes down to
    σ_down and noise of std σ_up brings it back to σ_next, σ_down² + σ_up² = σ_next², with
    σ_up² = η² σ_next² (σ² − σ_next²) / σ² (at η = 1 the variance DDPM's posterior adds, β̃ in σ),
    at most σ_next²."""
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


@torch.no_grad()
def sample_euler_ancestral(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                           generator: Generators = None, progress: Progress = True,
                           project: Project | None = None, eta: float = 1.0) -> torch.Tensor:
    """Euler ancestral: an Euler step down to σ_down, then fresh noise of std σ_up (`ancestral_split`;
    η = 0 is plain Euler). Like DDPM it forgets its errors as it goes, and so it does not
    converge to one image as the steps grow."""
    if eta < 0:
        raise UserError(f"eta must be >= 0, got {eta}")
    denoise = denoiser(eps_fn)

    def step(i, t, sigma, sigma_next, x):
        down, up = ancestral_split(sigma, sigma_next, eta)
        x = x + (down - sigma) * (x - denoise(x, sigma, t)) / sigma
        return x + up * randn(x.shape, generator, x.device, x.dtype) if up > 0 else x

    return _run(step, x, grid, project, progress, "euler_ancestral")


@torch.no_grad()
def sample_heun(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
                progress: Progress = True, project: Project | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. Algorithm 1 without churn): an Euler step to
    σ_next, then the mean of the slopes at both ends; two network calls a step, one on the
    last (an Euler step onto σ = 0, where the slope is undefined). The network is asked at
    the second end at the next step's time."""
    denoise = denoiser(eps_fn)

    def step(i, t, sigma, sigma_next, x):
        slope = (x - denoise(x, sigma, t)) / sigma
        euler = x + (sigma_next - sigma) * slope
        if sigma_next == 0:
            return euler
        slope_next = (euler - denoise(euler, sigma_next, grid.timestep_at(i + 1))) / sigma_next
        return x + (sigma_next - sigma) * (slope + slope_next) / 2

    return _run(step, x, grid, project, progress, "heun")


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """∫_{σ_i}^{σ_{i+1}} ℓ_j(σ) dσ for the Lagrange basis ℓ_j through σ_i, σ_{i-1}, ..., σ_{i-order+1}:
    the weights of the last `order` slopes in a linear multistep step (Adams–Bashforth on an
    uneven grid). Integrated exactly, as polynomials."""
    nodes = [sigmas[i - k] for k in range(order)]
    weights = []
    for j in range(order):
        basis = np.polynomial.Polynomial([1.0])
        for k in range(order):
            if k != j:
                basis *= np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
        integral = basis.integ()
        weights.append(float(integral(sigmas[i + 1]) - integral(sigmas[i])))
    return weights


@torch.no_grad()
def sample_lms(eps_fn: EpsFn, x: torch.Tensor, grid: Grid, *,
               progress: Progress = True, project: Project | None = None,
               order: int = 4) -> torch.Tensor:
    """Linear multistep (Karras et al. §3's "linear multistep" baseline; k-diffusion's LMS): each
    step integrates the polynomial through the last `order` slopes, one network call a step."""
    if order < 1:
        raise UserError(f"the LMS order must be at least 1, got {order}")
    denoise = denoiser(eps_fn)
    sigmas = grid.sigmas.tolist()
    slopes: list[torch.Tensor] = []

    def step(i, t, sigma, sigma_next, x):
        slopes.append((x - denoise(x, sigma, t)) / sigma)
        del slopes[:-order]
        weights = lms_coefficients(sigmas, i, len(slopes))
        return x + sum(w * s for w, s in zip(weights, reversed(slopes)))

    return _run(step, x, grid, project, progress, "lms")
