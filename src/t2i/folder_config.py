"""A model folder's config.json checked whole, before anything is built from it.

The network sections (`unet`, `vae`, `text_encoder`) read through their own configs; the
`diffusion` and `inference` sections through the small configs below, by the same typed reader
(`models.config.ModelConfig`); the tokenizer's section must name a known type. Every error
names the file, the section and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import whole_number
from .diffusion import PREDICTION_TYPES
from .errors import UserError
from .models.config import ModelConfig
from .models.unet import UNetConfig
from .models.vae import VAEConfig
from .schedules import SCHEDULES, SPACINGS
from .text.bert import BertConfig
from .text.clip import TextEncoderConfig
from .text.tokenizers import TOKENIZERS


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


@dataclass
class InferenceSettings(ModelConfig):
    """The `inference` section: the model's own generation defaults (the sampler's name is checked
    against the registry when it is used)."""

    sampler: str = "ddim"
    steps: int | None = None
    spacing: str | None = None
    cfg: float = 5.0
    guidance_rescale: float = 0.0

    RANGES = {"steps": (1, 10_000), "cfg": (0.0, 1000.0), "guidance_rescale": (0.0, 1.0)}

    def __post_init__(self):
        super().__post_init__()
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise UserError(f"unknown spacing {self.spacing!r}; choose one of: {', '.join(SPACINGS)}")


def text_encoder_class(section: dict) -> type[ModelConfig]:
    """A text encoder whose config names `pretrained` weights is the frozen BERT they fit."""
    return BertConfig if section.get("pretrained") else TextEncoderConfig


def check_folder_config(config, path: Path) -> None:
    """Refuse a config.json that is not a JSON object of well-formed sections, naming what is wrong."""
    if not isinstance(config, dict):
        raise UserError(f"{str(path)!r} must hold a JSON object, not a {type(config).__name__}")
    sections = {"unet": UNetConfig, "vae": VAEConfig, "diffusion": DiffusionSettings,
                "inference": InferenceSettings}
    for name in ("text_encoder", "tokenizer", *sections):
        if name in config and not isinstance(config[name], dict):
            raise UserError(f"{str(path)!r}: section {name} must be a JSON object, got {config[name]!r}")
    if "text_encoder" in config:
        sections["text_encoder"] = text_encoder_class(config["text_encoder"])
    for name, kind in sections.items():
        if name in config:
            kind.from_dict(config[name], f"{str(path)!r}, section {name}")
    if "tokenizer" in config and config["tokenizer"].get("type") not in TOKENIZERS:
        raise UserError(f"{str(path)!r}, section tokenizer: unknown type {config['tokenizer'].get('type')!r}; "
                        f"choose one of: {', '.join(TOKENIZERS)}")
    if ("text_encoder" in config) != ("tokenizer" in config):
        raise UserError(f"{str(path)!r}: a text encoder needs a tokenizer section, and a tokenizer a text encoder")
    if "unet" in config:
        if "image_size" not in config:
            raise UserError(f"{str(path)!r}: image_size is missing (the side of the images the model makes)")
        try:
            whole_number("image_size", config["image_size"], 1, 16384)
        except UserError as error:
            raise UserError(f"{str(path)!r}: {error}") from None
