"""Progressive distillation (`t2i train --distill TEACHER`): one of our text-to-image models into students that
take N, N/2, ... DDIM steps, classifier-free guidance folded into their networks.

Salimans & Ho (2022, "Progressive Distillation for Fast Sampling of Diffusion Models", Algorithm 2): a student,
initialised from its teacher, learns to take in ONE deterministic DDIM step t_i → t_{i+1} of its grid of N steps
what the teacher takes in two, t_i → t_mid → t_{i+1} on the grid of 2N; it then teaches the next round's student,
of N/2 steps, down to `final_steps`. The first teacher is the model guided at a fixed scale w,
ε̃ = ε(z_t, ∅) + w (ε(z_t, y) − ε(z_t, ∅)), so that every student takes one network call a step and has no
unconditional branch: Meng et al. (2023, "On Distillation of Guided Diffusion Models") at a fixed w, their two
stages run as one.

Grids are generation's own (`SamplerSettings`: "ddim" on the "trailing" spacing, under the model's timestep
convention), so a student samples on exactly the grid it was trained for. Trailing grids start at T-1 (pure noise,
which a few steps cannot afford to skip: Lin et al. 2023) and nest, the grid of N being every other level of the
grid of 2N: jT/N and 2j·T/2N are the same number (a test checks every N up to T/2; `round_grids` still refuses
a pair that would not nest, as a guard). The last step lands
where the grid ends, as `samplers.ancestral.sample_ddim` takes it: on x_0 (σ = 0), or on ᾱ_0 for a model whose
`set_alpha_to_one` is false.

One run takes every round, `steps_per_round` steps each: step k is in round k // steps_per_round. When a round
ends, its student's EMA is kept as a model folder, RUN/students/steps-N, and becomes both the next round's teacher
and its student's initial weights: the EMA, not the raw weights, since it is the student published, so that each
student folder is exactly the teacher of the next. The optimizer, the learning rate's warm-up and cooldown and the
EMA's warm-up start again. The checkpoint's raw weights hold the teacher too, so that a run resumes exactly, in a
round or across its end, from its checkpoint alone.

The data are a diffusion run's (`training.diffusion.step_examples`): a captioned folder, its latents under the
teacher's autoencoder (cached), one phrasing of each caption, none dropped (the students have no unconditional
branch), the frozen text encoder's states cached (`text.cache`). The autoencoder, the text encoder and the
tokenizer are the teacher's, saved with every student.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import (diffusion_from_config, versioned_config, is_pretrained, load_components, read_config,
                           require_diffusion_model, resolve_model, student_folder, timestep_convention,
                           tokenizer_from_config)
from ..data import captions_of, load_dataset
from ..diffusion import Diffusion, mean_flat
from ..errors import UserError
from ..folder_config import InferenceSettings
from ..models.layers import parameter_count
from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..randomness import randint, randn
from ..samplers.base import EpsFn, Grid
from ..sampling import MAX_GUIDANCE, Guidance, SamplerSettings, noise_predictor
from ..text.cache import TextConditionCache
from ..text.tokenizer import Tokenizer
from .config import STEPS
from .datasets import balance_weights, latent_dataset
from .diffusion import AUTOCAST, DiffusionTrainingConfig, check_training_fits, grad_scaler, scaler_state, step_examples
from .distributed import World, accumulate, join, leaving, main_first, main_locks, replicate, restarted
from .loop import Hooks, StepFn, TrainResult, run_steps
from .optimization import adamw, apply_gradients, ema_decay_at, scheduled_lr, update_ema
from .run_folder import (check_new_run, new_state, read_run_config, restore, save_checkpoint,
                         save_model_folder)
from .samples import sample_prompts, save_sample_grid

SAMPLER, SPACING = "ddim", "trailing"  # the students' sampler and grid
MODEL_SECTIONS = ("unet", "text_encoder", "tokenizer", "vae", "diffusion")  # what a student keeps of its teacher's
Scales = tuple[torch.Tensor, torch.Tensor]  # (α, σ) of z = α x + σ ε, each [B, 1, ...]


@dataclass
class DistillConfig(DiffusionTrainingConfig):
    """Everything a distillation run depends on besides its teacher; saved in config.json. Students of
    `start_steps`, then half as many, ... down to `final_steps`, one round of `steps_per_round` steps each;
    `max_steps` (None: every round) stops the run earlier, to be resumed. The learning rate's warm-up and
    cooldown are each round's. `cfg` is the scale the first teacher is guided at, which its students then have
    in their networks (None: the teacher's default cfg). The defaults are a fine-tuning's: batches of 32 at lr
    1e-4."""

    teacher: str = ""  # a model folder or a shipped model's name (made absolute when the run starts)
    start_steps: int = 32  # the first student's; its teacher takes twice as many
    final_steps: int = 1
    steps_per_round: int = 2000
    cfg: float | None = None
    image_size: int | None = None  # the teacher's
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    save_every: int = 500
    sample_every: int = 500
    num_samples: int = 8
    p_uncond: float = 0.0
    probe_every: int = 0

    RANGES = {**DiffusionTrainingConfig.RANGES, "start_steps": (1, 100_000), "final_steps": (1, 100_000),
              "steps_per_round": STEPS, "cfg": (0.0, MAX_GUIDANCE)}
    # a diffusion run's settings that a distillation has no use for: the students learn their teachers' steps,
    # not L_simple (which the probes measure), and have no unconditional branch; a round's student is kept whole
    NOT_APPLYING = {"p_uncond": 0.0, "min_snr_gamma": None, "keep_every": None, "probe_every": 0}

    def __post_init__(self):
        super().__post_init__()
        if not self.teacher.strip():
            raise UserError("teacher is empty: name the model to distil")
        halvings = self.start_steps // self.final_steps
        if self.start_steps < self.final_steps or self.start_steps % self.final_steps or halvings & (halvings - 1):
            raise UserError(f"start_steps must be final_steps times a power of two (1, 2, 4, ...): got start_steps "
                            f"{self.start_steps} and final_steps {self.final_steps}")
        refused = [name for name, default in self.NOT_APPLYING.items() if getattr(self, name) != default]
        if refused:
            raise UserError(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to distillation "
                            "(its students learn their teachers' steps, and have no unconditional branch)")
        if self.warmup_steps + self.cooldown_steps > self.steps_per_round:
            raise UserError(f"warmup_steps {self.warmup_steps} and cooldown_steps {self.cooldown_steps} are each "
                            f"round's, and together pass its {self.steps_per_round} steps: make them fewer")
        total = self.rounds * self.steps_per_round
        if self.max_steps is None:
            self.max_steps = total
        elif self.max_steps > total:
            raise UserError(f"max_steps {self.max_steps} is past the last round's end: {self.rounds} rounds of "
                            f"{self.steps_per_round} steps make {total}")

    @property
    def rounds(self) -> int:
        """Students of start_steps, start_steps/2, ..., final_steps: one a round."""
        return (self.start_steps // self.final_steps).bit_length()

    def student_steps(self, r: int) -> int:
        """The steps of round r's student (its teacher takes twice as many)."""
        return self.start_steps >> r

    def round_of(self, k: int) -> int:
        """The round of step k (counted from 0)."""
        return min(k // self.steps_per_round, self.rounds - 1)


# -- the maths of a round -----------------------------------------------------------------------------------------
def round_grids(diffusion: Diffusion, steps: int, convention: dict | None = None) -> tuple[Grid, Grid]:
    """The DDIM grids of a student of `steps` steps and of its teacher, of twice as many, as generation builds them
    ("trailing", the model's timestep `convention`); refused unless the student's levels are every other one of
    its teacher's, so that two of the teacher's steps span exactly one of the student's."""
    student, teacher = (SamplerSettings(SAMPLER, n, SPACING, **(convention or {})).grid(diffusion)
                        for n in (steps, 2 * steps))
    nested = torch.equal(teacher.timesteps[::2], student.timesteps) and torch.equal(teacher.sigmas[::2], student.sigmas)
    if not nested:
        raise UserError(f"the {SPACING} grid of {steps} steps is not every other level of the grid of {2 * steps} over "
                        f"the model's {diffusion.num_timesteps} timesteps: choose start_steps and final_steps that "
                        "halve it evenly (powers of two do for 1000)")
    return student, teacher


def distillation_grids(diffusion: Diffusion, config: DistillConfig, convention: dict) -> list[tuple[Grid, Grid]]:
    """Each round's grids (`round_grids`), checked before any work."""
    T = diffusion.num_timesteps
    if 2 * config.start_steps > T:
        raise UserError(f"start_steps {config.start_steps} is too many: its teacher's grid of {2 * config.start_steps} "
                        f"steps needs as many of the model's {T} timesteps")
    return [round_grids(diffusion, config.student_steps(r), convention) for r in range(config.rounds)]


def grid_scales(sigmas: torch.Tensor, x: torch.Tensor) -> Scales:
    """(α, σ) = (sqrt(ᾱ), sqrt(1 - ᾱ)) of grid levels [B] (their σ are the σ of `samplers.base`, x_t / sqrt(ᾱ) =
    x_0 + σ ε: ᾱ = 1/(1 + σ²)), shaped to broadcast over x, in its dtype: the paper's z_t = α_t x + σ_t ε."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    signal = (1 + sigmas**2).rsqrt()
    shape = (-1, *[1] * (x.ndim - 1))
    return signal.reshape(shape).to(x), (sigmas * signal).reshape(shape).to(x)


def ddim_step(z: torch.Tensor, eps: torch.Tensor, level: Scales, next_level: Scales) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12, η = 0), as `sample_ddim` takes it:
    z_s = α_s x̂ + σ_s ε̂ with x̂ = (z_t - σ_t ε̂) / α_t."""
    (signal, sigma), (next_signal, next_sigma) = level, next_level
    return next_signal * ((z - sigma * eps) / signal) + next_sigma * eps


def teacher_steps(eps_fn: EpsFn, z: torch.Tensor, i: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Algorithm 2's z_t'': where the teacher's two DDIM steps from level 2i of its grid land, through level
    2i + 1 (z_t'), each example from its own i [B]."""
    for level in (2 * i, 2 * i + 1):
        eps = eps_fn(z, grid.timesteps[level])
        z = ddim_step(z, eps, grid_scales(grid.sigmas[level], z), grid_scales(grid.sigmas[level + 1], z))
    return z


def distillation_target(z: torch.Tensor, z_end: torch.Tensor, level: Scales, end_level: Scales) -> torch.Tensor:
    """x̃ = (z_t'' - (σ_t''/σ_t) z_t) / (α_t'' - (σ_t''/σ_t) α_t) (Algorithm 2): the x̂_0 whose one DDIM step from
    z_t lands on the teacher's z_t''. The denominator is σ_t'' (α_t''/σ_t'' - α_t/σ_t) > 0, SNR rising as t
    falls (and 1 where the grid ends on x_0, σ_t'' = 0: x̃ is then the teacher's x_0 itself)."""
    (signal, sigma), (end_signal, end_sigma) = level, end_level
    ratio = end_sigma / sigma
    return (z_end - ratio * z) / (end_signal - ratio * signal)


def truncated_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """The weight max(SNR_t, 1) of ||x̂_0 - x̃||² (Salimans & Ho 2022, §4, "truncated SNR"), SNR = α²/σ² = 1/σ² of
    the grid's σ, float64 [B]: the ε-loss where the signal dominates, the x-loss at high noise, where a weight of
    SNR would leave the steps from pure noise, the ones a few-step student depends on most, unlearned."""
    return (torch.as_tensor(sigmas, dtype=torch.float64) ** -2).clamp(min=1)


# -- the teacher --------------------------------------------------------------------------------------------------
@dataclass
class Networks:
    """A model folder's networks, float32 on the CPU, and its config."""

    unet: UNet
    vae: AutoencoderKL
    text_encoder: nn.Module
    tokenizer: Tokenizer
    config: dict


def load_networks(folder: Path, config: dict | None = None) -> Networks:
    config = read_config(folder) if config is None else config
    components = load_components(folder, "cpu", config)
    return Networks(components["unet"], components["vae"], components["text_encoder"],
                    tokenizer_from_config(folder, config), config)


def load_teacher(name_or_path: str) -> tuple[Path, Networks]:
    """The folder of the model to distil, made absolute, and its networks: one of our latent text-to-image models."""
    folder = resolve_model(name_or_path)
    config = read_config(folder)
    require_diffusion_model(config, folder)
    if "text_encoder" not in config:
        raise UserError(f"{str(name_or_path)!r} is an unconditional model: distillation folds classifier-free "
                        "guidance into its students, which takes a text-to-image model")
    if "vae" not in config:
        raise UserError(f"{str(name_or_path)!r} works on pixels: distillation takes a latent model (a pixel model's "
                        "samplers clip x̂_0 at every step, which a student's one step cannot stand in for)")
    return folder.resolve(), load_networks(folder, config)


def guidance_scales(config: dict, cfg: float | None, name: str, start_steps: int) -> tuple[float, float]:
    """(the scale the first teacher is guided at, the scale its students have in their networks): `cfg`, else the
    teacher's default; a teacher distilled already has its own in its network, and is guided at 1 only, and it
    teaches a first student of half its own steps (its grid is the one it was trained for)."""
    if "distillation" in config:
        folded, steps = config["distillation"]["guidance_scale"], config["distillation"]["steps"]
        if cfg not in (None, 1):
            raise UserError(f"{name!r} is distilled already, with guidance {folded:g} in its network: distil it "
                            "further at cfg 1 (leave cfg out)")
        if 2 * start_steps != steps:
            raise UserError(f"{name!r} is a student of {steps} steps: it teaches students of {steps // 2} "
                            f"(--distill-start-steps {steps // 2}), not {start_steps}")
        return 1.0, folded
    w = InferenceSettings.from_dict(config.get("inference", {})).cfg if cfg is None else cfg
    return w, w


# -- the run ------------------------------------------------------------------------------------------------------
def is_distillation_run(out_dir: str | Path) -> bool:
    """Whether the run folder holds a distillation run (its saved settings name its teacher)."""
    return "teacher" in read_run_config(Path(out_dir)).get("train", {})


def distill(config: DistillConfig, out_dir: str | Path) -> TrainResult:
    """Distil the model `config.teacher` on the captioned images `config.data` into the new run folder `out_dir`."""
    out = Path(out_dir)
    if restarted(out):  # torchrun restarted the group after a failure: go on from the last checkpoint
        return resume(out)
    world, device = join(config.device)
    world.on_main(lambda: check_new_run(out))
    folder, teacher = load_teacher(config.teacher)
    size = teacher.config["image_size"]
    if config.image_size not in (None, size):
        raise UserError(f"image_size is the teacher's, {size}: leave it out")
    applied, folded = guidance_scales(teacher.config, config.cfg, config.teacher, config.start_steps)
    config = dataclasses.replace(config, teacher=str(folder), cfg=applied, image_size=size)
    distillation_grids(diffusion_from_config(teacher.config), config, timestep_convention(teacher.config))
    dataset = load_dataset(config.data, config.image_size, "train", captioned=True)
    with main_locks(out, world, new=True):
        return run(out, config, teacher, folded, dataset, device, world, resumed=False)


def resume(out_dir: str | Path, **changes) -> TrainResult:
    """Continue the distillation run in `out_dir` from its last checkpoint, with its own settings but for `changes`
    (among `DistillConfig.RESUME_CHANGES`). It needs nothing but its folder: the frozen networks are the run's
    model's, the teacher and the student its checkpoint's."""
    out = Path(out_dir)
    saved = read_run_config(out)  # the current checkpoint's, complete: read before the lock to know the device
    if "teacher" not in saved.get("train", {}):
        raise UserError(f"{str(out)!r} is not a distillation run: resume it as the run it is")
    config = DistillConfig.resumed(saved["train"], changes)
    world, device = join(config.device)
    with main_locks(out, world):
        dataset = load_dataset(config.data, config.image_size, "train", captioned=True)
        return run(out, config, load_networks(out), saved["distillation"]["guidance_scale"], dataset, device, world,
                   resumed=True)


def run(out: Path, config: DistillConfig, base: Networks, folded: float, dataset, device: torch.device, world: World,
        resumed: bool) -> TrainResult:
    """Build the student, its EMA and its teacher (from the checkpoint if `resumed`) and hand the step to the loop;
    `folded` is the guidance scale the students have in their networks."""
    share = world.share(config.batch_size)
    micro = min(config.micro_batch_size or len(share), len(share))
    teacher, vae, text_encoder, tokenizer = base.unet, base.vae, base.text_encoder, base.tokenizer
    for network in (teacher, vae, text_encoder):
        network.requires_grad_(False).eval()
    frozen = parameter_count(teacher) + parameter_count(vae) + parameter_count(text_encoder)
    check_training_fits(teacher.config, config, vae, device, micro, frozen=frozen, loaded=device.type == "cpu")
    for network in (teacher, vae, text_encoder):
        network.to(device)
    trained = nn.ModuleDict({"unet": copy.deepcopy(teacher).requires_grad_(True)})
    ema = copy.deepcopy(trained).requires_grad_(False).eval()
    model = nn.ModuleDict({"unet": trained["unet"], "teacher": teacher})  # the checkpoint's raw weights

    weights = balance_weights(dataset, config.balance_by) if config.balance_by else None
    every_caption = sorted({"", *captions_of(dataset)})
    with main_first(world):  # rank 0 encodes the latents into the cache, the others read it
        dataset = latent_dataset(dataset, vae, out, config, device)
    diffusion = diffusion_from_config(base.config)
    convention = timestep_convention(base.config)
    grids = distillation_grids(diffusion, config, convention)
    # a U-Net that reads the padding's states too is given them, as generation does (`text.cache`)
    cache = TextConditionCache(text_encoder, tokenizer, teacher.config, text_encoder.config.max_length,
                               AUTOCAST.get(config.mixed_precision, torch.float32),
                               padded=not teacher.config.mask_context_padding)
    with main_first(world):  # all of them, in one order, whatever resumes or shares; rank 0 writes, the others read
        cache.encode_all(every_caption, out / "cache", progress=world.main)

    optimizer = adamw(trained.parameters(), config.lr, config.weight_decay)
    prompts = sample_prompts(config, True)
    state = restore(out, model, ema, {"optimizer": optimizer}) if resumed else new_state()
    scaler = grad_scaler(config, device, state)
    step = distill_step(config, diffusion, grids, share, micro, device, replicate(trained["unet"], world), teacher,
                        lambda captions: cache(captions, device), optimizer, trained, ema, scaler, vae)
    frozen = {"vae": vae, **({} if is_pretrained("text_encoder", base.config) else {"text_encoder": text_encoder})}
    published = {**ema, **frozen}

    def student_config(k: int, **extra) -> dict:
        """The config.json of the student that the steps before k made, of its round's steps."""
        steps = config.student_steps(config.round_of(max(k - 1, 0)))
        return versioned_config(**{name: base.config[name] for name in MODEL_SECTIONS if name in base.config},
                             image_size=config.image_size,
                             inference={"sampler": SAMPLER, "steps": steps, "spacing": SPACING, "cfg": 1.0},
                             distillation={"teacher": config.teacher, "guidance_scale": folded, "steps": steps,
                                           "spacing": SPACING},
                             train=dataclasses.asdict(config), **extra)

    def model_files(folder: Path) -> list[str]:
        """The tokenizer's files, beside the networks."""
        before = set(os.listdir(folder))
        tokenizer.save(folder)
        return sorted(set(os.listdir(folder)) - before)

    def save(state: dict) -> None:
        save_checkpoint(out, {**state, **scaler_state(scaler)}, model, published,
                        {"optimizer": optimizer}, student_config(state["step"]), model_files)

    def keep(k: int, seconds: float) -> None:  # a round ended: its student is a model of its own
        steps = config.student_steps(config.round_of(k - 1))
        save_model_folder(student_folder(out, steps), published,
                          student_config(k, step=k, seconds=round(seconds, 2)), model_files,
                          f"the student of {steps} steps")

    def sample(k: int) -> None:
        save_sample_grid(out / "samples" / f"step_{k:06d}.png", ema["unet"], diffusion, prompts, config.image_size,
                         config.seed, k, text_encoder, tokenizer, vae, convention,
                         steps=config.student_steps(config.round_of(k - 1)), spacing=SPACING, cfg=1.0)

    hooks = Hooks(save, sample, keep=keep, keep_every=config.steps_per_round)
    trained.train()
    with leaving(world):
        return run_steps(step, dataset, config, out, state, hooks, columns=("loss",), device=device, weights=weights,
                         desc="distil", world=world)


@torch.no_grad()
def next_round(teacher: UNet, trained: nn.ModuleDict, ema: nn.ModuleDict, optimizer: torch.optim.Optimizer) -> None:
    """A round ended: its student's EMA becomes the teacher and the new student; the optimizer starts afresh."""
    finished = ema["unet"].state_dict()
    teacher.load_state_dict(finished)
    trained["unet"].load_state_dict(finished)
    optimizer.state.clear()


def distill_step(config: DistillConfig, diffusion: Diffusion, grids: list[tuple[Grid, Grid]], share: range,
                 micro: int, device: torch.device, student: nn.Module, teacher: UNet, condition,
                 optimizer: torch.optim.Optimizer, trained: nn.ModuleDict, ema: nn.ModuleDict,
                 scaler: torch.amp.GradScaler, vae: AutoencoderKL) -> StepFn:
    """The step of a distillation run: on this process's share of step k's examples, each at a level i of its
    round's student grid drawn from its own generator, z_t = α_t x + σ_t ε; the teacher's two steps from z_t (guided
    in the first round) give x̃ (`distillation_target`), onto which the student's x̂_0(z_t, t) regresses, weighted by
    max(SNR, 1); one gradient step of `trained` and the update of its average `ema`. `student` is the network the
    step calls (replicated across processes when there are several), `condition(captions)` the U-Net's keyword
    arguments of a batch's captions."""
    per_round = dataclasses.replace(config, max_steps=config.steps_per_round)  # its warm-up and cooldown
    precision = AUTOCAST.get(config.mixed_precision, torch.float32)

    def step(batch, k: int) -> dict[str, torch.Tensor]:
        r, j = divmod(k, config.steps_per_round)
        if j == 0 and r > 0:
            next_round(teacher, trained, ema, optimizer)
        grid, teacher_grid = grids[r]
        guided = r == 0 and config.cfg != 1
        x0, captions, generators = step_examples(batch, k, config, share, device, True, vae)
        i = randint(len(grid), generators)
        noise = randn(x0.shape, generators).to(x0)

        def loss_of(part: slice) -> dict[str, torch.Tensor]:
            n, at = part.stop - part.start, i[part]
            cond = condition(captions[part] + [""] * n if guided else captions[part])  # one padding for both
            guidance = Guidance({key: value[n:] for key, value in cond.items()}, config.cfg) if guided else None
            cond = {key: value[:n] for key, value in cond.items()}
            level, end_level = grid_scales(grid.sigmas[at], x0), grid_scales(grid.sigmas[at + 1], x0)
            z = level[0] * x0[part] + level[1] * noise[part]
            with torch.autocast(device.type, precision, enabled=config.mixed_precision in AUTOCAST):
                with torch.no_grad():
                    eps_fn = noise_predictor(teacher, diffusion, cond, guidance, clip=False)
                    target = distillation_target(z, teacher_steps(eps_fn, z, at, teacher_grid), level, end_level)
                x0_hat = diffusion.model_x0(student, z, grid.timesteps[at], **cond)
            error = mean_flat((x0_hat.float() - target.float()) ** 2)
            return {"loss": (truncated_snr(grid.sigmas[at]).to(error) * error).mean()}

        optimizer.zero_grad(set_to_none=True)
        losses = accumulate(loss_of, len(share), micro, [student], scaler.scale)
        apply_gradients(optimizer, trained.parameters(), scheduled_lr(j, per_round), config.grad_clip, scaler)
        update_ema(ema, trained, ema_decay_at(j, config.ema_decay))
        return losses

    return step
