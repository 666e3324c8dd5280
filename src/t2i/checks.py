"""What callers pass, checked before any work: whole numbers and finite numbers in their ranges.

Every entry point (the Pipeline, sampling, training, the CLI, the server) checks through these,
so a bad value gets the same one-line `UserError` wherever it comes in, naming the argument,
its range and the value given. bool is not taken for a number: `steps=True` is a mistake.
"""

from __future__ import annotations

import math
import numbers

from .errors import UserError

MAX_SIDE = 16384  # pixels an image side: more than any model here or in Stable Diffusion's family draws


def _range_text(minimum, maximum, above: bool = False) -> str:
    if minimum is not None and maximum is not None:
        return f" above {minimum} and at most {maximum}" if above else f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" above {minimum}" if above else f" of at least {minimum}"
    return f" of at most {maximum}" if maximum is not None else ""


def whole_number(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int, refused unless it is a whole number (an integral float such as 4.0 is
    taken) within [minimum, maximum]."""
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or (minimum is not None and value < minimum) or \
            (maximum is not None and value > maximum):
        raise UserError(f"{name} must be a whole number{_range_text(minimum, maximum)}, got {value!r}")
    return int(value)


def real_number(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
                above: bool = False) -> float:
    """`value` as a float, refused unless it is a finite number within [minimum, maximum] (above
    `minimum`, not equal to it, when `above`)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not real or not math.isfinite(value) or (minimum is not None and (value <= minimum if above else
                                                                         value < minimum)) or \
            (maximum is not None and value > maximum):
        raise UserError(f"{name} must be a finite number{_range_text(minimum, maximum, above)}, got {value!r}")
    return float(value)
