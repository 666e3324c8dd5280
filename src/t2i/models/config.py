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
