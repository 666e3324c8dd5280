"""The `t2i` command line: thin over the library. Bad input ends in one line on stderr.

One module per command group parses its options, calls the library and prints what it returns
(report objects print as tables); errors the library raises (`UserError`) become one line.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .evaluate import add_bench, add_eval
from .generate import add_generate, add_noise, add_sample
from .models import add_convert, add_data, add_export
from .train import add_train, add_train_vae


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="t2i", description="Text-to-image diffusion, from the DDPM maths up.")
    parser.add_argument("--version", action="version", version=f"t2i {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_generate, add_train, add_train_vae, add_sample, add_noise, add_eval, add_export, add_convert,
                add_data, add_bench):
        add(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"t2i: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            args.run(args)
        except UserError as error:
            print(f"t2i: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("t2i: interrupted", file=sys.stderr)
            return 130
    return 0
