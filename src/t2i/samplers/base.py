"""What every sampler shares: the grid it walks, its noise, and the two forms of x_t.

A sampler holds x_t in the variance-preserving form of DDPM, x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε,
and meets the σ samplers of Karras et al. (2022, "EDM") in the variance-exploding form
x = x_t / sqrt(ᾱ_t) = x_0 + σ ε, σ = sqrt((1-ᾱ_t)/ᾱ_t), ᾱ = 1/(1+σ²): the same point, scaled.
Both are described by σ alone, so a `Grid` is a list of noise levels with the network time
to ask at each, and every sampler works on any schedule and any spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..diffusion import Diffusion
from ..errors import UserError
from ..randomness import Generators, randn  # noqa: F401 - the samplers' noise, re-exported
from ..schedules import karras_sigmas, timestep_grid

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B]) -> ε
Project = Callable[[torch.Tensor, float], torch.Tensor]  # (x_t after a step, the σ it landed on) -> x_t
# True shows a progress bar; a function is called with (step i, steps N) before each step instead (a server's
# progress events, and where it stops a cancelled job by raising)
Progress = bool | Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class Grid:
    """The steps of a sampler: step i goes from noise level `sigmas[i]` to `sigmas[i + 1]`,
    asking the network at time `timesteps[i]`. `sigmas` (float64) has one more entry, where the
    last step lands: 0 (x_0 itself), or σ at t = 0 for Stable Diffusion's DDIM. `timesteps` are
    integers (torch.long) on a grid of training timesteps and float64 where a sampler asks
    between them (σ spaced by Karras et al.)."""

    timesteps: torch.Tensor  # [N]
    sigmas: torch.Tensor  # [N + 1], descending

    def __len__(self) -> int:
        return len(self.timesteps)

    def tail(self, steps: int) -> Grid:
        """The last `steps` steps (image-to-image starts part-way down)."""
        start = len(self) - steps
        return Grid(self.timesteps[start:], self.sigmas[start:])

    def timestep_at(self, i: int) -> int | float:
        """The network time of level i, i = 0..N. A grid that does not land on σ = 0 lands on
        σ at t = 0 (`sampler_grid(land_on_sigma_min=True)`), so that is level N's time."""
        if i < len(self):
            return self.timesteps[i].item()
        return 0.0 if self.timesteps.is_floating_point() else 0


def sampler_grid(diffusion: Diffusion, steps: int, spacing: str = "leading", offset: int = 0,
                 land_on_sigma_min: bool = False, discrete_time: bool = False) -> Grid:
    """A grid of `steps` steps under `diffusion`'s schedule.

    The spacings of `schedules.timestep_grid` pick integer timesteps and take their σ;
    "karras" spaces σ itself (Karras et al. 2022, eq. 5, ρ = 7) between the schedule's
    σ(0) and σ(T-1) and asks the network at the fractional timestep of each σ, or for a
    `discrete_time` sampler at the nearest integer one, keeping σ exact (diffusers does the
    first for its Euler schedulers and the second for DPM-Solver and UniPC).
    """
    T = diffusion.num_timesteps
    if spacing == "karras":
        if not 1 <= steps <= T:
            raise UserError(f"steps must be between 1 and the model's {T} training timesteps, got {steps}")
        # landing on σ_min, the grid's end is that level: the N levels before it space down to it, not onto it
        sigmas = karras_sigmas(float(diffusion.sigmas[0]), float(diffusion.sigmas[-1]), steps + land_on_sigma_min)
        sigmas = sigmas[:steps]
        timesteps = diffusion.t_at(sigmas)
        if discrete_time:
            timesteps = timesteps.round().long()
    else:
        timesteps = timestep_grid(T, steps, spacing, offset, diffusion.alphas_cumprod)
        sigmas = diffusion.sigmas[timesteps]
    end = diffusion.sigmas[:1] if land_on_sigma_min else torch.zeros(1, dtype=torch.float64)
    return Grid(timesteps, torch.cat([sigmas, end]))


def steps(grid: Grid, progress: Progress, name: str) -> Iterator[tuple[int, int | float, float, float]]:
    """(i, t_i, σ_i, σ_{i+1}) along the grid, under a progress bar or reported to `progress`; t_i an
    int on integer grids."""
    ts, sigmas = grid.timesteps.tolist(), grid.sigmas.tolist()
    report = progress if callable(progress) else None
    for i, t in enumerate(tqdm(ts, desc=name, disable=report is not None or not progress, leave=False)):
        if report is not None:
            report(i, len(ts))
        yield i, t, sigmas[i], sigmas[i + 1]


def timestep(x: torch.Tensor, t: int | float) -> torch.Tensor:
    """The network time t for each of x's samples, [B]: torch.long for an integer timestep (the
    index `Diffusion`'s tables take), float64 for a fractional one."""
    return torch.full((x.shape[0],), t, dtype=torch.long if isinstance(t, int) else torch.float64)


def alpha_bar(sigma: float) -> float:
    """ᾱ of noise level σ: 1 / (1 + σ²), 1 at σ = 0."""
    return 1.0 / (1.0 + sigma * sigma)


def to_ve(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t / sqrt(ᾱ) = x_0 + σ ε."""
    return x * math.sqrt(1.0 + sigma * sigma)


def to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_0 + σ ε back to x_t = sqrt(ᾱ) (x_0 + σ ε)."""
    return x / math.sqrt(1.0 + sigma * sigma)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) at noise level σ, given the ε: sqrt(ᾱ) x_0 + sqrt(1-ᾱ) ε (DDPM eq. 4)."""
    return to_vp(x0 + sigma * noise, sigma)


Denoiser = Callable[[torch.Tensor, float, int | float], torch.Tensor]  # (x_0 + σε, σ, t) -> x̂_0


def denoiser(eps_fn: EpsFn) -> Denoiser:
    """D(x; σ) = x − σ ε_θ(x / sqrt(1+σ²), t): the network as Karras et al.'s denoiser of
    x = x_0 + σ ε (their eq. 7 and table 1, "VP" column, with the network's own time t)."""

    def denoise(x: torch.Tensor, sigma: float, t: int | float) -> torch.Tensor:
        return x - sigma * eps_fn(to_vp(x, sigma), timestep(x, t))

    return denoise


def project_ve(project: Project | None, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Apply a sampler's `project` (kept in the x_t form) to x = x_0 + σ ε."""
    return x if project is None else to_ve(project(to_vp(x, sigma), sigma), sigma)
