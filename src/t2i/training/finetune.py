"""Fine-tuning Stable Diffusion on captioned images (`t2i train --init MODEL`): the U-Net whole, or LoRA.

From an SD v1 or 2.x model (a single file, a diffusers folder, or one of our folders that holds one) a
run trains on a captioned folder, the layout of diffusers' train_text_to_image, at the model's image
size unless told otherwise:
- the whole U-Net, the VAE and the text encoder frozen. The run folder is then one of our model folders
  (the fine-tuned U-Net's EMA, the base's VAE, text encoder and tokenizer);
- or, with `lora_rank` r, low-rank adapters (Hu et al. 2021; `models.lora.LowRankAdapters`) on the Q, K, V
  and output projections of the U-Net's attentions, and of the text encoder's with `lora_text_encoder`,
  the base frozen. The run folder holds the adapters' EMA as a LoRA file in kohya's layout
  (`lora.safetensors`, what AUTOMATIC1111 and ComfyUI read) and in diffusers' (`pytorch_lora_weights.
  safetensors`, for `load_lora_weights`), and a config.json whose `lora` section names the base, so that
  loading the folder loads the base with the LoRA applied.

The step is a diffusion run's (`training.diffusion.diffusion_step`): L_simple on the base's schedule and
prediction (ε or v), on latents the frozen VAE encodes once (`training.datasets.latent_dataset`), with a
frozen text encoder's states cached (`text.cache`) as SD's U-Net reads them: all the padded prompt's
tokens. The EMA, mixed precision, torchrun and exact resume are every diffusion run's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..checkpoints import diffusion_from_config, versioned_config, timestep_convention
from ..convert import unet_names
from ..convert.lora_names import FOLDER_FILES, save_lora
from ..convert.stable_diffusion import load_sd_model
from ..data import ImageFolder, captions_of, load_dataset
from ..errors import UserError
from ..folder_config import LORA_FILE
from ..models.layers import parameter_count
from ..models.lora import LoRA, LoRAStack, LowRankAdapters, attention_projections
from ..models.unet import UNet
from ..models.vae import AutoencoderKL
from ..text.cache import TextConditionCache
from ..text.clip import CLIPTextTransformer
from ..text.clip_bpe import CLIPTokenizer
from ..text.condition import text_condition
from .config import check_image_size
from .datasets import balance_weights, latent_dataset
from .diffusion import (AUTOCAST, DiffusionTrainingConfig, check_training_fits, diffusion_step, grad_scaler, probe_hook,
                        run_probes, scaler_state)
from .distributed import World, join, leaving, main_first, main_locks, replicate, restarted
from .loop import Hooks, TrainResult, run_steps
from .optimization import adamw
from .run_folder import check_new_run, new_state, read_run_config, restore, save_checkpoint, save_snapshot
from .samples import sample_prompts, save_sample_grid

NETWORKS = ("unet", "vae", "text_encoder")
MODEL_SECTIONS = (*NETWORKS, "tokenizer", "diffusion", "inference")  # what a run keeps of its base's config.json
TRAINED, AVERAGED = "trained", "ema"  # the adapters' two LoRAs: the raw ones the steps train, and their EMA


@dataclass
class FinetuneConfig(DiffusionTrainingConfig):
    """Everything a fine-tuning run depends on besides its base model; saved in config.json. The defaults
    are fine-tuning's: batches of 8 at lr 1e-4 (LoRA's; the whole U-Net wants about 1e-5), 2000 steps."""

    init: str = ""  # the model fine-tuned: an SD file or folder (made absolute when the run starts)
    image_size: int | None = None  # None: the model's
    batch_size: int = 8
    max_steps: int = 2000
    lr: float = 1e-4
    warmup_steps: int = 100
    save_every: int = 500
    sample_every: int = 500
    num_samples: int = 4
    probe_examples: int = 64
    lora_rank: int | None = None  # None: the whole U-Net
    lora_alpha: float | None = None  # None: the rank, ΔW = B·A
    lora_text_encoder: bool = False
    gradient_checkpointing: bool = False

    # and gradient checkpointing, which changes the memory, not the gradients
    RESUME_CHANGES = DiffusionTrainingConfig.RESUME_CHANGES + ("gradient_checkpointing",)
    RANGES = {**DiffusionTrainingConfig.RANGES, "lora_rank": (1, 65536), "lora_alpha": (0.0, 1e6, "above")}

    def __post_init__(self):
        super().__post_init__()
        if not self.init.strip():
            raise UserError("init is empty: name the Stable Diffusion model to fine-tune")
        if self.lora_rank is None and (self.lora_alpha is not None or self.lora_text_encoder):
            raise UserError("lora_alpha and lora_text_encoder are settings of a LoRA: give lora_rank too")


@dataclass
class BaseModel:
    """The model a run starts from: its networks (float32, on the CPU), its folder config and tokenizer."""

    unet: UNet
    vae: AutoencoderKL
    text_encoder: CLIPTextTransformer
    config: dict
    tokenizer: CLIPTokenizer


class Adapted(nn.Module):
    """A frozen network and the adapters that hooks add to its layers, as one module: what
    `distributed.replicate` wraps, so that DDP averages the adapters' gradients, which are not the
    network's parameters."""

    def __init__(self, network: nn.Module, adapters: nn.Module):
        super().__init__()
        self.network, self.adapters = network, adapters

    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)


