"""What a checkpoint is, read off its keys and shapes: no YAML, no network.

`identify_original(keys)` names the family of a single-file checkpoint and refuses all
but Stable Diffusion v1 and 2.x with one line that says what the file is. The `*_config`
functions give our configs for SD's three networks from their weights in the original names
(or, for a diffusers folder, from its config.json files).

What the shapes cannot say is taken from SD: the attention heads (SD v1's U-Net has 8; SD 2's,
told apart by its linear proj_in, heads of width 64; CLIP width/64; Q, K and V are square
whatever they are), GroupNorms of 32 groups, and the latent scaling factor 0.18215. SD 2's
OpenCLIP text encoder uses GELU and its penultimate block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Collection

from ..errors import UserError
from ..models.unet import UNetConfig
from ..models.vae import VAEConfig
from ..text.clip import TextEncoderConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x's text encoder
SD_V1_HEADS = 8
SD_2_HEAD_DIM = 64
OTHER_CONTEXTS = {2048: "an SDXL", 1280: "an SDXL refiner"}
SD_V1_SCALING_FACTOR = 0.18215
NORM_GROUPS = 32
Shape = Callable[[str], tuple[int, ...]]

# Keys that give another family away, most specific first.
_FAMILIES = (
    ("conditioner.embedders.", "an SDXL checkpoint (two text encoders under conditioner.embedders)"),
    (UNET_PREFIX + "joint_blocks.", "a Stable Diffusion 3 checkpoint (MMDiT)"),
    (UNET_PREFIX + "double_blocks.", "a FLUX checkpoint"),
    (UNET_PREFIX + "label_emb.", "an SDXL or upscaler U-Net (it embeds a class or size vector)"),
    ("lora_", "a LoRA, not a whole model"),
)


SUPPORTED = "t2i loads Stable Diffusion v1.x and 2.x checkpoints"


def identify_original(keys: Collection[str], shape: Shape) -> None:
    """Raise UserError unless the keys are those of a whole SD v1 or 2.x checkpoint."""
    for prefix, family in _FAMILIES:
        if any(key.startswith(prefix) for key in keys):
            raise UserError(f"this is {family}; {SUPPORTED}")
    if UNET_PREFIX + "input_blocks.0.0.weight" not in keys:
        if any(key.startswith(("encoder.", "decoder.")) for key in keys):
            raise UserError("this is an autoencoder (VAE) alone, not a Stable Diffusion checkpoint")
        if any(key.startswith(("text_model.", "transformer.")) for key in keys):
            raise UserError("this is a text encoder alone, not a Stable Diffusion checkpoint")
        raise UserError("this is not a Stable Diffusion checkpoint: it has no U-Net (model.diffusion_model.*)")
    context = next((shape(key)[1] for key in keys if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")),
                   None)
    if context in OTHER_CONTEXTS:
        raise UserError(f"this is {OTHER_CONTEXTS[context]} U-Net (context width {context}); {SUPPORTED}")
    if context is None:
        raise UserError("this U-Net has no cross-attention: not a text-to-image Stable Diffusion checkpoint")
    channels = shape(UNET_PREFIX + "input_blocks.0.0.weight")[1]
    if channels not in (4, 9):
        kind = {8: "an InstructPix2Pix", 7: "an x4 upscaler"}.get(channels, f"a {channels}-channel")
        raise UserError(f"this is {kind} U-Net; t2i loads SD text-to-image (4 input channels) and "
                        "inpainting (9) U-Nets")
    for prefixes, what in (((VAE_PREFIX,), "autoencoder (VAE)"), ((TEXT_PREFIX, OPEN_CLIP_PREFIX), "text encoder")):
        if not any(key.startswith(prefixes) for key in keys):
            raise UserError(f"the checkpoint has no {what} ({prefixes[0]}*): it holds the U-Net only; "
                            "use a complete SD file or a diffusers folder")


def _indices(keys: Collection[str], pattern: str) -> list[int]:
    """The distinct numbers that `pattern`'s one group matches at the start of keys, sorted."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := regex.match(key))})


def is_sd2(keys: Collection[str]) -> bool:
    """Whether an SD file is 2.x: its text encoder is OpenCLIP's."""
    return any(key.startswith(OPEN_CLIP_PREFIX) for key in keys)


