"""Sampling: one entry point, `sample()`, over a registry of samplers.

Each sampler is a plain function `sampler(eps_fn, diffusion, x, grid, *, generator, progress,
project, **options)` in `t2i.samplers`: `eps_fn(x_t, t) -> ε` is the (possibly guided) noise
predictor and `grid` the steps, computed once outside (k-diffusion's habit). `SAMPLERS` maps
the names the CLI accepts to them; `sample()` builds the grid, the starting noise and the
ε-predictor, guided or not (`classifier_free_guidance`), and the editing hooks.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch

from .diffusion import Diffusion, Model
from .errors import UserError
from .samplers.ancestral import sample_ddim, sample_ddpm
from .samplers.base import EpsFn, Generators, Grid, Project, make_grid, noised, randn
from .samplers.dpm_solver import sample_dpmpp_2m, sample_dpmpp_2m_sde
from .samplers.karras import sample_euler, sample_euler_ancestral, sample_heun, sample_lms
from .samplers.langevin import sample_langevin, sample_pc

__all__ = ["SAMPLERS", "Grid", "make_grid", "randn", "sample", "get_sampler", "network_calls"]


def check_guidance_scale(scale: float) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise UserError(f"the guidance scale (cfg) must be a number >= 0, 1 meaning no guidance; got {scale}")


def classifier_free_guidance(model: Model, scale: float, cond: dict[str, torch.Tensor],
                             uncond: dict[str, torch.Tensor], rescale: float = 0.0) -> Model:
    """The guided network  ε̃(x_t, t) = ε_θ(x_t, t, ∅) + s (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅)).

    Ho & Salimans (2022, eq. 6) write it (1 + w) ε_θ(y) − w ε_θ(∅), s = 1 + w: s = 1 is
    the conditional model alone, s = 0 the unconditional one. `uncond` is the condition
    of the empty prompt, or of a negative prompt, which the guidance then steers away
    from. Both branches run as one batch of 2B. Since a v-prediction is linear in ε at
    fixed x_t, guiding the raw output equals guiding ε for either prediction type.

    `rescale` = φ > 0 is Lin et al.'s (2023, §3.4, eqs. 15–16) guidance rescale: the
    guided output is scaled back to the standard deviation of the conditional one,
    ε_r = ε̃ · std(ε_c)/std(ε̃), and the result is φ ε_r + (1 − φ) ε̃, against the
    over-exposure strong guidance causes.
    """
    check_guidance_scale(scale)
    if not 0 <= rescale <= 1:
        raise UserError(f"guidance rescale must be between 0 and 1, got {rescale}")
    both = {key: torch.cat([uncond[key], cond[key]]) for key in cond}

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)
        out = out_uncond + scale * (out_cond - out_uncond)
        if rescale > 0:
            dims = tuple(range(1, out.ndim))
            rescaled = out * out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
            out = rescale * rescaled + (1 - rescale) * out
        return out

    return guided


def strength_grid(grid: Grid, strength: float) -> Grid:
    """The tail of a grid that image-to-image runs: its last ⌊strength · steps⌋ steps
    (as diffusers counts them), so strength 0 runs none and 1 runs them all."""
    if not 0 <= strength <= 1:
        raise UserError(f"strength must be between 0 and 1, got {strength}")
    return grid.tail(int(len(grid) * strength))


def keep_known(x0: torch.Tensor, mask: torch.Tensor, generator: Generators) -> Project:
    """Inpainting by replacement (RePaint, Lugmayr et al. 2022, eq. 8): after every step,

        x_{t-1} ← m ⊙ x_{t-1} + (1 − m) ⊙ x_{t-1}^known,   x_{t-1}^known ~ q(x_{t-1} | x_0),

    so the region m = 0 follows the forward-noised original down to x_0 itself, and the
    model fills m = 1 in agreement with it. `mask` broadcasts against x.
    """

    def project(x: torch.Tensor, sigma: float) -> torch.Tensor:
        known = x0 if sigma == 0 else noised(x0, randn(x.shape, generator, x.device, x.dtype), sigma)
        return mask * x + (1 - mask) * known

    return project


def clip_denoised(eps_fn: EpsFn, diffusion: Diffusion) -> EpsFn:
    """ε-predictor whose implied x̂_0 = (x_t - sqrt(1-ᾱ_t) ε)/sqrt(ᾱ_t) is clipped to [-1, 1].

    At large t an ε error is amplified by 1/sqrt(ᾱ_t) in x̂_0; for data known to lie in
    [-1, 1] (pixels, not latents) Ho et al.'s sampler clips x̂_0 and continues from the
    ε consistent with it. Every sampler accepts the wrapped predictor unchanged.
    """

    def clipped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred_x0 = diffusion.predict_x0(x, t, eps_fn(x, t)).clamp(-1, 1)
        return diffusion.predict_eps(x, t, pred_x0)

    return clipped


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "langevin": sample_langevin,
    "pc": sample_pc,
}
# samplers not listed run every training timestep by default
DEFAULT_STEPS = {"ddim": 50, "euler": 30, "euler_ancestral": 30, "heun": 15, "lms": 30, "dpmpp_2m": 20,
                 "dpmpp_2m_sde": 25, "langevin": 100, "pc": 250}
DEFAULT_SPACING = {"dpmpp_2m": "logsnr", "dpmpp_2m_sde": "logsnr", "euler": "karras", "euler_ancestral": "karras",
                   "heun": "karras", "lms": "karras", "langevin": "logsnr"}  # the others: "leading"
# Samplers of the discrete chain ask the network at integer timesteps even on a Karras grid
# (σ kept exact), as diffusers' DDIM and DPM-Solver do; the σ samplers at fractional ones.
DISCRETE_TIME = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "pc")


def network_calls(sampler: str, steps: int, options: dict | None = None) -> int:
    """How many times `sampler` evaluates the network (×2 with guidance) on a grid of `steps`."""
    defaults = {name: p.default for name, p in inspect.signature(get_sampler(sampler)).parameters.items()}
    options = {**defaults, **(options or {})}
    if sampler == "heun":
        return 2 * steps - 1
    if sampler == "langevin":
        return steps * options["langevin_steps"] + 1
    if sampler == "pc":
        return steps * (1 + options["corrector_steps"])
    return steps


def spacing_for(sampler: str, spacing: str | None = None) -> str:
    """The timestep spacing a sampler runs on: the one asked for, else the sampler's own."""
    return spacing or DEFAULT_SPACING.get(sampler, "leading")


