"""LoRA files as people have them, matched to our layers; and written in the same layouts.

A LoRA file holds, for each layer it adapts, the down projection A, the up projection B and
perhaps α (`models.lora`), under one of these layouts:
- kohya-ss's and AUTOMATIC1111's: `lora_unet_<layer>.lora_down.weight`, `.lora_up.weight` and
  `.alpha`, `lora_te_<layer>…` (or `lora_te1_`) for the text encoder, where <layer> is the layer's
  name in diffusers' U-Net, in SD's original one (`input_blocks_1_1_…`) or in transformers' CLIP
  with every "." written "_"; α missing (or 0, which their readers take for missing) means α = r.
- diffusers' and PEFT's: `unet.<layer>.lora_A.weight` and `.lora_B.weight`, `text_encoder.<layer>…`,
  α in `.alpha` keys or in the `lora_adapter_metadata` that diffusers writes into the safetensors
  header (PEFT's LoraConfig: `lora_alpha`, `alpha_pattern`, `use_rslora`), else α = r. A folder
  with `pytorch_lora_weights.safetensors`, or PEFT's `adapter_model.safetensors` and
  `adapter_config.json`, reads the same.
- diffusers' older attention processors: `unet.<block>.attn1.processor.to_q_lora.down.weight`,
  `…lora.down.weight` and `…lora_linear_layer.down.weight`.

A layer is found by inverting the name tables the checkpoints are read with (`unet_names`,
`clip_names`: {our weight: their weight}, so {their layer: our layer}). kohya's flattened names
cannot be split back into a path ("down_blocks_0" is "down_blocks.0", "conv_in" is not
"conv.in"), so they are looked up among the table's names flattened the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from ..files import durable_write, read_json
from ..models.lora import LowRankUpdate, fitted, layer_kind
from ..models.unet import UNet
from ..text.clip import CLIPTextTransformer
from . import clip_names, unet_names
from .tensors import Weights, open_weights

NETWORKS = ("unet", "text_encoder")  # what a LoRA for SD v1/v2 adapts
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder"}
PEFT_PARTS = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
              "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up", "alpha": "alpha"}
# diffusers' attention processors named an attention's projections; the U-Net's and CLIP's layer names for them
PROCESSOR = re.compile(r"(?P<block>.+?)(\.processor)?\.(?P<projection>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)"
                       r"\.weight")
PROJECTIONS = {"to_q": ("to_q", "q_proj"), "to_k": ("to_k", "k_proj"), "to_v": ("to_v", "v_proj"),
               "to_out": ("to_out.0", "out_proj")}
OTHER_MODELS = {"lora_te2_": "an SDXL LoRA (it adapts a second text encoder)",
                "text_encoder_2.": "an SDXL LoRA (it adapts a second text encoder)",
                "lora_transformer_": "a LoRA for a transformer model (SD 3, FLUX, …)",
                "transformer.": "a LoRA for a transformer model (SD 3, FLUX, …)"}
OTHER_KINDS = {r"\.hada_": "LyCORIS's LoHa", r"\.lokr_": "LyCORIS's LoKr", r"\.lora_mid\.": "LoCon's CP decomposition",
               r"\.dora_scale$": "DoRA", r"\.lora_magnitude_vector": "DoRA",
               r"\.diff(_b)?$": "a full weight difference"}  # what other adapters' weights are named (a pattern)
FOLDER_FILES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.bin",
                "adapter_model.bin")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors header entry: the PEFT configs, JSON


def layer_names(name: str, network: nn.Module) -> dict[str, str]:
    """{their layer name: our layer name} for each layer of `network` ("unet" or "text_encoder") that a
    LoRA can adapt, under every foreign name it has: diffusers' and SD's original names for the U-Net,
    transformers' for CLIP with and without the `text_model.` that transformers 5 dropped."""
    if name == "unet" and isinstance(network, UNet):
        try:
            tables = [unet_names.foreign_names(network.config, fmt) for fmt in unet_names.FOREIGN_FORMATS]
        except UserError:
            tables = None
    elif name == "text_encoder" and isinstance(network, CLIPTextTransformer):
        names = clip_names.transformers_names(network.config)
        tables = [names, {ours: theirs.removeprefix("text_model.") for ours, theirs in names.items()}]
    else:
        tables = None
    if tables is None:
        raise UserError(f"LoRA files adapt Stable Diffusion's layers by their names: this model's {name} is not "
                        "Stable Diffusion's")
    modules = dict(network.named_modules())
    return {theirs.removesuffix(".weight"): ours.removesuffix(".weight") for table in tables
            for ours, theirs in table.items()
            if ours.endswith(".weight") and layer_kind(modules.get(ours.removesuffix(".weight"))) is not None}


