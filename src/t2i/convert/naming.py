"""Weights under other names: one table per foreign format, read in both directions.

For each network a `*_names` module describes a foreign format (diffusers, the original
Stable Diffusion checkpoints, transformers) as a dict {our key: their key} over every
weight of the network built from a config. Loading inverts the dict and renames; saving renames
forward. So one table serves both directions, and a round trip is the identity by
construction; the checks here say which weights are missing, misshapen or left over.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import UserError


def replace_all(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """`name` with each (ours, theirs) pair's first string replaced by its second, in order."""
    for ours, theirs in pairs:
        name = name.replace(ours, theirs)
    return name


def module_names(network: nn.Module, prefixes: Mapping[str, str],
                 inner: Callable[[nn.Module | None, str], str]) -> dict[str, str]:
    """{our key: their key} for every weight of `network`.

    `prefixes` maps each of our block prefixes to theirs; a key is split at the longest
    prefix it starts with, and the rest is renamed by `inner(block, rest)`, which sees the
    block (so a ResBlock's `norm1` and a transformer's `norm1` can be told apart).
    """
    modules = dict(network.named_modules())
    names = {}
    for key in network.state_dict():
        prefix = max((p for p in prefixes if key == p or key.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            raise KeyError(f"no foreign name for {key!r}")  # a table out of step with the network
        names[key] = prefixes[prefix] + inner(modules.get(prefix), key[len(prefix):])
    if len(set(names.values())) != len(names):
        raise KeyError("two weights map to the same foreign name")
    return names


def block_table_names(network: type[nn.Module], config, prefixes: Mapping[str, str], block: type[nn.Module],
                      block_names: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`module_names` of a stack of one kind of `block` renamed by a table (a text transformer's
    layers), the network built on the meta device from `config` (no memory, no weights)."""
    def inner(module: nn.Module | None, rest: str) -> str:
        return replace_all(rest, block_names) if isinstance(module, block) else rest

    with torch.device("meta"):
        model = network(config)
    return module_names(model, prefixes, inner)


def fits(value: torch.Tensor, shape: torch.Size) -> bool:
    """Whether `value` is a weight of `shape` up to size-1 axes (a linear map stored as a 1×1 conv)."""
    return value.shape == shape or [n for n in value.shape if n != 1] == [n for n in shape if n != 1]


def to_ours(state_dict: Mapping[str, torch.Tensor], names: Mapping[str, str], expected: Mapping[str, torch.Tensor],
            mismatch: str) -> dict[str, torch.Tensor]:
    """`state_dict` in their names as a state dict in ours, for a network whose weights are
    `expected` (shapes only; a meta-device state dict will do).

    Linear maps stored as 1×1 convs (or the other way round) are reshaped, nothing else is
    changed. Raises UserError unless every weight is filled with the right shape and
    nothing is left over.
    """
    ours_of = {theirs: ours for ours, theirs in names.items()}
    converted, unused = {}, []
    for key, value in state_dict.items():
        ours = ours_of.get(key)
        if ours is None:
            unused.append(key)
        elif fits(value, expected[ours].shape):
            converted[ours] = value.reshape(expected[ours].shape)
    wrong = sorted(ours for ours in expected if ours not in converted)
    if wrong or unused:
        wrong_theirs = [names[k] for k in wrong]
        raise UserError(f"{mismatch}: missing or misshapen {wrong_theirs[:3]}, unused {unused[:3]} "
                        f"({len(wrong)} and {len(unused)} in all)")
    return converted


def to_theirs(state_dict: Mapping[str, torch.Tensor], names: Mapping[str, str],
              as_conv: Callable[[str], bool] = lambda key: False) -> dict[str, torch.Tensor]:
    """Our state dict in their names; the linear weights they store as 1×1 convs (their
    keys for which `as_conv` is true) get the two trailing axes."""
    return {names[key]: value[:, :, None, None] if value.ndim == 2 and as_conv(names[key]) else value
            for key, value in state_dict.items()}
