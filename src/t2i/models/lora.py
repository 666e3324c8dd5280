"""Low-rank adaptation (Hu et al. 2021, "LoRA"): a frozen layer plus a trained low-rank update.

A LoRA changes a layer's weight W [out, in] into W + (α/r)·B·A, with A [r, in] (the "down"
projection) and B [out, r] (the "up" one), r ≪ min(out, in) (Hu et al. 2021, §4.1, eq. 3: h =
W₀x + BAx, the update scaled by α/r so that its size does not change with r). A convolution's
update is the same product taken over the kernel (LoCon, as LyCORIS trains it): A is a k×k
convolution [r, in, k, k] with the layer's stride and padding, B a 1×1 one [out, r, 1, 1], so
ΔW[o, i, :, :] = Σ_j B[o, j] A[j, i, :, :].

Whoever uses a LoRA weighs it by a multiplier s (AUTOMATIC1111's `<lora:name:s>`, diffusers'
`lora_scale`): W' = W + s·(α/r)·B·A. `LoRAStack` applies several LoRAs to a set of networks in
either of two ways: on the fly, a forward hook adds s·(α/r)·B(A(x)) to the layer's output and
the weights stay as they are, so s can change, or the LoRA go, at any time; or fused into the
weights, which costs nothing per call. Fusing keeps each weight it changes as it was (on the CPU),
and computes W' from that copy, so unfusing, or fusing again at other scales, restores the
original weights bit for bit rather than to within the rounding of a subtraction.

Training a LoRA (`LowRankAdapters`) makes the same `LowRankUpdate`s of trainable parameters: a
`LoRA` of them in a `LoRAStack` applies them on the fly, and gradients flow through the hook into
A and B while W₀ stays frozen; what is saved (`convert.lora_names.save_lora`) is their updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .layers import Attention

Target = tuple[str, str]  # (network name, module name)


@dataclass(frozen=True, eq=False)  # tensors: compared by identity
class LowRankUpdate:
    """ΔW = (α/r)·B·A of one layer: `down` A and `up` B shaped for that layer, [r, in] and [out, r] for a
    linear map, [r, in, kh, kw] and [out, r, 1, 1] for a convolution (see `fitted`); `alpha` α."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scaling(self) -> float:
        """α/r, Hu et al.'s scale of the update."""
        return self.alpha / self.rank

    def delta_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(α/r)·B·A in the layer's weight shape, computed in `dtype`."""
        up, down = self.up.to(dtype).flatten(1), self.down.to(dtype)
        return self.scaling * (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])

    def output(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """B(A(x)) for the input x of `layer`: A applied as the layer applies its own weight (a
        convolution with its stride, padding and dilation), B as a linear map or a 1×1 convolution."""
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)
        if down.ndim == 2:
            return F.linear(F.linear(x, down), up)
        h = F.conv2d(x, down, None, layer.stride, layer.padding, layer.dilation)
        return F.conv2d(h, up)


def layer_kind(layer: nn.Module) -> str | None:
    """"linear" or "conv" for the layers a LoRA can adapt, None for any other module."""
    weight = getattr(layer, "weight", None)
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(weight, torch.Tensor) and weight.ndim == 4 and getattr(layer, "groups", 1) == 1 and \
            hasattr(layer, "stride"):  # nn.Conv2d, or a faster convolution that keeps its geometry
        return "conv"
    return None


def fitted(down: torch.Tensor, up: torch.Tensor, alpha: float, layer: nn.Module) -> LowRankUpdate | None:
    """A and B reshaped for `layer` (a linear map's update stored as 1×1 convolutions, as files
    store it for SD v1's proj_in, or the other way round), or None if they do not fit it."""
    kind, weight = layer_kind(layer), getattr(layer, "weight", None)
    if kind is None or down.ndim not in (2, 4) or up.ndim not in (2, 4) or not 0 < down.shape[0] == up.shape[1] or \
            any(n != 1 for n in up.shape[2:]) or up.shape[0] != weight.shape[0] or down.shape[1] != weight.shape[1]:
        return None
    rank, out = down.shape[0], weight.shape[0]
    if kind == "linear":
        if any(n != 1 for n in down.shape[2:]):
            return None
        return LowRankUpdate(down.reshape(rank, -1), up.reshape(out, rank), float(alpha))
    kernel = tuple(weight.shape[2:])
    if down.ndim == 2 and kernel != (1, 1) or down.ndim == 4 and tuple(down.shape[2:]) != kernel:
        return None
    return LowRankUpdate(down.reshape(rank, -1, *kernel), up.reshape(out, rank, 1, 1), float(alpha))


