"""Samplers: plain functions that walk a descending timestep grid from x_T to x_0.

Each sampler has the signature `sampler(eps_fn, diffusion, x, timesteps, *, generator,
progress, **options)` where `eps_fn(x_t, t) -> ε` is the (possibly guided) noise
predictor and `timesteps` is the grid, computed once outside (k-diffusion's habit).
`SAMPLERS` maps the names the CLI accepts to these functions; `sample()` is the one
entry point that builds the grid, the starting noise and the ε-predictor, guided or not
(`classifier_free_guidance`).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .diffusion import VARIANCES, Diffusion, Model
from .errors import UserError
from .schedules import half_log_snr, timestep_grid

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Project = Callable[[torch.Tensor, int], torch.Tensor]  # (x after a step, the step's t_prev) -> x
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the CPU so that seeds agree across devices.

    With a list of generators, sample i is drawn from generator i alone, so an image
    depends on its own seed and not on the batch it was generated in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    else:
        if len(generator) != shape[0]:
            raise UserError(f"got {len(generator)} generators for a batch of {shape[0]}")
        noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator])
    return noise.to(device)


def _steps(timesteps: torch.Tensor, progress: bool, name: str):
    """(i, t, t_prev) along the grid, t_prev = -1 after the last step (x_0 itself, ᾱ = 1)."""
    ts = timesteps.tolist()
    for i, t in enumerate(tqdm(ts, desc=name, disable=not progress, leave=False)):
        yield i, t, ts[i + 1] if i + 1 < len(ts) else -1


def _alpha_bar(diffusion: Diffusion, t: int) -> float:
    return 1.0 if t < 0 else float(diffusion.alphas_cumprod[t])


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


def strength_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a grid that image-to-image runs: its last ⌊strength · steps⌋ timesteps
    (as diffusers counts them), so strength 0 runs none and 1 runs them all."""
    if not 0 <= strength <= 1:
        raise UserError(f"strength must be between 0 and 1, got {strength}")
    return timesteps[len(timesteps) - int(len(timesteps) * strength):]


def keep_known(diffusion: Diffusion, x0: torch.Tensor, mask: torch.Tensor, generator: Generators) -> Project:
    """Inpainting by replacement (RePaint, Lugmayr et al. 2022, eq. 8): after every step,

        x_{t-1} ← m ⊙ x_{t-1} + (1 − m) ⊙ x_{t-1}^known,   x_{t-1}^known ~ q(x_{t-1} | x_0),

    so the region m = 0 follows the forward-noised original down to x_0 itself, and the
    model fills m = 1 in agreement with it. `mask` broadcasts against x.
    """

    def project(x: torch.Tensor, t_prev: int) -> torch.Tensor:
        if t_prev < 0:
            known = x0
        else:
            t = torch.full((x.shape[0],), t_prev, dtype=torch.long, device=x.device)
            known = diffusion.q_sample(x0, t, randn(x.shape, generator, x.device, x.dtype))
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


@torch.no_grad()
def sample_ddpm(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, timesteps: torch.Tensor, *,
                generator: Generators = None, progress: bool = True, project: Project | None = None,
                variance: str = "beta_tilde") -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2:

        x_{t-1} = 1/sqrt(α_t) (x_t - β_t/sqrt(1-ᾱ_t) ε_θ(x_t, t)) + σ_t z,   z = 0 at the last step,

    with σ_t² = β_t ("beta") or β̃_t = (1-ᾱ_{t-1})/(1-ᾱ_t) β_t ("beta_tilde"). On a grid
    coarser than every timestep, α_t is that of the respaced chain, ᾱ_t / ᾱ_prev
    (Nichol & Dhariwal 2021, §4), so the full grid gives the paper's algorithm exactly.
    """
    if variance not in VARIANCES:
        raise UserError(f"unknown variance {variance!r}; choose one of: {', '.join(VARIANCES)}")
    batch = torch.ones(x.shape[0], dtype=torch.long)
    for _, t, t_prev in _steps(timesteps, progress, "ddpm"):
        abar_t, abar_prev = _alpha_bar(diffusion, t), _alpha_bar(diffusion, t_prev)
        alpha_t = abar_t / abar_prev
        beta_t = 1.0 - alpha_t
        eps = eps_fn(x, batch * t)
        x = (x - beta_t / math.sqrt(1.0 - abar_t) * eps) / math.sqrt(alpha_t)
        if t_prev >= 0:
            sigma2 = beta_t if variance == "beta" else beta_t * (1.0 - abar_prev) / (1.0 - abar_t)
            x = x + math.sqrt(sigma2) * randn(x.shape, generator, x.device, x.dtype)
        if project is not None:
            x = project(x, t_prev)
    return x


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, timesteps: torch.Tensor, *,
                generator: Generators = None, progress: bool = True, project: Project | None = None,
                eta: float = 0.0, set_alpha_to_one: bool = True) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), deterministic at η = 0:

        x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε_θ + σ z,
        σ = η sqrt((1-ᾱ_prev)/(1-ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_prev).

    At η = 1 on the full grid this is DDPM with σ² = β̃ (eq. 16). The last step lands on
    x_0 (ᾱ_prev = 1), or with `set_alpha_to_one=False` on ᾱ_prev = ᾱ at t = 0, as Stable
    Diffusion's own DDIM sampler and its diffusers scheduler config have it.
    """
    if eta < 0:
        raise UserError(f"eta must be >= 0, got {eta}")
    batch = torch.ones(x.shape[0], dtype=torch.long)
    for _, t, t_prev in _steps(timesteps, progress, "ddim"):
        abar_t = _alpha_bar(diffusion, t)
        abar_prev = _alpha_bar(diffusion, t_prev if set_alpha_to_one else max(t_prev, 0))
        eps = eps_fn(x, batch * t)
        pred_x0 = diffusion.predict_x0(x, batch * t, eps)
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
        x = math.sqrt(abar_prev) * pred_x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
        if project is not None:
            x = project(x, t_prev)
    return x


