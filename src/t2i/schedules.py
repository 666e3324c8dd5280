"""Noise schedules β_t and timestep grids.

Every schedule is computed in float64 (and cast only where used: ᾱ near 1 needs the digits). Timesteps are
0-based: index `t` holds β_{t+1} of the DDPM paper, so `t = 0` is "diffused one step".
"""

from __future__ import annotations

import math

import torch

from .errors import UserError


def _linear(num_steps: int) -> torch.Tensor:
    # DDPM paper §4: β linear from 1e-4 to 0.02 (over T = 1000).
    return torch.linspace(1e-4, 0.02, num_steps, dtype=torch.float64)


def _scaled_linear(num_steps: int) -> torch.Tensor:
    # Stable Diffusion: linear in sqrt(β), from 0.00085 to 0.012.
    return torch.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=torch.float64) ** 2


def _cosine(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2),
    # β_t = 1 - ᾱ_t/ᾱ_{t-1}, clipped so that the last steps do not reach β = 1.
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _linear_alpha(num_steps: int) -> torch.Tensor:
    # α linear from 0.9999 to 0.98, β = 1 - α (a tutorial's schedule, kept to compare against).
    return 1 - torch.linspace(0.9999, 0.98, num_steps, dtype=torch.float64)


def _rectified_flow(num_steps: int) -> torch.Tensor:
    # The straight path x = (1 - s) x_0 + s ε of rectified flow (Liu et al. 2022; SD3, Esser et al. 2024) at
    # s_t = (t+1)/(T+1): in the VE form x/(1-s) = x_0 + σ ε with σ = s/(1-s), so ᾱ = 1/(1+σ²). (T+1), not T,
    # keeps the last level short of pure noise (σ_max = T), where ᾱ = 0 and β = 1 would be undefined.
    s = torch.arange(1, num_steps + 1, dtype=torch.float64) / (num_steps + 1)
    alphas_cumprod = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
    return 1 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])


SCHEDULES = {
    "linear": _linear,
    "scaled_linear": _scaled_linear,
    "cosine": _cosine,
    "linear_alpha": _linear_alpha,
    "rectified_flow": _rectified_flow,
}


def get_betas(name: str, num_steps: int = 1000) -> torch.Tensor:
    """β_1..β_T of the named schedule as a float64 tensor of shape [num_steps]."""
    if name not in SCHEDULES:
        raise UserError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise UserError(f"a schedule needs at least one step, got {num_steps}")
    return SCHEDULES[name](num_steps)


TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "logsnr")
SPACINGS = (*TIMESTEP_SPACINGS, "karras")  # karras spaces σ, not t: see `karras_sigmas`


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N-1,
    descending, float64. ρ = 7 shortens the steps near σ_min, where the ODE's curvature
    errors show most in the image (their §3, "discretization")."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def half_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """λ_t = log(α_t / σ_t) = ½ log(ᾱ_t / (1 - ᾱ_t)), decreasing in t (DPM-Solver's time variable)."""
    return 0.5 * (alphas_cumprod.log() - torch.log1p(-alphas_cumprod))


def timestep_grid(num_train_steps: int, steps: int, spacing: str = "leading", offset: int = 0,
                  alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """`steps` timesteps out of [0, num_train_steps - 1], in descending (sampling) order.

    The three spacings of Lin et al. 2023 (table 2), as diffusers names them:
    "leading" (DDIM's and Stable Diffusion's: 0, k, 2k, ...), "trailing" (ends exactly at
    T-1, so sampling starts from pure noise) and "linspace" (both ends included).
    `offset` shifts a "leading" grid up (Stable Diffusion's samplers use 1: 1, k+1, ...),
    capped at T-1. "logsnr" spaces the grid evenly in λ = ½ log SNR from T-1 to 0 (the
    schedule's `alphas_cumprod` needed), as DPM-Solver does (Lu et al. 2022, §3.3): a
    multistep solver extrapolates in λ, and the even-in-t grids put one long step in λ at
    the low-noise end. Each target gets its nearest timestep, moved up to the next free one
    where two targets would share it (fine grids, short schedules).
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise UserError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_train_steps:
        raise UserError(
            f"steps must be between 1 and the model's {num_train_steps} training timesteps, got {steps}"
        )
    if spacing == "leading":
        grid = (torch.arange(steps) * (num_train_steps // steps) + offset).clamp(max=num_train_steps - 1)
    elif spacing == "logsnr":
        if alphas_cumprod is None:
            raise ValueError("the logsnr spacing needs the schedule's alphas_cumprod")
        lam = half_log_snr(alphas_cumprod.double())
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).flip(0).tolist()  # ascending in t
        for i in range(1, steps):  # where two targets share a timestep, move up to the next free one
            nearest[i] = max(nearest[i], nearest[i - 1] + 1)
        for i in range(steps - 1, -1, -1):  # ... and keep the top within T-1
            nearest[i] = min(nearest[i], num_train_steps - steps + i)
        grid = torch.tensor(nearest)
    elif spacing == "trailing":
        # T - i·T/steps for i < steps: an arange to 0 by -T/steps may round up to one element more, t = -1
        grid = (num_train_steps - torch.arange(steps, dtype=torch.float64) * num_train_steps / steps).round().long() - 1
    else:
        grid = torch.linspace(0, num_train_steps - 1, steps, dtype=torch.float64).round()
    return grid.long().unique().flip(0)