def flattened(table: Mapping[str, str]) -> dict[str, str]:
    """`table` under kohya's names: every "." written "_"."""
    flat: dict[str, str] = {}
    for theirs, ours in table.items():
        if flat.setdefault(theirs.replace(".", "_"), ours) != ours:
            raise KeyError(f"two layers flatten to {theirs.replace('.', '_')!r}")  # a table out of step
    return flat


def lora_file(path: Path) -> Path:
    """The weights file of a LoRA given as a file or as the folder diffusers or PEFT saved."""
    if not path.is_dir():
        return path
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"{str(path)!r} is a folder without a LoRA file ({', '.join(FOLDER_FILES[:2])})")


def peft_configs(weights: Weights, path: Path) -> dict[str | None, dict]:
    """PEFT's LoraConfig of each network ({"unet": {...}, "text_encoder": {...}}), from diffusers'
    header metadata or (for every network: key None) from PEFT's adapter_config.json beside the file."""
    configs: dict[str | None, dict] = {}
    if (path.parent / "adapter_config.json").is_file():
        configs[None] = read_json(path.parent / "adapter_config.json", "PEFT's adapter config")
        if not isinstance(configs[None], dict):
            raise UserError(f"{str(path.parent / 'adapter_config.json')!r} is not a PEFT config (a JSON object)")
    text = weights.metadata().get(METADATA_KEY)
    if text:
        try:
            flat = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"{str(path)!r}: its {METADATA_KEY} is not JSON: the file is damaged") from None
        for key, value in flat.items():
            network, _, field = key.partition(".")
            configs.setdefault(network, {})[field] = value
    for network, config in configs.items():
        if config.get("use_dora"):
            raise UserError(f"{str(path)!r} is a DoRA (weight-decomposed LoRA): only plain LoRAs are supported")
    return configs


