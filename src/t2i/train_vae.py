"""Training the autoencoder of latent diffusion (Rombach et al. 2022, §3.1).

The loss of an image x with posterior q(z | x) and reconstruction x̂ = D(z), z ~ q(z | x):

    L = rec(x, x̂) + β · KL(q(z | x) ‖ N(0, I)) / (C·H·W)   [+ λ · adversarial(x̂)]

rec is the L1 or squared error per pixel; the KL is per image, so dividing it by the pixel
count makes β the weight SD's autoencoders give the KL against per-image sums (1e-6
there). With `disc_weight` > 0 a patch discriminator joins in at `disc_start`, trained on
the hinge loss. The run folder (see `t2i.runs`) holds the EMA autoencoder as its model,
with the scaling factor measured on training latents; `samples/` shows originals over
reconstructions of test images.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import folder_config, load_state, load_weights, read_config, weights_path
from .data import load_dataset
from .errors import UserError
from .images import make_grid, save_png
from .models.discriminator import (DiscriminatorConfig, PatchDiscriminator, generator_loss,
                                   hinge_discriminator_loss)
from .models.vae import AutoencoderKL, VAEConfig
from .devices import resolve_device
from .runs import (GracefulStop, LossLog, RunConfig, already_done, check_new_run, ema_decay_at, load_training_state,
                   optimize, save_checkpoint, scheduled_lr, step_loader, step_seed, update_ema)

RECONSTRUCTION_LOSSES = ("l1", "mse")
SCALE_IMAGES = 1024  # training images whose latents measure the scaling factor


@dataclass
class VAETrainConfig(RunConfig):
    """Everything an autoencoder run depends on besides the network; saved in config.json."""

    max_steps: int = 3000
    lr: float = 1e-3
    warmup_steps: int = 100
    save_every: int = 500
    sample_every: int = 500
    num_samples: int = 8
    reconstruction: str = "l1"
    kl_weight: float = 1e-4
    disc_weight: float = 0.0
    disc_start: int = 1000

    def __post_init__(self):
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise UserError(f"unknown reconstruction loss {self.reconstruction!r}; choose one of: "
                            f"{', '.join(RECONSTRUCTION_LOSSES)}")
        if self.kl_weight < 0 or self.disc_weight < 0:
            raise UserError("--kl-weight and --disc-weight cannot be negative")


def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    return F.l1_loss(x_hat, x) if kind == "l1" else F.mse_loss(x_hat, x)


@torch.no_grad()
def measure_scaling_factor(vae: AutoencoderKL, dataset, num_images: int = SCALE_IMAGES, batch_size: int = 256,
                           seed: int = 0) -> float:
    """1 / std of posterior samples z ~ q(z | x) over training images: the factor that gives
    the latents diffusion learns unit variance (how SD v1's 0.18215 was chosen)."""
    device = next(vae.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    count = min(num_images, len(dataset))
    samples = []
    for start in range(0, count, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        samples.append(vae.encode(torch.stack(items).to(device)).sample(generator).flatten())
    return 1.0 / torch.cat(samples).float().std().item()


@torch.no_grad()
def save_reconstructions(path: Path, vae: AutoencoderKL, images: torch.Tensor, step: int) -> None:
    """Originals (top row) over their reconstructions D(μ(x)) (bottom row)."""
    device = next(vae.parameters()).device
    reconstructed = vae.decode(vae.encode(images.to(device)).mean).clamp(-1, 1).cpu()
    save_png(make_grid(torch.cat([images, reconstructed]), ncols=len(images)), path,
             {"step": step, "rows": "originals, reconstructions"})


def train_vae(vae_config: VAEConfig, config: VAETrainConfig, out_dir: str | Path, resume: bool = False) -> Path:
    """Train an autoencoder on `config.data` and write the run folder `out_dir`."""
    out = Path(out_dir)
    if resume:
        saved = read_config(out)
        if "vae" not in saved or "train" not in saved:
            raise UserError(f"{str(out)!r} is not an autoencoder run: resume it with the command that made it")
        vae_config = VAEConfig.from_dict(saved["vae"])
        config = VAETrainConfig.from_dict({**saved["train"], "max_steps": config.max_steps})
    else:
        check_new_run(out)
    if config.image_size % vae_config.downsample_factor:
        raise UserError(f"--image-size {config.image_size} must be divisible by the autoencoder's factor "
                        f"{vae_config.downsample_factor}")
    device = resolve_device(config.device)
    dataset = load_dataset(config.data, config.image_size, "train")
    test = load_dataset(config.data, config.image_size, "test")
    shown = torch.stack([test[i] for i in range(min(config.num_samples, len(test)))])

    torch.manual_seed(config.seed)
    model = torch.nn.ModuleDict({"vae": AutoencoderKL(vae_config)})
    adversarial = config.disc_weight > 0
    if adversarial:
        model["discriminator"] = PatchDiscriminator(DiscriminatorConfig(in_channels=vae_config.in_channels))
    model.to(device)
    vae = model["vae"]
    ema = copy.deepcopy(vae).requires_grad_(False).eval()
    optimizers = {"optimizer": torch.optim.AdamW(vae.parameters(), lr=config.lr, betas=(0.5, 0.9))}
    if adversarial:
        optimizers["discriminator_optimizer"] = torch.optim.AdamW(model["discriminator"].parameters(), lr=config.lr,
                                                                  betas=(0.5, 0.9))
    state = {"step": 0, "seconds": 0.0}
    if resume:
        state = load_training_state(out, model, optimizers)
        load_state(ema, load_weights(weights_path(out, "vae")), out)

    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    start = state["step"]
    columns = ("reconstruction", "kl", *(("generator", "discriminator") if adversarial else ()))
    log = LossLog(out, columns, start)
    if already_done(out, start, config.max_steps):
        return out

    loader = step_loader(dataset, config, start, device)
    pixels = vae_config.in_channels * config.image_size**2
    model.train()
    step, window = start, {c: [] for c in columns}
    clock = time.perf_counter() - state["seconds"]
    bar = tqdm(total=config.max_steps, initial=start, desc="train-vae", dynamic_ncols=True)
    with GracefulStop() as stop:
        for x in loader:
            x = x.to(device, non_blocking=True)
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            lr = scheduled_lr(step, config)
            x_hat, posterior = vae(x, generator)
            losses = {"reconstruction": reconstruction_error(x, x_hat, config.reconstruction),
                      "kl": posterior.kl().mean() / pixels}
            loss = losses["reconstruction"] + config.kl_weight * losses["kl"]
            gan_on = adversarial and step >= config.disc_start
            if gan_on:
                losses["generator"] = generator_loss(model["discriminator"](x_hat))
                loss = loss + config.disc_weight * losses["generator"]
            if not torch.isfinite(loss):
                raise UserError(f"the loss became {loss.item()} at step {step}; the last checkpoint is intact: "
                                f"resume from it with a lower --lr (now {config.lr})")
            optimize(optimizers["optimizer"], loss, vae.parameters(), lr, config.grad_clip)
            if gan_on:
                disc = model["discriminator"]
                losses["discriminator"] = hinge_discriminator_loss(disc(x), disc(x_hat.detach()))
                optimize(optimizers["discriminator_optimizer"], losses["discriminator"], disc.parameters(), lr,
                         config.grad_clip)
            update_ema(ema, vae, ema_decay_at(step, config.ema_decay))
            step += 1
            for name, value in losses.items():
                window[name].append(value.item())
            bar.update(1)
            seconds = time.perf_counter() - clock
            if step % config.log_every == 0 or step == config.max_steps:
                means = {name: sum(v) / len(v) for name, v in window.items() if v}
                log.append(step, seconds, means)
                bar.set_postfix(rec=f"{means['reconstruction']:.4f}", kl=f"{means['kl']:.3g}")
                window = {c: [] for c in columns}
            if step % config.save_every == 0 or step == config.max_steps or stop.requested:
                ema.config.scaling_factor = measure_scaling_factor(ema, dataset, seed=config.seed)
                save_checkpoint(out, {"step": step, "seconds": seconds}, model, {"vae": ema}, optimizers,
                                folder_config(vae=ema.config.to_dict(), image_size=config.image_size,
                                              train=dataclasses.asdict(config)))
                log.write("autoencoder training loss")
            if step % config.sample_every == 0 or step == config.max_steps:
                sampling_started = time.perf_counter()
                save_reconstructions(out / "samples" / f"step_{step:06d}.png", ema, shown, step)
                clock += time.perf_counter() - sampling_started
            if stop.requested:
                bar.close()
                print(f"\nstopped at step {step}: checkpoint saved in {out}; continue with --resume")
                return out
    bar.close()
    return out

