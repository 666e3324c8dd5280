"""What the command groups share: argument types, help formatting, the options a resume was given."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path



class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where it tells something: not for None, not for a flag's own
    True/False, not where the help already names the default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text:
            return text
        return super()._get_help_string(action)


def positive(kind, maximum=None):
    """An argparse type: a positive `kind` (int or float), finite, at most `maximum` if given."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            kind_name = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"must be a positive {kind_name}, got {text!r}") from None
        if not 0 < value < float("inf") or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be positive{f' and at most {maximum}' * (maximum is not None)}, "
                                             f"got {text}")
        return value
    return parse


def fraction(text: str) -> float:
    """An argparse type: a share in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to below 1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to below 1, got {text}")
    return value


def seed_arg(text: str) -> int:
    """An argparse type: a seed, a whole number from 0 to `guards.MAX_SEED` (torch's generators take no more)."""
    from ..guards import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text}")
    return value


def path_arg(text: str) -> Path:
    """An argparse type for a path: an empty one (which Path reads as the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path")
    return Path(text)


def name_or_path(text: str) -> str:
    """An argparse type for a name or a path kept as text (--data, --vae), refused empty as `path_arg` refuses it."""
    path_arg(text)
    return text


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


class _Given(argparse.Action):
    """argparse's "store" action (and with nargs=0 its flags) that also notes the option in
    `args.given`: a resumed run is passed the settings given, whatever their value."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.given = namespace.given | {self.dest}


def note_given(parser) -> None:
    for name in (None, "store"):
        parser.register("action", name, _Given)
    parser.register("action", "store_true", functools.partial(_Given, nargs=0, const=True, default=False))
    parser.register("action", "store_false", functools.partial(_Given, nargs=0, const=False, default=True))
    parser.set_defaults(given=frozenset())


def resume_changes(args, names: dict[str, str]) -> dict:
    """The settings given to `t2i train --resume` or `train-vae --resume`, under their names in the
    training config (`names` maps the options named otherwise)."""
    return {names.get(dest, dest): getattr(args, dest) for dest in args.given - {"out", "resume"}}


PRECISION_NAMES = ("fp32", "bf16", "fp16", "float32", "bfloat16", "float16")


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision (also spelt --dtype): what the networks compute in."""
    p.add_argument("--precision", "--dtype", dest="dtype", default=None, choices=PRECISION_NAMES,
                   help="what the networks compute in (default: bf16 for Stable Diffusion where the CPU or GPU has it "
                        "natively, else fp32; fp16 is for GPUs)")