class LoRA:
    """One LoRA: {network name: {module name: LowRankUpdate}}, its multiplier `scale` (s) and whether
    it is fused into the weights."""

    def __init__(self, name: str, updates: Mapping[str, Mapping[str, LowRankUpdate]], scale: float = 1.0):
        self.name, self.scale, self.fused = name, float(scale), False
        self.updates = {(network, module): update for network, modules in updates.items()
                        for module, update in modules.items()}

    @property
    def targets(self) -> set[Target]:
        return set(self.updates)

    def __repr__(self) -> str:
        return f"LoRA({self.name!r}, {len(self.updates)} layers, scale={self.scale}, fused={self.fused})"


class LoRAStack:
    """The LoRAs applied to some networks ({"unet": ..., "text_encoder": ...}), by name.

    A layer's weight is always its original W plus s·ΔW of each fused LoRA that adapts it, and its
    output gets s·(α/r)·B(A(x)) of each LoRA on the fly. `refresh` re-establishes both for the layers
    a change touched; every method that changes something calls it.
    """

    def __init__(self, networks: Mapping[str, nn.Module | None]):
        self.networks = {name: network for name, network in networks.items() if network is not None}
        self.loras: dict[str, LoRA] = {}
        self.originals: dict[Target, torch.Tensor] = {}  # weights as they were before any fusing, on the CPU
        self.on_the_fly: dict[Target, list[tuple[LoRA, LowRankUpdate]]] = {}
        self.hooks: dict[Target, torch.utils.hooks.RemovableHandle] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.loras

    def __len__(self) -> int:
        return len(self.loras)

    def layer(self, target: Target) -> nn.Module:
        network, module = target
        return self.networks[network].get_submodule(module)

    def get(self, name: str) -> LoRA:
        if name not in self.loras:
            loaded = ", ".join(map(repr, self.loras)) or "none"
            raise UserError(f"no LoRA named {name!r} is loaded (loaded: {loaded})")
        return self.loras[name]

    def add(self, lora: LoRA, fuse: bool = False) -> None:
        """Apply `lora` on the fly, or fused into the weights."""
        if lora.name in self.loras:
            raise UserError(f"a LoRA named {lora.name!r} is already loaded: unload it first, or give another name")
        missing = sorted({network for network, _ in lora.targets} - set(self.networks))
        if missing:
            raise UserError(f"LoRA {lora.name!r} adapts the {', '.join(missing)}, which this model does not have")
        lora.fused = fuse
        self.loras[lora.name] = lora
        self.refresh(lora.targets)

    def set_scale(self, name: str, scale: float) -> None:
        lora = self.get(name)
        lora.scale = float(scale)
        if lora.fused:  # on the fly, the hooks read the scale at each call
            self.refresh(lora.targets)

    def remove(self, name: str) -> None:
        lora = self.loras.pop(self.get(name).name)
        self.refresh(lora.targets)

    def fuse(self, names: Iterable[str] | None = None) -> None:
        """Write the LoRAs named (all by default) into the weights at their current scales."""
        self._set_fused(names, True)

    def unfuse(self, names: Iterable[str] | None = None) -> None:
        """Take the LoRAs named (all by default) out of the weights again; they go on applying on the fly."""
        self._set_fused(names, False)

    def _set_fused(self, names: Iterable[str] | None, fused: bool) -> None:
        loras = [self.get(name) for name in names] if names is not None else list(self.loras.values())
        for lora in loras:
            lora.fused = fused
        self.refresh(set().union(*(lora.targets for lora in loras)))

    @torch.no_grad()
    def refresh(self, targets: Iterable[Target]) -> None:
        """Make each layer of `targets` what the LoRAs now say: its weight and its hook."""
        for target in sorted(targets):
            layer = self.layer(target)
            self._set_weight(target, layer)
            self._set_hook(target, layer)

    def _set_weight(self, target: Target, layer: nn.Module) -> None:
        """W = W₀ + Σ s·ΔW over the fused LoRAs, from the kept original W₀ in float64 and rounded once;
        W₀ itself (and no copy kept) when none is fused."""
        fused = [(lora, lora.updates[target]) for lora in self.loras.values() if lora.fused and target in lora.updates]
        if fused:
            if target not in self.originals:
                self.originals[target] = layer.weight.detach().to("cpu", copy=True)
            total = self.originals[target].to(layer.weight.device, torch.float64)
            for lora, update in fused:
                total += lora.scale * update.delta_weight().to(total.device)
            layer.weight.copy_(total)
        elif target in self.originals:
            layer.weight.copy_(self.originals.pop(target))
        else:
            return
        if hasattr(layer, "refresh"):
            layer.refresh()  # what the layer derived from its weight (Winograd's filters) is stale

    def _set_hook(self, target: Target, layer: nn.Module) -> None:
        """A forward hook on the layer while any LoRA on it applies on the fly, none otherwise."""
        self.on_the_fly[target] = [(lora, lora.updates[target]) for lora in self.loras.values()
                                   if not lora.fused and target in lora.updates]
        if not self.on_the_fly[target]:
            del self.on_the_fly[target]
            if target in self.hooks:
                self.hooks.pop(target).remove()
        elif target not in self.hooks:
            self.hooks[target] = layer.register_forward_hook(self._hook(target))

    def _hook(self, target: Target):
        def add_updates(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            for lora, update in self.on_the_fly.get(target, ()):
                if lora.scale:
                    output = output + (lora.scale * update.scaling) * update.output(layer, args[0])
            return output

        return add_updates

    def reattach(self) -> None:
        """Hook the layers again after a network's layers were replaced by equivalent ones (e.g.
        `kernels.winograd.use_winograd`, which keeps the weights but not the hooks)."""
        for handle in self.hooks.values():
            handle.remove()
        self.hooks = {target: self.layer(target).register_forward_hook(self._hook(target))
                      for target in self.on_the_fly}


# -- training ---------------------------------------------------------------------------------
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")


def attention_projections(network: nn.Module, within: Sequence[str] | None = None) -> list[str]:
    """The names of the Q, K, V and output projections of every attention in `network` (or in its
    submodules named `within`): what LoRA adapts in SD's trainers (Hu et al. 2021, §7.1, adapt W_q
    and W_v of a transformer; diffusers' and kohya's scripts all four)."""
    prefixes = tuple(f"{name}." for name in within) if within is not None else ("",)
    return [f"{name}.{projection}" for name, module in network.named_modules()
            if isinstance(module, Attention) and name.startswith(prefixes) for projection in ATTENTION_PROJECTIONS]


class LowRankAdapter(nn.Module):
    """A trainable ΔW = (α/r)·B·A of a linear layer [out, in] (Hu et al. 2021, §4.1): B [out, r] zero, so
    that ΔW = 0 and training starts from the frozen W₀, and A [r, in] random (Gaussian in the paper;
    here Kaiming-uniform, as `nn.Linear` draws its weights and PEFT its A), so that B's first gradient,
    which goes through A, is not zero."""

    def __init__(self, layer: nn.Linear, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = layer.weight.shape
        self.alpha = float(alpha)
        self.down = nn.Parameter(torch.empty(rank, in_features, device=layer.weight.device))
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=layer.weight.device))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    @property
    def update(self) -> LowRankUpdate:
        """The update these parameters make (differentiable in them)."""
        return LowRankUpdate(self.down, self.up, self.alpha)