def unet_config(keys: Collection[str], shape: Shape) -> UNetConfig:
    """An SD v1 or 2.x U-Net's config from its weights in the original names (no prefix).

    input_blocks.0 is conv_in; then each level has `num_res_blocks` steps and, but the
    last, one Downsample step (`.0.op`): that fixes the levels and the blocks per level.
    SD 2's transformers project in and out with Linear layers (2-D weights): with them come its
    heads of width 64.
    """
    steps = _indices(keys, r"input_blocks\.(\d+)\.")[1:]
    downsamples = [i for i in steps if "input_blocks.%d.0.op.weight" % i in keys]
    levels = len(downsamples) + 1
    num_res_blocks = (len(steps) - len(downsamples)) // levels
    model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
    channel_mult, attention_levels = [], []
    for level in range(levels):
        first = 1 + level * (num_res_blocks + 1)
        channel_mult.append(shape(f"input_blocks.{first}.0.out_layers.3.weight")[0] // model_channels)
        if f"input_blocks.{first}.1.proj_in.weight" in keys:
            attention_levels.append(level)
    depth = len(_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")) or len(
        _indices(keys, r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\."))
    context = next(shape(key)[1] for key in keys if key.endswith("attn2.to_k.weight"))
    linear = any(key.endswith("proj_in.weight") and len(shape(key)) == 2 for key in keys)
    return UNetConfig(in_channels=in_channels, out_channels=shape("out.2.weight")[0], model_channels=model_channels,
                      channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
                      attention_levels=tuple(attention_levels), mid_attention="middle_block.1.proj_in.weight" in keys,
                      **({"num_heads": None, "head_dim": SD_2_HEAD_DIM} if linear else {"num_heads": SD_V1_HEADS}),
                      context_dim=context,
                      transformer_depth=max(depth, 1), norm_groups=NORM_GROUPS, linear_projection=linear)


def vae_config(keys: Collection[str], shape: Shape) -> VAEConfig:
    """An SD autoencoder's config from its weights in the original names (no prefix)."""
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    blocks = _indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    return VAEConfig(in_channels=shape("encoder.conv_in.weight")[1], out_channels=shape("decoder.conv_out.weight")[0],
                     latent_channels=shape("post_quant_conv.weight")[0],
                     block_channels=tuple(shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in levels),
                     num_res_blocks=len(blocks), norm_groups=NORM_GROUPS,
                     mid_attention="encoder.mid.attn_1.q.weight" in keys, scaling_factor=SD_V1_SCALING_FACTOR)


def attention_heads_from_diffusers(values: dict, widths: list[int]) -> dict:
    """Our `num_heads`/`head_dim` for a diffusers U-Net config: its `attention_head_dim` counts heads
    (a misnomer diffusers keeps): one number for every level (SD v1's 8), or one a level (SD 2's
    5, 10, 20, 20), which we hold as heads of one width (64)."""
    heads = values.get("num_attention_heads") or values.get("attention_head_dim", SD_V1_HEADS)
    if isinstance(heads, int):
        return {"num_heads": heads}
    head_widths = {width // count for width, count in zip(widths, heads)}
    if len(heads) != len(widths) or len(head_widths) != 1 or any(w % c for w, c in zip(widths, heads)):
        raise UserError(f"this diffusers U-Net's heads {list(heads)} on widths {widths} are not of one width: "
                        "not Stable Diffusion's layout")
    return {"num_heads": None, "head_dim": head_widths.pop()}


def unet_config_from_diffusers(values: dict) -> UNetConfig:
    """Our config for a diffusers `UNet2DConditionModel` config.json of SD v1's or 2.x's layout."""
    unsupported = [key for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim")
                   if values.get(key) is not None]
    if unsupported or values.get("resnet_time_scale_shift", "default") != "default":
        raise UserError(f"this diffusers U-Net has {', '.join(unsupported) or 'scale-shift norms'}: "
                        "not Stable Diffusion v1's or 2.x's layout")
    if values.get("cross_attention_dim") in OTHER_CONTEXTS:
        context = values["cross_attention_dim"]
        raise UserError(f"this is {OTHER_CONTEXTS[context]} U-Net (context width {context}); {SUPPORTED}")
    widths = list(values["block_out_channels"])
    mid = values.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    depth = values.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        raise UserError("this diffusers U-Net varies its transformer depth by level: not Stable Diffusion's layout")
    return UNetConfig(in_channels=values["in_channels"], out_channels=values["out_channels"], model_channels=widths[0],
                      channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=values["layers_per_block"],
                      attention_levels=tuple(i for i, kind in enumerate(values["down_block_types"])
                                             if kind.startswith("CrossAttn")),
                      mid_attention=mid == "UNetMidBlock2DCrossAttn",
                      **attention_heads_from_diffusers(values, widths), context_dim=values["cross_attention_dim"],
                      transformer_depth=depth, norm_groups=values.get("norm_num_groups", NORM_GROUPS),
                      linear_projection=bool(values.get("use_linear_projection", False)))


def vae_config_from_diffusers(values: dict, path: Path | str = "the vae config.json") -> VAEConfig:
    """Our config for a diffusers `AutoencoderKL` config.json."""
    missing = [key for key in ("in_channels", "out_channels", "latent_channels", "block_out_channels",
                               "layers_per_block") if not isinstance(values, dict) or key not in values]
    if missing:
        raise UserError(f"{str(path)!r} is not a diffusers autoencoder's config: it has no {missing[0]!r}")
    return VAEConfig(in_channels=values["in_channels"], out_channels=values["out_channels"],
                     latent_channels=values["latent_channels"], block_channels=tuple(values["block_out_channels"]),
                     num_res_blocks=values["layers_per_block"], norm_groups=values.get("norm_num_groups", NORM_GROUPS),
                     mid_attention=values.get("mid_block_add_attention", True),
                     scaling_factor=values.get("scaling_factor", SD_V1_SCALING_FACTOR))


def text_config(keys: Collection[str], shape: Shape, open_clip: bool = False) -> TextEncoderConfig:
    """A CLIP text transformer's config from its weights in transformers' names (`text_model.…`).

    Widths, depth, vocabulary and length are in the shapes; the number of heads is CLIP's
    rule, heads of width 64, and the activation CLIP's quick GELU, or for OpenCLIP's encoder
    (`open_clip`, SD 2's) GELU and the penultimate block's output. The end-of-text token is
    found as the highest id, as OpenAI's CLIP does.
    """
    tokens = "text_model.embeddings.token_embedding.weight"
    positions = "text_model.embeddings.position_embedding.weight"
    fc1 = "text_model.encoder.layers.0.mlp.fc1.weight"
    missing = [key for key in (tokens, positions, fc1) if key not in keys]
    if missing:
        raise UserError(f"not a CLIP text transformer's weights: there is no {missing[0]}")
    vocab_size, width = shape(tokens)
    return TextEncoderConfig(vocab_size=vocab_size, max_length=shape(positions)[0], width=width,
                             layers=len(_indices(keys, r"text_model\.encoder\.layers\.(\d+)\.")),
                             heads=max(1, width // 64), intermediate_size=shape(fc1)[0], eos_token_id=None,
                             activation="gelu" if open_clip else "quick_gelu", skip_layers=int(open_clip))


# transformers' CLIPTextConfig fields -> ours.
_TRANSFORMERS_TEXT_CONFIG = dict(vocab_size="vocab_size", max_length="max_position_embeddings", width="hidden_size",
                                 layers="num_hidden_layers", heads="num_attention_heads",
                                 intermediate_size="intermediate_size", activation="hidden_act",
                                 layer_norm_eps="layer_norm_eps", eos_token_id="eos_token_id")


def text_config_from_transformers(values: dict) -> TextEncoderConfig:
    """Our config for a transformers `CLIPTextConfig`, given as a dict (the config.json of a
    diffusers folder's text_encoder/).

    `eos_token_id: 2`, which old CLIP configs (SD v1's) carry, is how transformers marks
    "pool at the highest id"; it becomes our `None`.
    """
    if values.get("model_type", "clip_text_model") != "clip_text_model":
        raise UserError(f"the text encoder is a {values.get('model_type')!r}, not CLIP's text transformer")
    missing = [theirs for theirs in _TRANSFORMERS_TEXT_CONFIG.values() if theirs not in values]
    if missing:
        raise UserError(f"not a CLIP text config: it has no {', '.join(missing)}")
    ours = {field: values[theirs] for field, theirs in _TRANSFORMERS_TEXT_CONFIG.items()}
    if ours["eos_token_id"] == 2:
        ours["eos_token_id"] = None
    return TextEncoderConfig(**ours)
