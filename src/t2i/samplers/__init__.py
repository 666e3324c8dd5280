"""The sampler algorithms, one family a module, and `SAMPLERS`: one registry entry per sampler.

Every sampler is a plain function `run(eps_fn, x, grid, *, progress, project, [generator], **options)`
over an ε-predictor `eps_fn(x_t, t)` and a `Grid` computed outside (k-diffusion's habit);
`generator` only where it draws noise. `t2i.sampling.sample` runs them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..errors import UserError
from .ancestral import sample_ddim, sample_ddpm
from .dpm_solver import sample_dpmpp_2m, sample_dpmpp_2m_sde
from .karras import sample_euler, sample_euler_ancestral, sample_heun, sample_lms
from .langevin import sample_langevin, sample_pc

COMMON_PARAMETERS = ("eps_fn", "x", "grid", "progress", "project", "generator")


def one_call_a_step(steps: int, options: Mapping) -> int:
    return steps


@dataclass(frozen=True)
class Sampler:
    """What is known of a sampler: its function, the grid it runs on when not told (`default_steps`,
    None for every training timestep, and `spacing`), whether it asks the network only at integer
    timesteps (`discrete_time`: then a Karras grid's times are rounded, its σ kept exact, as
    diffusers' DDIM and DPM-Solver do), and how many network calls a grid of n steps costs."""

    run: Callable[..., torch.Tensor]
    default_steps: int | None
    spacing: str
    discrete_time: bool
    calls: Callable[[int, Mapping], int] = one_call_a_step
    follows_set_alpha_to_one: bool = False  # its last step lands on ᾱ_0 for a model that says so (SD's DDIM)

    @property
    def options(self) -> dict[str, object]:
        """The sampler's own keyword options and their defaults (eta, variance, order, ...)."""
        return {name: p.default for name, p in inspect.signature(self.run).parameters.items()
                if name not in COMMON_PARAMETERS}

    @property
    def stochastic(self) -> bool:
        """Whether it draws noise along the way (and so takes a generator)."""
        return "generator" in inspect.signature(self.run).parameters

    def network_calls(self, steps: int, options: Mapping | None = None) -> int:
        """Network evaluations on a grid of `steps` steps (twice as many images with guidance)."""
        return self.calls(steps, {**self.options, **(options or {})})


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(sample_ddpm, None, "leading", discrete_time=True),
    "ddim": Sampler(sample_ddim, 50, "leading", discrete_time=True, follows_set_alpha_to_one=True),
    "euler": Sampler(sample_euler, 30, "karras", discrete_time=False),
    "euler_ancestral": Sampler(sample_euler_ancestral, 30, "karras", discrete_time=False),
    "heun": Sampler(sample_heun, 15, "karras", discrete_time=False,
                    calls=lambda steps, options: 2 * steps - 1),  # the last step, onto σ = 0, is Euler's
    "lms": Sampler(sample_lms, 30, "karras", discrete_time=False),
    "dpmpp_2m": Sampler(sample_dpmpp_2m, 20, "logsnr", discrete_time=True),
    "dpmpp_2m_sde": Sampler(sample_dpmpp_2m_sde, 25, "logsnr", discrete_time=True),
    "langevin": Sampler(sample_langevin, 100, "logsnr", discrete_time=False,
                        calls=lambda steps, options: steps * options["langevin_steps"] + 1),
    "pc": Sampler(sample_pc, 250, "leading", discrete_time=True,
                  calls=lambda steps, options: steps * (1 + options["corrector_steps"])),
}


def get_sampler(name: str) -> Sampler:
    """The registry entry of `name`, or a UserError listing the names there are."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
