"""The one base of every config: a dataclass whose fields are checked against their types and
ranges when it is made, and that round-trips through JSON.

Models, training runs and the sections of a model folder's config.json all read through it, so
a wrong type, a value out of range, NaN, an unknown or a missing key is one `UserError` naming
the key (and, read from a file, the file and its section) before anything is built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import ClassVar, TypeVar

from ..checks import real_number, whole_number
from ..errors import UserError

C = TypeVar("C", bound="ModelConfig")
INT_RANGE = (0, 1_000_000)  # a whole-number field's range where its config names none


class ModelConfig:
    """Mixin for `@dataclass` configs: every field is a constructor argument, saved as JSON.

    `RANGES` maps a field to (minimum, maximum) or (minimum, maximum, "above"), the minimum then
    excluded; for a tuple field, the range of its items. Whole numbers default to `INT_RANGE`;
    floats must be finite. Subclasses with a `__post_init__` of their own call this one first."""

    RANGES: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, parse_value(f.name, getattr(self, f.name), hints[f.name], self.RANGES.get(f.name)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values, source: str = "") -> C:
        """The config a JSON object describes; `source` ("'run/config.json', section unet") prefixes
        every error. Unknown keys are refused (a newer t2i's?), and so are missing required ones."""
        where = f"{source}: " if source else ""
        if not isinstance(values, dict):
            raise UserError(f"{where}must be a JSON object of {cls.__name__} settings, got {type(values).__name__}")
        fields = dataclasses.fields(cls)
        unknown = sorted(set(values) - {f.name for f in fields})
        if unknown:
            raise UserError(f"{where}unknown {cls.__name__} keys {unknown}: was it saved by a newer t2i?")
        missing = [f.name for f in fields if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserError(f"{where}{cls.__name__} keys {missing} are missing")
        try:
            return cls(**values)
        except UserError as error:
            raise UserError(f"{where}{error}") from None


def parse_value(name: str, value, kind, bounds: tuple | None):
    """`value` checked against the annotation `kind` (bool, int, float, str, `X | None`,
    `tuple[X, ...]`), and numbers against `bounds`; JSON's lists become the tuples annotated."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{name} must be a list, got {value!r}")
        item = typing.get_args(kind)[0]
        return tuple(parse_value(f"{name}[{i}]", v, item, bounds) for i, v in enumerate(value))
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false, got {value!r}")
        return value
    if kind is int:
        return whole_number(name, value, *(bounds or INT_RANGE)[:2])
    if kind is float:
        minimum, maximum, *above = bounds or (None, None)
        return real_number(name, value, minimum, maximum, above=bool(above))
    if kind is str and not isinstance(value, str):
        raise UserError(f"{name} must be a string, got {value!r}")
    return value


def check_divisible(width: int, height: int, factor: int, what: str, needs: str, fix: str) -> None:
    """Refuse sides that a network's levels cannot halve down evenly, naming the nearest sides that
    they can: "{what} is W×H; {needs} sides divisible by F: {fix} (W'×H', say)"."""
    if width < 1 or height < 1 or width % factor or height % factor:
        near = [max(factor, round(side / factor) * factor) for side in (width, height)]
        raise UserError(f"{what} is {width}×{height}; {needs} sides divisible by {factor}: {fix} "
                        f"({near[0]}×{near[1]}, say)")