def load_base(path: str | Path) -> BaseModel:
    """The SD v1 or 2.x model at `path` (`convert.stable_diffusion.load_sd_model`), in float32; refused
    unless its U-Net has SD's layout, which the LoRA files name."""
    networks, config, tokenizer = load_sd_model(path, torch.float32)
    try:
        unet_names.foreign_names(networks["unet"].config, "diffusers")
    except UserError:
        raise UserError(f"{str(path)!r} is not a Stable Diffusion model: its U-Net is not of SD's layout") from None
    return BaseModel(networks["unet"], networks["vae"], networks["text_encoder"], config, tokenizer)


def is_finetuning_run(out_dir: str | Path) -> bool:
    """Whether the run folder holds a fine-tuning run (its saved settings name the model it started from)."""
    return "init" in read_run_config(Path(out_dir)).get("train", {})


def training_images(config: FinetuneConfig, base: BaseModel):
    """The captioned training split at `config.image_size`, which the networks must divide and which no
    image of a folder may be smaller than (training would blow it up)."""
    f, u = base.vae.config.downsample_factor, base.unet.config.downsample_factor
    check_image_size(config.image_size, f * u, f"the autoencoder downsamples by {f} and the U-Net by {u}")
    dataset = load_dataset(config.data, config.image_size, "train", captioned=True)
    if isinstance(dataset, ImageFolder):
        sizes = dataset.sizes()
        small = [(path, size) for path, size in zip(dataset.files, sizes) if size and min(size) < config.image_size]
        if small:
            path, (width, height) = small[0]
            raise UserError(f"{len(small)} of the {len(sizes)} training images in {config.data!r} are smaller than "
                            f"{config.image_size}×{config.image_size}, e.g. {str(path)!r} ({width}×{height}): lower "
                            "image_size, or leave them out")
    return dataset


def finetune(config: FinetuneConfig, out_dir: str | Path) -> TrainResult:
    """Fine-tune the SD model `config.init` on `config.data` into the new run folder `out_dir`: the whole
    U-Net, or LoRA adapters with `config.lora_rank`."""
    out = Path(out_dir)
    if restarted(out):  # torchrun restarted the group after a failure: go on from the last checkpoint
        return resume(out)
    world, device = join(config.device)
    world.on_main(lambda: check_new_run(out))
    base = load_base(config.init)
    config = dataclasses.replace(config, init=str(Path(config.init).resolve()),
                                 image_size=config.image_size or base.config["image_size"])
    dataset = training_images(config, base)
    with main_locks(out, world, new=True):
        return run(out, config, base, dataset, device, world, resumed=False)


