"""Stable Diffusion v1 and 2.x checkpoints in, and out: the original single file and diffusers folders.

`load_stable_diffusion(path)` reads either format into our `UNet`, `AutoencoderKL` and
`CLIPTextTransformer`, with the configs inferred from the weights (single file) or read
from the folder's config.json files, and returns them with the config.json of one of our
model folders, so that the rest of t2i sees an SD model as any other model. No network:
the tokenizer is the folder's `tokenizer/` or the CLIP vocabulary that ships with t2i (SD 2's
OpenCLIP encoder reads the same vocabulary, padded with "!").

Each network comes in through `build`, which assigns its weights one by one as they are
read and cast, so loading holds the weights once (see benchmarks/load_memory.py).

`save_diffusers` and `save_original` write our networks back in those formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import re

import torch
from safetensors.torch import save_file

from .. import __version__
from ..checkpoints import (CONFIG_NAME, versioned_config, load_components, load_vae, read_config, save_model,
                           tokenizer_from_config)
from ..errors import UserError
from ..files import durable_write, read_json, write_json
from ..models.unet import UNetConfig
from ..models.vae import VAEConfig
from ..schedules import SPACINGS
from ..text.clip import TextEncoderConfig
from ..text.clip_bpe import END_OF_TEXT, CLIPTokenizer
from . import clip_names, infer, open_clip_names, unet_names, vae_names
from .build import build
from .tensors import PICKLES, SAFETENSORS, Weights, open_weights, under

# SD's noise schedule and its samplers' conventions, as v1's and 2.x's scheduler_config.json give them
# (SD 2's 768² models predict v instead).
SD_DIFFUSION = {"schedule": "scaled_linear", "num_timesteps": 1000, "prediction_type": "epsilon",
                "steps_offset": 1, "set_alpha_to_one": False}
SD_INFERENCE = {"sampler": "ddim", "steps": 50, "cfg": 7.5}
OPEN_CLIP_PAD = "!"  # OpenCLIP pads with id 0, "!" in CLIP's vocabulary
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                     "pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors")
COMPONENTS = ("unet", "vae", "text_encoder")  # an SD model's networks, by their diffusers folder names


def is_foreign(path: str | Path) -> bool:
    """Whether `path` is an SD single file or a diffusers folder rather than one of our folders."""
    path = Path(path)
    if path.is_file():
        return path.suffix in SAFETENSORS + PICKLES
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def model_folder_config(configs: dict, tokenizer: CLIPTokenizer, diffusion: dict, image_size: int,
                        spacing: str | None = None) -> dict:
    """The config.json of one of our model folders for an SD model (sampling on `spacing`, if its scheduler names
    one)."""
    inference = {**SD_INFERENCE, **({"spacing": spacing} if spacing else {})}
    return versioned_config(**{name: c.to_dict() for name, c in configs.items()}, tokenizer=tokenizer.to_dict(),
                         diffusion=diffusion, image_size=image_size, inference=inference)


# ComfyUI's tell for SD 2.x's v models: the last output block's first attention norm has biases spread wider
# (std > 0.09) than the ε models'; told for 4-channel U-Nets only (SD 2's inpainting model is ε)
V_TELL, V_TELL_STD = "output_blocks.11.1.transformer_blocks.0.norm1.bias", 0.09


def original_prediction(path: Path, weights) -> str:
    """What an SD 2.x single file predicts, which no key says: ε (2.x-base, 512²) or v (768²).
    AUTOMATIC1111's convention is a .yaml of the same name beside the file (SD's v2-inference-v.yaml
    says `parameterization: "v"`); some files carry an empty `v_pred` key. With neither, the trained
    weights tell, as ComfyUI reads them (`V_TELL`)."""
    config = path.with_suffix(".yaml")
    if config.is_file():
        text = config.read_text(errors="replace")
        return "v" if re.search(r"^\s*parameterization:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE) else "epsilon"
    if "v_pred" in weights:
        return "v"
    tell, conv_in = infer.UNET_PREFIX + V_TELL, infer.UNET_PREFIX + "input_blocks.0.0.weight"
    if tell in weights and weights.shape(conv_in)[1] == 4:
        return "v" if weights[tell].double().std(unbiased=False) > V_TELL_STD else "epsilon"
    return "epsilon"


def load_original(path: Path, dtype: torch.dtype | None) -> tuple[dict, dict, CLIPTokenizer]:
    """(networks, our folder config, tokenizer) from an SD v1 or 2.x single file; the architecture is
    read off the keys and shapes. EMA copies (`model_ema.*`) are ignored, as diffusers does."""
    weights = open_weights(path)
    infer.identify_original(weights.keys(), weights.shape)
    sd2 = infer.is_sd2(weights.keys())
    parts = {"unet": under(weights, infer.UNET_PREFIX), "vae": under(weights, infer.VAE_PREFIX)}
    parts["text_encoder"] = (open_clip_names.transformers_view(under(weights, infer.OPEN_CLIP_PREFIX)) if sd2 else
                             clip_names.transformers_view(under(weights, infer.TEXT_PREFIX)))
    configs = {"unet": infer.unet_config(parts["unet"].keys(), parts["unet"].shape),
               "vae": infer.vae_config(parts["vae"].keys(), parts["vae"].shape),
               "text_encoder": infer.text_config(parts["text_encoder"].keys(), parts["text_encoder"].shape, sd2)}
    names = {"unet": unet_names.foreign_names(configs["unet"], "original"),
             "vae": vae_names.foreign_names(configs["vae"], "original"),
             "text_encoder": clip_names.transformers_names(configs["text_encoder"])}
    networks = {name: build(name, configs[name], parts[name], names[name], dtype,
                            f"{str(path)!r}: the {name} weights do not fit the architecture their shapes suggest")
                for name in COMPONENTS}
    tokenizer = CLIPTokenizer.shipped(OPEN_CLIP_PAD if sd2 else END_OF_TEXT)
    diffusion = {**SD_DIFFUSION, "prediction_type": original_prediction(path, weights) if sd2 else "epsilon"}
    # SD v1 and 2.x-base were trained on 64×64 latents, SD 2's v models on 96×96
    size = (96 if diffusion["prediction_type"] == "v" else 64) * configs["vae"].downsample_factor
    return networks, model_folder_config(configs, tokenizer, diffusion, size), tokenizer


def diffusers_weights(folder: Path) -> Weights:
    for name in DIFFUSERS_WEIGHTS:
        if (folder / name).is_file():
            return open_weights(folder / name)
    raise UserError(f"{str(folder)!r} has no weights ({', '.join(DIFFUSERS_WEIGHTS[:2])}, ...)")


def diffusion_from_scheduler(folder: Path) -> dict:
    """Our diffusion config for a diffusers scheduler_config.json (SD v1's when there is none)."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return dict(SD_DIFFUSION)
    values = read_json(path, "the diffusers folder is incomplete")
    schedule = (values.get("beta_schedule"), values.get("beta_start"), values.get("beta_end"))
    if schedule != ("scaled_linear", 0.00085, 0.012):
        raise UserError(f"{str(path)!r}: the β schedule {schedule} is not SD's (scaled_linear, 0.00085, 0.012)")
    prediction = {"epsilon": "epsilon", "v_prediction": "v"}.get(values.get("prediction_type", "epsilon"))
    if prediction is None:
        raise UserError(f"{str(path)!r}: unsupported prediction type {values['prediction_type']!r}")
    if values.get("rescale_betas_zero_snr"):  # its last timestep has no signal left: σ would be infinite
        raise UserError(f"{str(path)!r}: rescale_betas_zero_snr (zero terminal SNR, Lin et al. 2023) is not supported "
                        "here: its model would sample on a schedule it was not trained on")
    return {"schedule": "scaled_linear", "num_timesteps": values.get("num_train_timesteps", 1000),
            "prediction_type": prediction, "steps_offset": values.get("steps_offset", 0),
            "set_alpha_to_one": values.get("set_alpha_to_one", True)}


def load_diffusers(folder: Path, dtype: torch.dtype | None) -> tuple[dict, dict, CLIPTokenizer]:
    """(networks, our folder config, tokenizer) from a diffusers folder: unet/, vae/, text_encoder/,
    and tokenizer/ and scheduler/ when present."""
    values = {name: read_json(folder / name / CONFIG_NAME, "the diffusers folder is incomplete") for name in COMPONENTS}
    configs = {"unet": infer.unet_config_from_diffusers(values["unet"]),
               "vae": infer.vae_config_from_diffusers(values["vae"]),
               "text_encoder": infer.text_config_from_transformers(values["text_encoder"])}
    names = {"unet": unet_names.foreign_names(configs["unet"], "diffusers"),
             "vae": vae_names.foreign_names(configs["vae"], "diffusers"),
             "text_encoder": clip_names.transformers_names(configs["text_encoder"])}
    networks = {}
    for name in COMPONENTS:
        weights = diffusers_weights(folder / name)
        if name == "text_encoder":
            weights = clip_names.transformers_view(weights)
        networks[name] = build(name, configs[name], weights, names[name], dtype,
                               f"{str(folder / name)!r}: the weights do not fit its config.json")
    open_clip = configs["text_encoder"].activation == "gelu"  # SD 2's text encoder, which pads with "!"
    tokenizer = (CLIPTokenizer.from_folder(folder / "tokenizer") if (folder / "tokenizer").is_dir()
                 else CLIPTokenizer.shipped(OPEN_CLIP_PAD if open_clip else END_OF_TEXT))
    size = values["unet"].get("sample_size", 64) * configs["vae"].downsample_factor
    return networks, model_folder_config(configs, tokenizer, diffusion_from_scheduler(folder), size,
                                         scheduler_spacing(folder)), tokenizer


def scheduler_spacing(folder: Path) -> str | None:
    """The timestep spacing a diffusers folder's scheduler samples on ("leading", "trailing", "linspace"), if it
    names one."""
    path = folder / "scheduler" / "scheduler_config.json"
    spacing = read_json(path, "the diffusers folder is incomplete").get("timestep_spacing") if path.is_file() else None
    if spacing is not None and spacing not in SPACINGS:
        raise UserError(f"{str(path)!r}: unknown timestep_spacing {spacing!r}; t2i samples on {', '.join(SPACINGS)}")
    return spacing


def load_vae_file(path: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """An SD autoencoder alone, as people swap one in (e.g. SD's vae-ft-mse-840000): a single file in
    SD's original names, with or without `first_stage_model.`, or a diffusers vae/ folder; or the autoencoder
    of one of our folders (`t2i train-vae`, a latent model)."""
    path = Path(path)
    if path.is_dir():
        values = read_json(path / CONFIG_NAME, "it is not a diffusers vae/ folder")
        if isinstance(values, dict) and "format_version" in values:
            vae = load_vae(path)
            return vae if dtype is None else vae.to(dtype)
        config = infer.vae_config_from_diffusers(values, path / CONFIG_NAME)
        return build("vae", config, diffusers_weights(path), vae_names.foreign_names(config, "diffusers"), dtype,
                     f"{str(path)!r}: the weights do not fit its config.json")
    weights = open_weights(path)
    if any(key.startswith(infer.VAE_PREFIX) for key in weights):
        weights = under(weights, infer.VAE_PREFIX)
    if "encoder.conv_in.weight" not in weights or "decoder.conv_out.weight" not in weights:
        raise UserError(f"{str(path)!r} is not an autoencoder (VAE) file: it has no encoder.conv_in and "
                        "decoder.conv_out weights")
    if any(key.startswith("encoder.down_blocks.") for key in weights):
        raise UserError(f"{str(path)!r} is a VAE in diffusers' names: give its folder, with the config.json")
    config = infer.vae_config(weights.keys(), weights.shape)
    return build("vae", config, weights, vae_names.foreign_names(config, "original"), dtype,
                 f"{str(path)!r}: the weights do not fit the autoencoder their shapes suggest")


def load_stable_diffusion(path: str | Path, dtype: torch.dtype | None = None
                          ) -> tuple[dict[str, torch.nn.Module], dict, CLIPTokenizer]:
    """({"unet", "vae", "text_encoder"} networks, the config.json of our folder format, the
    tokenizer) from an SD v1 or 2.x single file or a diffusers folder. `dtype` casts the floating
    point weights (None keeps them as stored)."""
    path = Path(path)
    if path.is_file():
        return load_original(path, dtype)
    if not is_foreign(path):
        raise UserError(f"{str(path)!r} is neither an SD single file (.safetensors, .ckpt) nor a diffusers folder")
    return load_diffusers(path, dtype)


def load_sd_model(path: str | Path, dtype: torch.dtype | None = None
                  ) -> tuple[dict[str, torch.nn.Module], dict, CLIPTokenizer]:
    """As `load_stable_diffusion`, and also from one of our model folders that holds a latent text-to-image
    model with a CLIP tokenizer (one `convert` or a fine-tuning wrote)."""
    if is_foreign(path):
        return load_stable_diffusion(path, dtype)
    if Path(path).is_dir() and not (Path(path) / CONFIG_NAME).is_file():
        raise UserError(f"{str(path)!r} is neither an SD single file (.safetensors, .ckpt), a diffusers folder "
                        "nor a t2i model folder")
    config = read_config(path)
    if not all(name in config for name in COMPONENTS):
        raise UserError(f"{str(path)!r} is not a latent text-to-image model (U-Net, VAE and text encoder)")
    networks, tokenizer = dict(load_components(path, config=config)), tokenizer_from_config(path, config)
    if not isinstance(tokenizer, CLIPTokenizer):
        raise UserError(f"{str(path)!r} uses a word tokenizer: only CLIP-tokenized models are Stable Diffusion's")
    networks = {name: network.to(dtype) if dtype is not None else network for name, network in networks.items()}
    return networks, config, tokenizer


# -- writing ----------------------------------------------------------------------------------
def state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}


def is_open_clip(config: TextEncoderConfig) -> bool:
    """Whether a text encoder is SD 2's OpenCLIP (GELU) rather than SD v1's OpenAI CLIP (quick GELU)."""
    return config.activation == "gelu"


def used_text_layers(text_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The text encoder's weights in transformers' names, without the blocks it skips: what a
    diffusers folder holds (its `num_hidden_layers` counts the blocks that are used)."""
    c = text_net.config
    names = clip_names.transformers_names(c)
    skipped = tuple(f"blocks.{i}." for i in range(c.layers - c.skip_layers, c.layers))
    return {names[k]: v for k, v in state(text_net).items() if not k.startswith(skipped)}


def open_clip_text_state(text_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SD 2's text encoder in OpenCLIP's names, which read the penultimate block: the used blocks and
    one more, the skipped block if we hold it, else a block of zeros that nothing reads."""
    c = text_net.config
    used = c.layers - c.skip_layers
    tensors = used_text_layers(text_net)
    last = f"text_model.encoder.layers.{used - 1}."
    if c.skip_layers:
        names = clip_names.transformers_names(c)
        tensors.update({names[k]: v for k, v in state(text_net).items() if k.startswith(f"blocks.{used}.")})
    else:
        tensors.update({key.replace(last, f"text_model.encoder.layers.{used}."): torch.zeros_like(value)
                        for key, value in tensors.items() if key.startswith(last)})
    return open_clip_names.open_clip_state_dict(tensors, used + 1)


def save_original(networks: Mapping[str, torch.nn.Module], path: str | Path) -> Path:
    """One .safetensors file in SD's original names (model.diffusion_model.*, first_stage_model.*, and
    cond_stage_model.transformer.* for SD v1's CLIP or cond_stage_model.model.* for SD 2's OpenCLIP),
    as CompVis', Stability's and most other tools read it."""
    unet_net, vae_net, text_net = networks["unet"], networks["vae"], networks["text_encoder"]
    tensors = {infer.UNET_PREFIX + k: v for k, v in
               unet_names.to_foreign_state_dict(state(unet_net), unet_net.config, "original").items()}
    tensors.update({infer.VAE_PREFIX + k: v for k, v in
                    vae_names.to_foreign_state_dict(state(vae_net), vae_net.config, "original").items()})
    if is_open_clip(text_net.config):
        tensors.update({infer.OPEN_CLIP_PREFIX + k: v for k, v in open_clip_text_state(text_net).items()})
    else:
        names = clip_names.transformers_names(text_net.config)
        tensors.update({infer.TEXT_PREFIX + names[k]: v for k, v in state(text_net).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return path


def unet_diffusers_config(c: UNetConfig, sample_size: int) -> dict:
    levels = range(len(c.channel_mult))
    return {"_class_name": "UNet2DConditionModel", "sample_size": sample_size, "in_channels": c.in_channels,
            "out_channels": c.out_channels, "block_out_channels": [m * c.model_channels for m in c.channel_mult],
            "layers_per_block": c.num_res_blocks, "cross_attention_dim": c.context_dim,
            # diffusers' "attention_head_dim" counts heads: one number (SD v1) or one a level (SD 2)
            "attention_head_dim": c.num_heads or [c.attention_heads(m * c.model_channels)[0] for m in c.channel_mult],
            "use_linear_projection": c.linear_projection, "transformer_layers_per_block": c.transformer_depth,
            "norm_num_groups": c.norm_groups,
            "mid_block_type": "UNetMidBlock2DCrossAttn" if c.mid_attention else "UNetMidBlock2D",
            "down_block_types": ["CrossAttnDownBlock2D" if i in c.attention_levels else "DownBlock2D" for i in levels],
            "up_block_types": ["CrossAttnUpBlock2D" if i in c.attention_levels else "UpBlock2D"
                               for i in reversed(levels)]}


def vae_diffusers_config(c: VAEConfig, sample_size: int) -> dict:
    n = len(c.block_channels)
    return {"_class_name": "AutoencoderKL", "sample_size": sample_size, "in_channels": c.in_channels,
            "out_channels": c.out_channels, "latent_channels": c.latent_channels,
            "block_out_channels": list(c.block_channels), "layers_per_block": c.num_res_blocks,
            "norm_num_groups": c.norm_groups, "scaling_factor": c.scaling_factor,
            "mid_block_add_attention": c.mid_attention,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}


def text_transformers_config(c: TextEncoderConfig) -> dict:
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": c.vocab_size,
            "max_position_embeddings": c.max_length, "hidden_size": c.width,
            "num_hidden_layers": c.layers - c.skip_layers,
            "num_attention_heads": c.heads, "intermediate_size": c.intermediate_size, "hidden_act": c.activation,
            "layer_norm_eps": c.layer_norm_eps, "projection_dim": c.width, "bos_token_id": 0, "pad_token_id": 1,
            "eos_token_id": 2 if c.eos_token_id is None else c.eos_token_id}  # 2: transformers' "the highest id"


def save_diffusers(networks: Mapping[str, torch.nn.Module], tokenizer: CLIPTokenizer, diffusion: dict,
                   image_size: int, folder: str | Path) -> Path:
    """A diffusers folder that `StableDiffusionPipeline.from_pretrained(folder)` opens offline."""
    folder = Path(folder)
    unet_net, vae_net, text_net = networks["unet"], networks["vae"], networks["text_encoder"]
    latent_size = image_size // vae_net.config.downsample_factor
    parts = {
        "unet": (unet_diffusers_config(unet_net.config, latent_size), "diffusion_pytorch_model.safetensors",
                 unet_names.to_foreign_state_dict(state(unet_net), unet_net.config, "diffusers")),
        "vae": (vae_diffusers_config(vae_net.config, image_size), "diffusion_pytorch_model.safetensors",
                vae_names.to_foreign_state_dict(state(vae_net), vae_net.config, "diffusers")),
        "text_encoder": (text_transformers_config(text_net.config), "model.safetensors", used_text_layers(text_net)),
    }
    for name, (config, weights_name, tensors) in parts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        write_json(folder / name / CONFIG_NAME, {**config, "_diffusers_version": "0.30.0"})
        durable_write(folder / name / weights_name,
                      lambda tmp, tensors=tensors: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    tokenizer.save(folder / "tokenizer")
    write_json(folder / "tokenizer" / "tokenizer_config.json",
               {"model_max_length": text_net.config.max_length, "pad_token": tokenizer.pad_token,
                "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"})
    (folder / "scheduler").mkdir(exist_ok=True)
    write_json(folder / "scheduler" / "scheduler_config.json",
               {"_class_name": "DDIMScheduler", "beta_schedule": diffusion["schedule"], "beta_start": 0.00085,
                "beta_end": 0.012, "num_train_timesteps": diffusion["num_timesteps"], "clip_sample": False,
                "prediction_type": {"epsilon": "epsilon", "v": "v_prediction"}[diffusion["prediction_type"]],
                "steps_offset": diffusion.get("steps_offset", 0),
                "set_alpha_to_one": diffusion.get("set_alpha_to_one", True)})
    write_json(folder / "model_index.json",
               {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0", "_t2i_version": __version__,
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
                "feature_extractor": [None, None], "requires_safety_checker": False})
    return folder


FORMATS = ("t2i", "diffusers", "original")


def convert(src: str | Path, dst: str | Path, to: str = "t2i", dtype: torch.dtype | None = None) -> Path:
    """Write the SD model at `src` (a single file, a diffusers folder or one of our folders)
    to `dst` as one of our model folders ("t2i"), a diffusers folder, or an original
    single .safetensors file; `dtype` casts the weights (None: as stored)."""
    if to not in FORMATS:
        raise UserError(f"unknown format {to!r}; choose one of: {', '.join(FORMATS)}")
    networks, config, tokenizer = load_sd_model(src, dtype)
    diffusion = config["diffusion"]
    if to != "t2i" and (diffusion["schedule"] != "scaled_linear" or diffusion["prediction_type"] == "flow"):
        raise UserError(f"{str(src)!r} is a {diffusion['schedule']} model of {diffusion['prediction_type']}: "
                        "SD formats hold scaled_linear with epsilon or v only")
    dst = Path(dst)
    if to == "original":
        if dst.suffix != ".safetensors":
            raise UserError(f"the original format is one .safetensors file: name it so, not {str(dst)!r}")
        return save_original(networks, dst)
    if to == "diffusers":
        return save_diffusers(networks, tokenizer, config["diffusion"], config["image_size"], dst)
    tokenizer.save(dst)
    save_model(dst, networks, config)
    return dst