def config_alpha(config: dict, module: str, rank: int) -> float | None:
    """α of `module` by a PEFT LoraConfig: its `alpha_pattern` entry (a pattern matching the name's end, as
    PEFT matches it), else `lora_alpha`; with `use_rslora` the update is scaled α/√r (Kalajdzievski 2023),
    which is α' / r for α' = α·√r."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        try:
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                alpha = value
                break
        except re.error:
            raise UserError(f"alpha_pattern {pattern!r} of the LoRA's config is not a pattern") from None
    if alpha is None:
        return None
    return float(alpha) * math.sqrt(rank) if config.get("use_rslora") else float(alpha)


def parse_key(key: str) -> tuple[str | None, str, str] | str:
    """(network or None if the key does not say, the layer's name as written, "down" | "up" | "alpha"),
    or why the key is not a LoRA weight."""
    for prefix, what in OTHER_MODELS.items():
        if key.startswith(prefix):
            return f"{key} is from {what}, not one for Stable Diffusion v1/v2"
    for prefix, network in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            layer, _, part = key[len(prefix):].partition(".")
            if part in KOHYA_PARTS:
                return network, layer, KOHYA_PARTS[part]
            break
    else:
        network = next((network for prefix, network in PEFT_PREFIXES.items() if key.startswith(prefix)), None)
        rest = key.removeprefix("base_model.model.")
        rest = rest[rest.index(".") + 1:] if network else rest
        processor = PROCESSOR.fullmatch(rest)
        if processor:
            return network, f"{processor['block']}.{processor['projection']}", processor["part"]
        for suffix, part in PEFT_PARTS.items():
            if rest.endswith("." + suffix):
                return network, rest[:-len(suffix) - 1], part
    kind = next((kind for marker, kind in OTHER_KINDS.items() if re.search(marker, key)), None)
    if kind:
        return f"{key} is a weight of {kind}, which is not supported: only plain LoRA (and LoCon) files are"
    return f"{key} is not a LoRA weight (lora_down/lora_up/alpha, or lora_A/lora_B)"


def find_layer(network: str | None, layer: str, tables: dict[str, dict[str, str]],
               flat: dict[str, dict[str, str]], kohya: bool, present: Mapping) -> tuple[str, str] | None:
    """(network, our layer) that a layer name of the file names, or None."""
    for name in [network] if network else [name for name in NETWORKS if name in present]:
        table = flat[name] if kohya else tables[name]
        candidates = [layer]
        for projection, names in PROJECTIONS.items():  # diffusers' processor names: the U-Net's or CLIP's name
            if layer.endswith("." + projection):
                candidates = [f"{layer[:-len(projection)]}{theirs}" for theirs in names]
        for candidate in candidates:
            if candidate in table:
                return name, table[candidate]
    return None


def read_lora(path: str | Path, networks: Mapping[str, nn.Module | None]) -> dict[str, dict[str, LowRankUpdate]]:
    """{network name: {our layer name: LowRankUpdate}} of a LoRA file (or folder) for `networks`
    ({"unet": ..., "text_encoder": ...}): A and B on each layer's device in float32, shaped for it.
    Every key must be a LoRA weight of a layer these networks have, with A, B and α that fit it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist")
    path = lora_file(path)
    weights = open_weights(path)
    if not len(weights):
        raise UserError(f"{str(path)!r} holds no weights: it is not a LoRA")
    present = {name: network for name, network in networks.items() if network is not None and name in NETWORKS}
    tables, flat = {}, {}
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in weights:
        parsed = parse_key(key)
        if isinstance(parsed, str):
            raise UserError(f"{str(path)!r}: {parsed}")
        network, layer, part = parsed
        if network and network not in present:
            raise UserError(f"{str(path)!r}: {key} adapts the {network}, which this model does not have")
        for name in [network] if network else [name for name in NETWORKS if name in present]:
            if name not in tables:
                tables[name] = layer_names(name, present[name])
                flat[name] = flattened(tables[name])
        found = find_layer(network, layer, tables, flat, key.startswith(tuple(KOHYA_PREFIXES)), present)
        if found is None:
            where = f"this model's {network}" if network else "this model"
            raise UserError(f"{str(path)!r}: {key} matches no layer of {where}: is the LoRA for another model?")
        group = groups.setdefault(found, {"name": layer})
        if part in group:
            raise UserError(f"{str(path)!r}: {key} and {group[part]} both give the {part} weight of one layer")
        group[part] = key
    configs = peft_configs(weights, path)
    updates: dict[str, dict[str, LowRankUpdate]] = {}
    for (network, ours), keys in groups.items():
        updates.setdefault(network, {})[ours] = read_update(weights, path, keys, present[network], network, ours,
                                                            configs.get(network, configs.get(None, {})))
    return updates


def read_update(weights: Weights, path: Path, keys: dict[str, str], network: nn.Module, network_name: str,
                ours: str, config: dict) -> LowRankUpdate:
    """The `LowRankUpdate` of one layer from its keys {"down", "up"[, "alpha"]} (and "name", the layer's name
    as the file writes it), checked against the layer."""
    missing = [part for part in ("down", "up") if part not in keys]
    if missing:
        given = next(key for part, key in keys.items() if part != "name")
        raise UserError(f"{str(path)!r}: {given} has no {missing[0]} weight beside it: the file is incomplete")
    layer = network.get_submodule(ours)
    down, up = (weights.get_as(keys[part], torch.float32) for part in ("down", "up"))
    rank = down.shape[0] if down.ndim else 0
    alpha = None
    if "alpha" in keys:
        value = weights[keys["alpha"]]
        if value.numel() != 1:
            raise UserError(f"{str(path)!r}: {keys['alpha']} has shape {tuple(value.shape)}, not one number")
        alpha = float(value.float().item())
        if not math.isfinite(alpha):
            raise UserError(f"{str(path)!r}: {keys['alpha']} is {alpha}: the file is damaged")
    elif rank:
        alpha = config_alpha(config, keys["name"], rank)
    if alpha is None or alpha == 0:  # no α (or kohya's 0): the update is B·A itself
        alpha = rank
    update = fitted(down, up, alpha, layer)
    if update is None:
        raise UserError(f"{str(path)!r}: {keys['down']} {tuple(down.shape)} and {keys['up']} {tuple(up.shape)} do "
                        f"not fit this model's {network_name} layer {ours} (weight {tuple(layer.weight.shape)}): "
                        "is the LoRA for another model?")
    device = layer.weight.device
    return LowRankUpdate(update.down.to(device), update.up.to(device), update.alpha)


# -- writing ----------------------------------------------------------------------------------
LAYOUTS = ("kohya", "diffusers")


def their_layer_names(name: str, network: nn.Module, unet_format: str) -> dict[str, str]:
    """{our layer: their layer} of the names a file is written in: diffusers' or the original U-Net's,
    transformers' CLIP with `text_model.` (what SD's tools write)."""
    if name == "unet":
        table = unet_names.foreign_names(network.config, unet_format)
    else:
        table = clip_names.transformers_names(network.config)
    return {ours.removesuffix(".weight"): theirs.removesuffix(".weight") for ours, theirs in table.items()
            if ours.endswith(".weight")}


def save_lora(updates: Mapping[str, Mapping[str, LowRankUpdate]], networks: Mapping[str, nn.Module],
              path: str | Path, layout: str = "kohya", unet_format: str = "diffusers") -> Path:
    """Write {network: {our layer: LowRankUpdate}} as one .safetensors file in kohya-ss's layout
    (what AUTOMATIC1111 and ComfyUI read; the U-Net's layers under diffusers' names, or with
    `unet_format="original"` SD's own) or in diffusers' (`load_lora_weights` reads it; α in the
    header's PEFT configs)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown LoRA layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if unet_format not in unet_names.FOREIGN_FORMATS:
        raise UserError(f"unknown U-Net names {unet_format!r}; choose one of: {', '.join(unet_names.FOREIGN_FORMATS)}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"a LoRA is written as one .safetensors file: name it so, not {str(path)!r}")
    tensors, configs = {}, {}
    for network, layers in updates.items():
        names = their_layer_names(network, networks[network], unet_format if layout == "kohya" else "diffusers")
        prefix = {"kohya": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
                  "diffusers": {"unet": "unet.", "text_encoder": "text_encoder."}}[layout][network]
        for ours, update in layers.items():
            theirs = names[ours]
            down, up = update.down.detach().float().cpu().contiguous(), update.up.detach().float().cpu().contiguous()
            if layout == "kohya":
                key = prefix + theirs.replace(".", "_")
                tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                                f"{key}.alpha": torch.tensor(update.alpha)})
            else:
                tensors.update({f"{prefix}{theirs}.lora_A.weight": down, f"{prefix}{theirs}.lora_B.weight": up})
        if layout == "diffusers" and layers:
            configs[network] = lora_config({names[ours]: update for ours, update in layers.items()})
    metadata = {"format": "pt"}
    if configs:
        metadata[METADATA_KEY] = json.dumps({f"{network}.{field}": value for network, config in configs.items()
                                             for field, value in config.items()}, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def lora_config(layers: Mapping[str, LowRankUpdate]) -> dict:
    """The PEFT LoraConfig fields of these layers ({their layer name: update}): the commonest rank and α,
    the others by name (matched at a name's end, so without transformers' `text_model.`)."""
    def pattern(name: str) -> str:
        return re.escape(name.removeprefix("text_model."))

    rank = Counter(update.rank for update in layers.values()).most_common(1)[0][0]
    alpha = Counter(update.alpha for update in layers.values()).most_common(1)[0][0]
    return {"r": rank, "lora_alpha": alpha,
            "target_modules": sorted(name.removeprefix("text_model.") for name in layers),
            "rank_pattern": {pattern(name): u.rank for name, u in layers.items() if u.rank != rank},
            "alpha_pattern": {pattern(name): u.alpha for name, u in layers.items() if u.alpha != alpha},
            "use_rslora": False, "use_dora": False}
