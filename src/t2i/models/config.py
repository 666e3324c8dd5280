"""The one base of the model configs: a dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from ..errors import UserError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for `@dataclass` configs: every field is a constructor argument, saved as JSON."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict) -> C:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown {cls.__name__} keys {sorted(unknown)}: was the model saved by a newer t2i?")
        return cls(**values)


def check_divisible(width: int, height: int, factor: int, what: str, needs: str, fix: str) -> None:
    """Refuse sides that a network's levels cannot halve down evenly, naming the nearest sides that
    they can: "{what} is W×H; {needs} sides divisible by F: {fix} (W'×H', say)"."""
    if width < 1 or height < 1 or width % factor or height % factor:
        near = [max(factor, round(side / factor) * factor) for side in (width, height)]
        raise UserError(f"{what} is {width}×{height}; {needs} sides divisible by {factor}: {fix} "
                        f"({near[0]}×{near[1]}, say)")