def sampler_options(name: str) -> tuple[str, ...]:
    """The keyword options a registered sampler accepts beyond the common ones."""
    common = {"eps_fn", "diffusion", "x", "grid", "generator", "progress", "project"}
    return tuple(p for p in inspect.signature(get_sampler(name)).parameters if p not in common)


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(model: Model, diffusion: Diffusion, shape: Sequence[int], sampler: str = "ddpm",
           steps: int | None = None, eta: float | None = None, generator: Generators = None,
           progress: bool = True, *, variance: str | None = None, spacing: str | None = None,
           clip: bool = False, x_T: torch.Tensor | None = None, device=None,
           guidance_scale: float = 1.0, uncond: dict[str, torch.Tensor] | None = None,
           guidance_rescale: float = 0.0, init: torch.Tensor | None = None, strength: float = 1.0,
           mask: torch.Tensor | None = None, steps_offset: int = 0, set_alpha_to_one: bool | None = None,
           options: dict | None = None, **cond) -> torch.Tensor:
    """Draw samples x_0 of `shape` from `model(x_t, t, **cond)` with the named sampler.

    `steps` defaults to the sampler's `DEFAULT_STEPS` (all T timesteps for "ddpm") on its
    `DEFAULT_SPACING` (`spacing` may name another, "karras" among them). `eta` (DDIM, Euler
    ancestral), `variance` (DDPM: "beta" or "beta_tilde") and the sampler's own `options`
    (`sampler_options`) go to samplers that take them. `steps_offset` shifts a "leading"
    grid (SD: 1); `set_alpha_to_one=False` makes DDIM land on ᾱ_0 instead of x_0, as SD's does.
    `clip` clips every x̂_0 to [-1, 1] (`clip_denoised`), for models of pixels. With
    `uncond` (the condition of the empty or negative prompt) the model is guided at
    `guidance_scale` (`classifier_free_guidance`); scale 1 skips the unconditional branch.

    Editing (seed 002): given an `init` image x_0, only the last ⌊strength · steps⌋ steps
    run, from x_t ~ q(x_t | x_0) at the first of them; strength 1 starts from pure noise
    (plain generation) and 0 returns `init`. A `mask` (1 = regenerate, 0 = keep) keeps
    the rest of `init` at every step (`keep_known`).
    """
    fn = get_sampler(sampler)
    options = {**{k: v for k, v in (("eta", eta), ("variance", variance)) if v is not None}, **(options or {})}
    unknown = set(options) - set(sampler_options(sampler))
    if unknown:
        raise UserError(f"sampler {sampler!r} takes no option {', '.join(sorted(unknown))}")
    grid = make_grid(diffusion, steps or DEFAULT_STEPS.get(sampler, diffusion.num_timesteps),
                     spacing_for(sampler, spacing), steps_offset,
                     land_on_sigma_min=set_alpha_to_one is False and sampler == "ddim",
                     quantize=sampler in DISCRETE_TIME)
    x = randn(shape, generator, device) if x_T is None else x_T
    project = None
    if init is not None:
        grid = strength_grid(grid, strength)
        if len(grid) == 0:
            return init.clone()
        if strength < 1:
            x = noised(init, x, float(grid.sigmas[0]))
        if mask is not None:
            project = keep_known(init, mask, generator)
    elif mask is not None:
        raise UserError("a mask needs the image it masks (init)")
    if uncond is not None:
        guided = classifier_free_guidance(model, guidance_scale, cond, uncond, guidance_rescale)
        if guidance_scale != 1:
            model, cond = guided, {}

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion.model_eps(model, x_t, t, **cond)

    if clip:
        eps_fn = clip_denoised(eps_fn, diffusion)
    return fn(eps_fn, diffusion, x, grid, generator=generator, progress=progress, project=project, **options)
