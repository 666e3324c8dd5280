"""Sampling: one entry point, `sample()`, around a registered sampler (`t2i.samplers.SAMPLERS`).

`sample()` takes three small groups besides the network: `SamplerSettings` (which sampler, on
what grid, with which of its options), the conditioning `cond` and its `Guidance`
(classifier-free), and an `Edit` (img2img and inpainting). It builds the grid, the starting
noise and the ε-predictor, guided or not, and hands them to the sampler's function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from .checks import real_number, whole_number
from .diffusion import Diffusion, Model
from .errors import UserError
from .samplers import SAMPLERS, Sampler, get_sampler
from .samplers.base import EpsFn, Generators, Grid, Project, noised, randn, sampler_grid

__all__ = ["SAMPLERS", "Edit", "Guidance", "SamplerSettings", "StopSampling", "get_sampler", "sample"]


MAX_GUIDANCE = 1000.0  # far past any useful scale (SD: 7.5), well short of overflowing float32
MAX_STEPS = 10_000
MAX_OPTION = 1000
# Called before each step with (step i, steps N, x̂_0 of the latest network call, computed on demand; None
# before the first): a server's progress events with a preview, and where it stops a cancelled job by raising.
StepCallback = Callable[[int, int, Callable[[], torch.Tensor | None]], None]


class StopSampling(Exception):
    """Raised by a `StepCallback` to end sampling where it is: `sample` returns the latest x̂_0, the best
    guess at the image so far (what AUTOMATIC1111's interrupt keeps), or x_T before any network call."""

    x0: torch.Tensor | None = None


def check_guidance(scale: float, rescale: float = 0.0) -> None:
    """Refuse a guidance scale outside [0, MAX_GUIDANCE] (1 meaning no guidance), or a rescale φ outside [0, 1]."""
    real_number("the guidance scale (cfg)", scale, 0, MAX_GUIDANCE)
    real_number("guidance rescale", rescale, 0, 1)


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
    check_guidance(scale, rescale)
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


def check_strength(strength: float) -> None:
    real_number("strength", strength, 0, 1)


def strength_grid(grid: Grid, strength: float) -> Grid:
    """The tail of a grid that image-to-image runs: its last ⌊strength · steps⌋ steps
    (as diffusers counts them), so strength 0 runs none and 1 runs them all."""
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


def check_option(name: str, value, default):
    """A sampler option of the kind its default is: a name, or a number from 0 to MAX_OPTION (η,
    step counts, orders and step sizes are all non-negative)."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{name} must be a name such as {default!r}, got {value!r}")
        return value
    if isinstance(default, int):
        return whole_number(name, value, 0, MAX_OPTION)
    return real_number(name, value, 0, MAX_OPTION)


@dataclass(frozen=True)
class SamplerSettings:
    """Which sampler runs, on what grid, with which of its own options.

    `steps` and `spacing` default to the sampler's (`Sampler.default_steps`, every training
    timestep for "ddpm"; `Sampler.spacing`, "karras" among the others). `options` are the
    sampler's own keyword options (`Sampler.options`: eta, variance, order, ...). `clip` clips
    every x̂_0 to [-1, 1] (`clip_denoised`), for models of pixels. `steps_offset` shifts a
    "leading" grid (SD: 1); `set_alpha_to_one=False` makes DDIM's last step land on ᾱ_0
    instead of x_0, as SD's DDIM does.
    """

    sampler: str = "ddpm"
    steps: int | None = None
    spacing: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    clip: bool = False
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    def __post_init__(self):
        entry = get_sampler(self.sampler)
        unknown = set(self.options) - set(entry.options)
        if unknown:
            raise UserError(f"sampler {self.sampler!r} takes no option {', '.join(sorted(unknown))}")
        object.__setattr__(self, "options", {name: check_option(name, value, entry.options[name])
                                             for name, value in self.options.items()})
        if self.steps is not None:  # frozen: an integral float such as 20.0 is stored as the int it is
            object.__setattr__(self, "steps", whole_number("steps", self.steps, 1, MAX_STEPS))

    @property
    def entry(self) -> Sampler:
        return SAMPLERS[self.sampler]

    def resolved(self, diffusion: Diffusion) -> SamplerSettings:
        """These settings with the steps and spacing that run filled in."""
        steps = self.steps or self.entry.default_steps or diffusion.num_timesteps
        return SamplerSettings(self.sampler, steps, self.spacing or self.entry.spacing, self.options, self.clip,
                               self.steps_offset, self.set_alpha_to_one)

    def grid(self, diffusion: Diffusion) -> Grid:
        run = self.resolved(diffusion)
        return sampler_grid(diffusion, run.steps, run.spacing, self.steps_offset,
                            land_on_sigma_min=not self.set_alpha_to_one and self.entry.follows_set_alpha_to_one,
                            discrete_time=self.entry.discrete_time)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance at `scale` s against `uncond`, the condition of the empty or a
    negative prompt (`classifier_free_guidance`); s = 1 is the conditional model alone, which
    then runs without the unconditional branch. `rescale` is Lin et al.'s φ."""

    uncond: Mapping[str, torch.Tensor]
    scale: float = 1.0
    rescale: float = 0.0

    def __post_init__(self):
        check_guidance(self.scale, self.rescale)