class LowRankAdapters(nn.ModuleDict):
    """Trainable adapters of rank r and scale α on linear layers of some networks: `self[network]` holds
    the `LowRankAdapter` of each layer (under its name with "." written "/", which module names cannot
    hold). `updates()` is what `LoRA` applies and `save_lora` writes."""

    def __init__(self, networks: Mapping[str, nn.Module], layers: Mapping[str, Sequence[str]], rank: int,
                 alpha: float):
        super().__init__()
        for network, names in layers.items():
            adapters = {}
            for name in names:
                layer = networks[network].get_submodule(name)
                if not isinstance(layer, nn.Linear):
                    raise ValueError(f"{network} layer {name} is not a linear layer")
                width = min(layer.weight.shape)
                if rank > width:
                    raise UserError(f"lora_rank {rank} is larger than the {width} features of the {network}'s layer "
                                    f"{name}: choose a rank of at most {width}")
                adapters[name.replace(".", "/")] = LowRankAdapter(layer, rank, alpha)
            self[network] = nn.ModuleDict(adapters)

    def updates(self) -> dict[str, dict[str, LowRankUpdate]]:
        """{network: {layer: LowRankUpdate}} of the adapters' current parameters."""
        return {network: {name.replace("/", "."): adapter.update for name, adapter in adapters.items()}
                for network, adapters in self.items()}