def resume(out_dir: str | Path, **changes) -> TrainResult:
    """Continue the fine-tuning run in `out_dir` from its last checkpoint, with its own settings but for
    `changes` (among `FinetuneConfig.RESUME_CHANGES`). A LoRA run reads its base again, which must be the
    model it started from; a run of the whole U-Net reads its own folder."""
    out = Path(out_dir)
    saved = read_run_config(out)  # the current checkpoint's, complete: read before the lock to know the device
    if "init" not in saved.get("train", {}):
        raise UserError(f"{str(out)!r} is not a fine-tuning run: resume it as the run it is")
    config = FinetuneConfig.resumed(saved["train"], changes)
    world, device = join(config.device)
    with main_locks(out, world):
        base = load_base(config.init if config.lora_rank else out)
        changed = [name for name in (*NETWORKS, "diffusion")
                   if json.loads(json.dumps(base.config[name])) != saved[name]]  # tuples as JSON lists
        if changed:
            raise UserError(f"{config.init!r} is not the model this run started from (its {', '.join(changed)} "
                            "differ): put that model back where it was")
        return run(out, config, base, training_images(config, base), device, world, resumed=True)


def lora_targets(unet: UNet, text_encoder: CLIPTextTransformer | None) -> dict[str, list[str]]:
    """The layers a LoRA adapts: the attention projections of the U-Net, and of the text encoder if given
    (those of the blocks it uses: SD 2's files keep a last block that is never run)."""
    targets = {"unet": attention_projections(unet)}
    if text_encoder is not None:
        used = text_encoder.config.layers - text_encoder.config.skip_layers
        targets["text_encoder"] = attention_projections(text_encoder, [f"blocks.{i}" for i in range(used)])
    return targets


@contextlib.contextmanager
def averaged(stack: LoRAStack) -> Iterator[None]:
    """The adapters' EMA applied instead of the raw adapters (to draw samples)."""
    stack.set_scale(TRAINED, 0.0)
    stack.set_scale(AVERAGED, 1.0)
    try:
        yield
    finally:
        stack.set_scale(AVERAGED, 0.0)
        stack.set_scale(TRAINED, 1.0)


