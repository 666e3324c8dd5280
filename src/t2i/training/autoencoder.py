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
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import versioned_config
from ..data import load_dataset
from ..errors import UserError
from ..guards import vae_feature_bytes
from ..memory import check_fits
from ..models.layers import parameter_count
from ..models.discriminator import (DiscriminatorConfig, PatchDiscriminator, generator_loss,
                                    hinge_discriminator_loss)
from ..models.vae import AutoencoderKL, VAEConfig
from .batches import example_generators
from .config import STEPS, RunConfig, check_image_size
from .loop import Hooks, TrainResult, run_steps
from .distributed import World, accumulate, join, leaving, main_locks, replicate, restarted
from .optimization import adamw, apply_gradients, ema_decay_at, gradient_step, scheduled_lr, update_ema
from .run_folder import check_new_run, new_state, read_run_config, restore, save_checkpoint
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
    out = Path(out_dir)
    if restarted(out):  # torchrun restarted the group after a failure: go on from the last checkpoint
        return resume_vae(out)
    world, device = join(config.device)
    world.on_main(lambda: check_new_run(out))
    factor = vae_config.downsample_factor
    check_image_size(config.image_size, factor, f"the autoencoder downsamples by {factor}")
    with main_locks(out, world, new=True):
        return run(out, vae_config, config, world, device, resumed=False)


def resume_vae(out_dir: str | Path, **changes) -> TrainResult:
    """Continue the autoencoder run in `out_dir` from its last checkpoint, with its own settings
    but for `changes` (among `VAETrainConfig.RESUME_CHANGES`); any other change is refused."""
    out = Path(out_dir)
    saved = read_run_config(out)  # the current checkpoint's, complete: read before the lock to know the device
    if "unet" in saved:
        raise UserError(f"{str(out)!r} is a diffusion run: resume it with t2i train --out {out} --resume")
    if "vae" not in saved or "train" not in saved:
        raise UserError(f"{str(out)!r} is not an autoencoder training run: resume it as the run it is")
    config = VAETrainConfig.resumed(saved["train"], changes)
    world, device = join(config.device)
    with main_locks(out, world):
        return run(out, VAEConfig.from_dict(saved["vae"]), config, world, device, resumed=True)


def run(out: Path, vae_config: VAEConfig, config: VAETrainConfig, world: World, device: torch.device,
        resumed: bool) -> TrainResult:
    """Build the networks of a run (from its checkpoint if `resumed`) and hand its step to the loop."""
    share = world.share(config.batch_size)
    micro = min(config.micro_batch_size or len(share), len(share))
    adversarial = config.disc_weight > 0
    if adversarial and (world.distributed or micro < len(share)):
        raise UserError("an adversarial autoencoder run (disc_weight > 0) trains in one process on whole batches: "
                        "run it without torchrun and without micro_batch_size")
    with torch.device("meta"):
        parameters = parameter_count(AutoencoderKL(vae_config))
    # as for the U-Net (`diffusion.check_training_fits`): five copies of the weights, and the encoder's
    # and the decoder's maps kept for the backward pass
    check_fits(20 * parameters + 8 * vae_feature_bytes(vae_config, micro, config.image_size, config.image_size),
               f"training a {parameters / 1e6:.1f}M-parameter autoencoder on micro-batches of {micro} at "
               f"{config.image_size}×{config.image_size}", "lower micro_batch_size or image_size, or the channels",
               device)
    dataset = load_dataset(config.data, config.image_size, "train")
    try:  # the reconstructions shown are of held-out images, or of training ones where there are none
        test = load_dataset(config.data, config.image_size, "test")
    except UserError as error:
        warnings.warn(f"the sample grids show training images: {error}", stacklevel=2)
        test = dataset
    shown = torch.stack([test[i] for i in range(min(config.num_samples, len(test)))])

    torch.manual_seed(config.seed)
    model = torch.nn.ModuleDict({"vae": AutoencoderKL(vae_config)})
    if adversarial:
        model["discriminator"] = PatchDiscriminator(DiscriminatorConfig(in_channels=vae_config.in_channels))
    model.to(device)
    vae = model["vae"]
    ema = copy.deepcopy(vae).requires_grad_(False).eval()
    optimizers = {"optimizer": adamw(vae.parameters(), config.lr, betas=(0.5, 0.9))}
    if adversarial:
        optimizers["discriminator_optimizer"] = adamw(model["discriminator"].parameters(), config.lr, betas=(0.5, 0.9))
    state = restore(out, model, {"vae": ema}, optimizers) if resumed else new_state()
    pixels = vae_config.in_channels * config.image_size**2

    replica = replicate(vae, world)

    def step(x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """The autoencoder's loss on this process's share of step k's batch (in micro-batches) and a gradient
        step on it; from `disc_start` on, the adversarial term and the discriminator's own step; the EMA."""
        x = x.to(device, non_blocking=True)
        generators = example_generators(config.seed, k, share)  # each example's posterior sample its own
        lr = scheduled_lr(k, config)
        gan_on = adversarial and k >= config.disc_start
        reconstructions = []

        def loss_of(part: slice) -> dict[str, torch.Tensor]:
            x_hat, posterior = replica(x[part], generators[part])
            reconstructions.append(x_hat)
            losses = {"reconstruction": reconstruction_error(x[part], x_hat, config.reconstruction),
                      "kl": posterior.kl().mean() / pixels}
            loss = losses["reconstruction"] + config.kl_weight * losses["kl"]
            if gan_on:
                losses["generator"] = generator_loss(model["discriminator"](x_hat))
                loss = loss + config.disc_weight * losses["generator"]
            return {"loss": loss, **losses}

        optimizers["optimizer"].zero_grad(set_to_none=True)
        losses = accumulate(loss_of, len(share), micro, [replica])
        apply_gradients(optimizers["optimizer"], vae.parameters(), lr, config.grad_clip)
        if gan_on:  # whole batches only (refused above otherwise): the one reconstruction is the batch's
            disc = model["discriminator"]
            losses["discriminator"] = hinge_discriminator_loss(disc(x), disc(reconstructions[0].detach()))
            gradient_step(optimizers["discriminator_optimizer"], losses["discriminator"], disc.parameters(), lr,
                          config.grad_clip)
        update_ema(ema, vae, ema_decay_at(k, config.ema_decay))
        return {name: value for name, value in losses.items() if name != "loss"}

    def save(state: dict) -> None:
        ema.config.scaling_factor = measure_scaling_factor(ema, dataset, seed=config.seed)
        save_checkpoint(out, state, model, {"vae": ema}, optimizers,
                        versioned_config(vae=ema.config.to_dict(), image_size=config.image_size,
                                      train=dataclasses.asdict(config)))

    def sample(k: int) -> None:
        save_reconstructions(out / "samples" / f"step_{k:06d}.png", ema, shown, k)

    model.train()
    columns = ("reconstruction", "kl", *(("generator", "discriminator") if adversarial else ()))
    with leaving(world):
        return run_steps(step, dataset, config, out, state, Hooks(save, sample), columns=columns, device=device,
                        desc="train-vae", title="autoencoder training loss", world=world)