@dataclass(frozen=True)
class Edit:
    """Image-to-image: start from `init` (x_0 [B, C, H, W], as the network sees it) noised to the
    level `strength` selects; with a `mask` (1 = regenerate, 0 = keep; broadcast against x),
    inpaint by keeping the rest of `init` at every step (`keep_known`)."""

    init: torch.Tensor
    strength: float = 1.0
    mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.init is None:
            raise UserError("a mask needs the image it masks (init)")
        check_strength(self.strength)


def noise_predictor(model: Model, diffusion: Diffusion, cond: Mapping[str, torch.Tensor],
                    guidance: Guidance | None, clip: bool) -> EpsFn:
    """ε(x_t, t) as the samplers call it: the network's output as ε, guided unless s = 1, clipped."""
    if guidance is not None and guidance.scale != 1:
        model = classifier_free_guidance(model, guidance.scale, dict(cond), dict(guidance.uncond), guidance.rescale)
        cond = {}

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion.model_eps(model, x_t, t, **cond)

    return clip_denoised(eps_fn, diffusion) if clip else eps_fn


def watched(eps_fn: EpsFn, diffusion: Diffusion, callback: StepCallback) -> tuple[EpsFn, Callable[[int, int], None]]:
    """`eps_fn` remembering its latest call, and the per-step report that hands `callback` its x̂_0."""
    latest: list = []

    def eps_watched(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x_t, t)
        latest[:] = [x_t, t, eps]
        return eps

    def x0() -> torch.Tensor | None:
        return diffusion.predict_x0(*latest) if latest else None

    def report(i: int, steps: int) -> None:
        try:
            callback(i, steps, x0)
        except StopSampling as stop:
            stop.x0 = x0()
            raise

    return eps_watched, report


def sample(model: Model, diffusion: Diffusion, shape: Sequence[int], settings: SamplerSettings | str = "ddpm", *,
           cond: Mapping[str, torch.Tensor] | None = None, guidance: Guidance | None = None,
           edit: Edit | None = None, generator: Generators = None, x_T: torch.Tensor | None = None,
           device=None, progress: bool | StepCallback = True) -> torch.Tensor:
    """Draw samples x_0 of `shape` from `model(x_t, t, **cond)` (a sampler's name stands for its
    default `SamplerSettings`).

    `generator` is one torch.Generator, or one per sample so that a sample depends on its own
    seed alone; `x_T` replaces the starting noise drawn from it. With `guidance` the model is
    guided against its unconditional branch. With an `edit`, only the last ⌊strength · steps⌋
    steps run, from x_t ~ q(x_t | x_0) at the first of them: strength 1 starts from pure noise
    (plain generation) and 0 returns `init`. `progress` shows a bar, or is a `StepCallback`.
    """
    settings = SamplerSettings(settings) if isinstance(settings, str) else settings
    grid = settings.grid(diffusion)
    x = randn(shape, generator, device) if x_T is None else x_T
    project = None
    if edit is not None:
        grid = strength_grid(grid, edit.strength)
        if len(grid) == 0:
            return edit.init.clone()
        if edit.strength < 1:
            x = noised(edit.init, x, float(grid.sigmas[0]))
        if edit.mask is not None:
            project = keep_known(edit.init, edit.mask, generator)
    eps_fn = noise_predictor(model, diffusion, cond or {}, guidance, settings.clip)
    if callable(progress):
        eps_fn, progress = watched(eps_fn, diffusion, progress)
    noise = {"generator": generator} if settings.entry.stochastic else {}
    try:
        return settings.entry.run(eps_fn, x, grid, progress=progress, project=project, **noise, **settings.options)
    except StopSampling as stop:
        if stop.x0 is None:
            return x
        return stop.x0 if project is None else project(stop.x0, 0.0)  # inpainting: the kept region is init's