@torch.no_grad()
def sample_dpmpp_2m(eps_fn: EpsFn, diffusion: Diffusion, x: torch.Tensor, timesteps: torch.Tensor, *,
                    generator: Generators = None, progress: bool = True,
                    project: Project | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): the diffusion ODE solved
    exactly in its linear part, in λ = log(α_t/σ_t) with α_t = sqrt(ᾱ_t), σ_t = sqrt(1-ᾱ_t),
    and to second order in the data prediction x̂_0 by reusing the previous step's:

        x_prev = (σ_prev/σ_t) x_t − α_prev (e^{−h} − 1) D,   h = λ_prev − λ_t,
        D = (1 + 1/2r) x̂_0(t) − (1/2r) x̂_0(t_last),   r = h_last / h   (D = x̂_0 at the first step).

    The last step, onto x_0 itself (σ = 0, λ = ∞), returns its x̂_0. Deterministic, like DDIM
    at η = 0, which is its first-order special case; about 20 steps reach what DDIM needs 50 for.
    """
    batch = torch.ones(x.shape[0], dtype=torch.long)
    x0_last, h_last = None, None
    for _, t, t_prev in _steps(timesteps, progress, "dpmpp_2m"):
        abar_t, abar_prev = _alpha_bar(diffusion, t), _alpha_bar(diffusion, t_prev)
        x0 = diffusion.predict_x0(x, batch * t, eps_fn(x, batch * t))
        if t_prev < 0:
            x = x0
        else:
            lam_t, lam_prev = half_log_snr(torch.tensor([abar_t, abar_prev], dtype=torch.float64)).tolist()
            h = lam_prev - lam_t
            d = x0
            if x0_last is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_last
            ratio = math.sqrt((1 - abar_prev) / (1 - abar_t))
            x = ratio * x - math.sqrt(abar_prev) * math.expm1(-h) * d
            x0_last, h_last = x0, h
        if project is not None:
            x = project(x, t_prev)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}
DEFAULT_STEPS = {"ddim": 50, "dpmpp_2m": 20}  # samplers not listed run every training timestep by default
DEFAULT_SPACING = {"dpmpp_2m": "logsnr"}  # the others: "leading"


def spacing_for(sampler: str, spacing: str | None = None) -> str:
    """The timestep spacing a sampler runs on: the one asked for, else the sampler's own."""
    return spacing or DEFAULT_SPACING.get(sampler, "leading")


def sampler_options(name: str) -> tuple[str, ...]:
    """The keyword options a registered sampler accepts beyond the common ones."""
    common = {"eps_fn", "diffusion", "x", "timesteps", "generator", "progress", "project"}
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
           **cond) -> torch.Tensor:
    """Draw samples x_0 of `shape` from `model(x_t, t, **cond)` with the named sampler.

    `steps` defaults to all T timesteps for "ddpm", 50 for "ddim" and 20 for "dpmpp_2m"; `eta` (DDIM) and
    `variance` (DDPM: "beta" or "beta_tilde") are passed only to samplers that take them.
    `steps_offset` shifts a "leading" grid (SD: 1); `set_alpha_to_one` (DDIM) see `sample_ddim`.
    `clip` clips every x̂_0 to [-1, 1] (`clip_denoised`), for models of pixels. With
    `uncond` (the condition of the empty or negative prompt) the model is guided at
    `guidance_scale` (`classifier_free_guidance`); scale 1 skips the unconditional branch.

    Editing (seed 002): given an `init` image x_0, only the last ⌊strength · steps⌋ steps
    run, from x_t ~ q(x_t | x_0) at the first of them; strength 1 starts from pure noise
    (plain generation) and 0 returns `init`. A `mask` (1 = regenerate, 0 = keep) keeps
    the rest of `init` at every step (`keep_known`).
    """
    fn = get_sampler(sampler)
    options = {k: v for k, v in (("eta", eta), ("variance", variance)) if v is not None}
    unknown = set(options) - set(sampler_options(sampler))
    if unknown:
        raise UserError(f"sampler {sampler!r} takes no option {', '.join(sorted(unknown))}")
    if set_alpha_to_one is not None and "set_alpha_to_one" in sampler_options(sampler):
        options["set_alpha_to_one"] = set_alpha_to_one  # a model's convention: ignored by samplers without it
    steps = steps or DEFAULT_STEPS.get(sampler, diffusion.num_timesteps)
    spacing = spacing_for(sampler, spacing)
    timesteps = timestep_grid(diffusion.num_timesteps, steps, spacing, steps_offset, diffusion.alphas_cumprod)
    x = randn(shape, generator, device) if x_T is None else x_T
    project = None
    if init is not None:
        timesteps = strength_timesteps(timesteps, strength)
        if len(timesteps) == 0:
            return init.clone()
        if strength < 1:
            start = torch.full((shape[0],), int(timesteps[0]), dtype=torch.long, device=x.device)
            x = diffusion.q_sample(init, start, x)
        if mask is not None:
            project = keep_known(diffusion, init, mask, generator)
    elif mask is not None:
        raise UserError("a mask needs the image it masks (init)")
    if uncond is not None:
        guided = classifier_free_guidance(model, guidance_scale, cond, uncond, guidance_rescale)
        if guidance_scale != 1:
            model, cond = guided, {}

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffusion.model_eps(model, x_t, t.to(x_t.device), **cond)

    if clip:
        eps_fn = clip_denoised(eps_fn, diffusion)
    return fn(eps_fn, diffusion, x, timesteps, generator=generator, progress=progress, project=project, **options)
