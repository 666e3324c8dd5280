"""Training the autoencoder of latent diffusion (Rombach et al. 2022, §3.1).

The loss of an image x with posterior q(z | x) and reconstruction x̂ = D(z), z ~ q(z | x):

    L = rec(x, x̂) + β · KL(q(z | x) ‖ N(0, I)) / (C·H·W)   [+ λ · adversarial(x̂)]

rec is the L1 or squared error per pixel; the KL is per image, so dividing it by the pixel
count makes β the weight SD's autoencoders give the KL against per-image sums (1e-6
there). With `disc_weight` > 0 a patch discriminator joins in at `disc_start`, trained on
the hinge loss. The run folder (see `training.run_folder`) holds the EMA autoencoder as its
model, with the scaling factor measured on training latents; `samples/` shows originals
over reconstructions of test images.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import folder_config
from ..data import load_dataset
from ..devices import resolve_device
from ..errors import UserError
from ..guards import vae_feature_bytes
from ..memory import check_fits
from ..models.discriminator import (DiscriminatorConfig, PatchDiscriminator, generator_loss,
                                    hinge_discriminator_loss)
from ..models.vae import AutoencoderKL, VAEConfig
from .batches import step_seed
from .config import STEPS, RunConfig, check_image_size
from .loop import Hooks, TrainResult, run_steps
from .optimization import ema_decay_at, gradient_step, scheduled_lr, update_ema
from .run_folder import check_new_run, lock_run, new_state, read_run_config, restore, save_checkpoint
from .samples import save_reconstructions

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

    RANGES = {**RunConfig.RANGES, "kl_weight": (0.0, 1e6), "disc_weight": (0.0, 1e6), "disc_start": (0, STEPS[1])}

    def __post_init__(self):
        super().__post_init__()
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise UserError(f"unknown reconstruction loss {self.reconstruction!r}; choose one of: "
                            f"{', '.join(RECONSTRUCTION_LOSSES)}")


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


def train_vae(vae_config: VAEConfig, config: VAETrainConfig, out_dir: str | Path) -> TrainResult:
    """Train an autoencoder on `config.data` into the new run folder `out_dir`."""
    check_new_run(out_dir)
    out = Path(out_dir)
    factor = vae_config.downsample_factor
    check_image_size(config.image_size, factor, f"the autoencoder downsamples by {factor}")
    with lock_run(out, new=True):
        return run(out, vae_config, config, resumed=False)


def resume_vae(out_dir: str | Path, **changes) -> TrainResult:
    """Continue the autoencoder run in `out_dir` from its last checkpoint, with its own settings
    but for `changes` (among `VAETrainConfig.RESUME_CHANGES`); any other change is refused."""
    out = Path(out_dir)
    with lock_run(out):
        saved = read_run_config(out)
        if "vae" not in saved or "train" not in saved or "unet" in saved:
            raise UserError(f"{str(out)!r} is not an autoencoder training run: resume it as the run it is")
        return run(out, VAEConfig.from_dict(saved["vae"]), VAETrainConfig.resumed(saved["train"], changes),
                   resumed=True)


def run(out: Path, vae_config: VAEConfig, config: VAETrainConfig, resumed: bool) -> TrainResult:
    """Build the networks of a run (from its checkpoint if `resumed`) and hand its step to the loop."""
    device = resolve_device(config.device)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoencoderKL(vae_config).parameters())
    # as for the U-Net (`diffusion.check_training_fits`): five copies of the weights, and the encoder's
    # and the decoder's maps kept for the backward pass
    check_fits(20 * parameters + 8 * vae_feature_bytes(vae_config, config.batch_size, config.image_size,
                                                      config.image_size),
               f"training a {parameters / 1e6:.1f}M-parameter autoencoder on batches of {config.batch_size} at "
               f"{config.image_size}×{config.image_size}", "lower batch_size or image_size, or the channels", device)
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
    state = restore(out, model, {"vae": ema}, optimizers) if resumed else new_state()
    pixels = vae_config.in_channels * config.image_size**2

    def step(x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """The autoencoder's loss on the batch of step k and a gradient step on it; from
        `disc_start` on, the adversarial term and the discriminator's own step; the EMA update."""
        x = x.to(device, non_blocking=True)
        generator = torch.Generator().manual_seed(step_seed(config.seed, k))
        lr = scheduled_lr(k, config)
        x_hat, posterior = vae(x, generator)
        losses = {"reconstruction": reconstruction_error(x, x_hat, config.reconstruction),
                  "kl": posterior.kl().mean() / pixels}
        loss = losses["reconstruction"] + config.kl_weight * losses["kl"]
        gan_on = adversarial and k >= config.disc_start
        if gan_on:
            losses["generator"] = generator_loss(model["discriminator"](x_hat))
            loss = loss + config.disc_weight * losses["generator"]
        gradient_step(optimizers["optimizer"], loss, vae.parameters(), lr, config.grad_clip)
        if gan_on:
            disc = model["discriminator"]
            losses["discriminator"] = hinge_discriminator_loss(disc(x), disc(x_hat.detach()))
            gradient_step(optimizers["discriminator_optimizer"], losses["discriminator"], disc.parameters(), lr,
                          config.grad_clip)
        update_ema(ema, vae, ema_decay_at(k, config.ema_decay))
        return losses

    def save(k: int, seconds: float) -> None:
        ema.config.scaling_factor = measure_scaling_factor(ema, dataset, seed=config.seed)
        save_checkpoint(out, {"step": k, "seconds": seconds}, model, {"vae": ema}, optimizers,
                        folder_config(vae=ema.config.to_dict(), image_size=config.image_size,
                                      train=dataclasses.asdict(config)))

    def sample(k: int) -> None:
        save_reconstructions(out / "samples" / f"step_{k:06d}.png", ema, shown, k)

    model.train()
    columns = ("reconstruction", "kl", *(("generator", "discriminator") if adversarial else ()))
    return run_steps(step, dataset, config, out, state, Hooks(save, sample), columns=columns, device=device,
                     desc="train-vae", title="autoencoder training loss")
