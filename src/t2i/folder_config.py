"""A model folder's config.json checked whole, before anything is built from it.

The network sections (`unet`, `vae`, `text_encoder`) read through their own configs; the
`diffusion` and `inference` sections and the top-level values through the small configs below,
the `tokenizer` section through `text.tokenizers.TokenizerSettings`, all by the same typed reader
(`models.config.ModelConfig`); a run's `train` section must be an object (the training that resumes
the run reads it). Every error names the file, the section and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import MAX_SIDE
from .diffusion import PREDICTION_TYPES
from .errors import UserError
from .models.config import ModelConfig
from .models.unet import UNetConfig
from .models.vae import VAEConfig
from .sampling import MAX_GUIDANCE, MAX_STEPS
from .schedules import SCHEDULES, SPACINGS
from .text.bert import BertConfig
from .text.clip import TextEncoderConfig
from .text.tokenizers import TokenizerSettings


@dataclass
class DiffusionSettings(ModelConfig):
    """The `diffusion` section: the forward process the U-Net was trained on, and SD's timestep
    convention (`sampling.SamplerSettings`)."""

    schedule: str
    num_timesteps: int
    prediction_type: str = "epsilon"
    steps_offset: int = 0
    set_alpha_to_one: bool = True

    RANGES = {"num_timesteps": (2, 100_000), "steps_offset": (0, 1000)}

    def __post_init__(self):
        super().__post_init__()
        for name, value, known in (("schedule", self.schedule, SCHEDULES),
                                   ("prediction_type", self.prediction_type, PREDICTION_TYPES)):
            if value not in known:
                raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(known)}")
        if self.steps_offset >= self.num_timesteps:
            raise UserError(f"steps_offset {self.steps_offset} must be below num_timesteps {self.num_timesteps}")


@dataclass
class InferenceSettings(ModelConfig):
    """The `inference` section: the model's own generation defaults (the sampler's name is checked
    against the registry when it is used)."""

    sampler: str = "ddim"
    steps: int | None = None
    spacing: str | None = None
    cfg: float = 5.0
    guidance_rescale: float = 0.0

    RANGES = {"steps": (1, MAX_STEPS), "cfg": (0.0, MAX_GUIDANCE), "guidance_rescale": (0.0, 1.0)}

    def __post_init__(self):
        super().__post_init__()
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise UserError(f"unknown spacing {self.spacing!r}; choose one of: {', '.join(SPACINGS)}")


@dataclass
class ModelFolder(ModelConfig):
    """The top-level values of a model folder's config.json, beside its sections (`SECTIONS`)."""

    format_version: int  # which versions this t2i reads: `checkpoints.read_config`
    image_size: int  # the side of the images the model makes
    t2i_version: str | None = None
    step: int | None = None  # a run's: the training step of the weights
    seconds: float | None = None  # and the training time they took

    RANGES = {"format_version": (0, 1_000_000), "image_size": (1, MAX_SIDE), "step": (0, 2**63 - 1),
              "seconds": (0.0, 1e12)}


@dataclass
class LoRABase(ModelConfig):
    """The `lora` section of a LoRA's run folder (`t2i train --init BASE --lora-rank R`): the folder holds
    `LORA_FILE`, a LoRA of the model at `base` (an absolute path), instead of the networks its other
    sections describe (the base's); loading it loads the base with the LoRA applied."""

    base: str


@dataclass
class Distillation(ModelConfig):
    """The `distillation` section of a student of progressive distillation (`t2i train --distill TEACHER`): the
    teacher it was distilled from, the classifier-free guidance scale folded into its network (it takes cfg 1
    only), and the DDIM grid it was trained for: `steps` of `spacing`, what its `inference` section says."""

    teacher: str
    guidance_scale: float
    steps: int
    spacing: str = "trailing"

    RANGES = {"guidance_scale": (0.0, MAX_GUIDANCE), "steps": (1, MAX_STEPS)}

    def __post_init__(self):
        super().__post_init__()
        if self.spacing not in SPACINGS:
            raise UserError(f"unknown spacing {self.spacing!r}; choose one of: {', '.join(SPACINGS)}")


LORA_FILE = "lora.safetensors"  # kohya's layout; diffusers' beside it is `convert.lora_names.FOLDER_FILES[0]`
# every section a config.json may hold; `train` holds a run's settings, read by the training that resumes it
SECTIONS = ("unet", "text_encoder", "vae", "tokenizer", "diffusion", "inference", "train", "lora", "distillation")


def text_encoder_class(section: dict) -> type[ModelConfig]:
    """A text encoder whose config names `pretrained` weights is the frozen BERT they fit."""
    return BertConfig if isinstance(section, dict) and section.get("pretrained") else TextEncoderConfig


def check_folder_config(config, path: Path) -> None:
    """Refuse a config.json that is not a JSON object of well-formed sections and top-level values
    (unknown keys among them), naming what is wrong."""
    if not isinstance(config, dict):
        raise UserError(f"{str(path)!r} must hold a JSON object, not a {type(config).__name__}")
    for name in SECTIONS:
        if name in config and not isinstance(config[name], dict):
            raise UserError(f"{str(path)!r}: section {name} must be a JSON object, got {config[name]!r}")
    if "image_size" not in config:
        raise UserError(f"{str(path)!r}: image_size is missing (the side of the images the model makes)")
    ModelFolder.from_dict({key: value for key, value in config.items() if key not in SECTIONS}, f"{str(path)!r}")
    sections = {"unet": UNetConfig, "vae": VAEConfig, "diffusion": DiffusionSettings, "inference": InferenceSettings,
                "tokenizer": TokenizerSettings, "lora": LoRABase, "distillation": Distillation}
    if "text_encoder" in config:
        sections["text_encoder"] = text_encoder_class(config["text_encoder"])
    for name, kind in sections.items():
        if name in config:
            kind.from_dict(config[name], f"{str(path)!r}, section {name}")
    if ("text_encoder" in config) != ("tokenizer" in config):
        raise UserError(f"{str(path)!r}: a text encoder needs a tokenizer section, and a tokenizer a text encoder")