def run(out: Path, config: FinetuneConfig, base: BaseModel, dataset, device: torch.device, world: World,
        resumed: bool) -> TrainResult:
    """Build the trained parameters of a run (from its checkpoint if `resumed`) and hand its step to the loop."""
    share = world.share(config.batch_size)
    micro = min(config.micro_batch_size or len(share), len(share))
    unet, vae, text_encoder, tokenizer = base.unet, base.vae, base.text_encoder, base.tokenizer
    for network in (unet, vae, text_encoder):
        network.requires_grad_(False).eval()
    networks = {"unet": unet, "text_encoder": text_encoder}
    lora = config.lora_rank is not None
    torch.manual_seed(config.seed)  # the adapters' A
    adapters = LowRankAdapters(networks, lora_targets(unet, text_encoder if config.lora_text_encoder else None),
                               config.lora_rank, config.lora_alpha or config.lora_rank) if lora else None
    check_training_fits(unet.config, config, vae, device, micro, parameter_count(adapters) if lora else None,
                        parameter_count(vae) + parameter_count(text_encoder), loaded=device.type == "cpu",
                        checkpointing=config.gradient_checkpointing)
    for network in (unet, vae, text_encoder):
        network.to(device)
    unet.gradient_checkpointing = config.gradient_checkpointing
    if lora:
        trained = adapters.to(device)
        ema = copy.deepcopy(adapters).requires_grad_(False)
        # the checkpoint's raw weights hold both; what it publishes of the EMA is the LoRA files
        model = nn.ModuleDict({"adapters": adapters, "ema": ema})
        stack = LoRAStack(networks)
        stack.add(LoRA(TRAINED, adapters.updates()))
        stack.add(LoRA(AVERAGED, ema.updates(), scale=0.0))
    else:
        stack = None
        model = trained = nn.ModuleDict({"unet": unet.requires_grad_(True)})
        ema = copy.deepcopy(model).requires_grad_(False).eval()

    weights = balance_weights(dataset, config.balance_by) if config.balance_by else None
    every_caption = sorted({"", *captions_of(dataset)})
    with main_first(world):  # rank 0 encodes the latents into the cache, the others read it
        dataset = latent_dataset(dataset, vae, out, config, device)
    diffusion = diffusion_from_config(base.config)
    run_config = versioned_config(**{name: base.config[name] for name in MODEL_SECTIONS if name in base.config},
                               image_size=config.image_size, train=dataclasses.asdict(config),
                               **({"lora": {"base": config.init}} if lora else {}))

    # what the step calls: the U-Net (and a text encoder with adapters) with what trains in it, replicated
    # across processes (DDP) when there are several
    replicas = [replicate(Adapted(unet, adapters["unet"]) if lora else unet, world)]
    if lora and config.lora_text_encoder:
        replicas.append(replicate(Adapted(text_encoder, adapters["text_encoder"]), world))

        def condition(captions: list[str], encode=None) -> dict[str, torch.Tensor]:
            ids = tokenizer(captions, text_encoder.config.max_length, truncate=True).to(device)
            return text_condition(text_encoder, ids, unet.config, encode)
    else:
        # kept in the precision the U-Net's projections read them in (autocast's), which loses nothing
        cache = TextConditionCache(text_encoder, tokenizer, unet.config, text_encoder.config.max_length,
                                   AUTOCAST.get(config.mixed_precision, torch.float32), padded=True)
        # all of them, in one order: the same states whatever resumes or shares; rank 0 writes them, the others read
        with main_first(world):
            cache.encode_all(every_caption, out / "cache", progress=world.main)

        def condition(captions: list[str], encode=None) -> dict[str, torch.Tensor]:
            return cache(captions, device)

    optimizer = adamw(trained.parameters(), config.lr, config.weight_decay)
    probes = run_probes(dataset, config, True, vae, diffusion, out, device, world)
    prompts = sample_prompts(config, True)
    state = restore(out, model, {} if lora else ema, {"optimizer": optimizer}) if resumed else new_state()
    scaler = grad_scaler(config, device, state)
    encoder = replicas[1] if len(replicas) > 1 else None
    step = diffusion_step(config, diffusion, share, micro, device, replicas,
                          lambda captions: condition(captions, encoder), optimizer, trained, ema, scaler, vae)
    frozen = {"vae": vae, "text_encoder": text_encoder}
    convention = timestep_convention(base.config)

    def model_files(folder: Path) -> list[str]:
        """A LoRA run's model: the EMA adapters in kohya's and diffusers' layouts; a whole U-Net's: the
        tokenizer's files, beside the networks."""
        if lora:
            updates = ema.updates()
            return [save_lora(updates, networks, folder / name, layout).name
                    for name, layout in ((LORA_FILE, "kohya"), (FOLDER_FILES[0], "diffusers"))]
        before = set(os.listdir(folder))
        tokenizer.save(folder)
        return sorted(set(os.listdir(folder)) - before)

    published = {} if lora else {**ema, **frozen}

    def save(state: dict) -> None:
        save_checkpoint(out, {**state, **scaler_state(scaler)}, model, published,
                        {"optimizer": optimizer}, run_config, model_files)

    def keep(k: int, seconds: float) -> None:
        save_snapshot(out, k, published, {**run_config, "step": k, "seconds": round(seconds, 2)}, model_files)

    def sample(k: int) -> None:
        with averaged(stack) if stack is not None else contextlib.nullcontext():
            save_sample_grid(out / "samples" / f"step_{k:06d}.png", unet if lora else ema["unet"], diffusion,
                             prompts, config.image_size, config.seed, k, text_encoder, tokenizer, vae, convention)

    hooks = Hooks(save, sample, probe=probe_hook(probes, diffusion, unet, condition, config, device, trained, micro),
                  probe_every=config.probe_every, keep=keep if config.keep_every else None,
                  keep_every=config.keep_every or 0)
    trained.train()
    with leaving(world):
        return run_steps(step, dataset, config, out, state, hooks, columns=("loss", *probes), device=device,
                        weights=weights, desc="fine-tune", world=world)
