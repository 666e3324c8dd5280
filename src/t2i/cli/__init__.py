"""The `t2i` command line: thin over the library. Bad input ends in one line on stderr.

One module per command group parses its options, calls the library and prints what it returns
(report objects print as tables); errors the library raises (`UserError`) become one line, and
so do argparse's, running out of memory or disk, and (as a bug to report) anything else.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..errors import OUT_OF_MEMORY, UserError, out_of_memory, peer_lost
from .evaluate import add_bench, add_eval
from .generate import add_generate, add_info, add_noise, add_sample
from .models import add_convert, add_data, add_export
from .serve import add_serve
from .train import add_train, add_train_vae

TRACEBACK_VARIABLE = "T2I_TRACEBACK"  # set to 1: unexpected errors show their traceback


class Parser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (with where to find the usage) instead of the usage and the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="t2i", description="Text-to-image diffusion, from the DDPM maths up.")
    parser.add_argument("--version", action="version", version=f"t2i {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_generate, add_train, add_train_vae, add_sample, add_noise, add_info, add_eval, add_export,
                add_convert, add_data, add_bench, add_serve):
        add(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"t2i: warning: {message}", file=sys.stderr)


def failure(error: BaseException) -> tuple[str, int]:
    """The one line (and exit status) for an error that is not a `UserError`: the machine's limits
    (memory, disk, permissions) are the user's to fix; anything else is a bug in t2i."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    if out_of_memory(error):
        return OUT_OF_MEMORY, 2
    if peer_lost(error):
        return ("another process of this distributed run stopped (its log says why); under torchrun "
                "--max-restarts the group starts again from the last checkpoint"), 1
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                                      errno.EROFS, errno.ENOENT, errno.EISDIR, errno.ENOTDIR,
                                                      errno.EEXIST):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or text}{where}", 2
    return (f"internal error, a bug in t2i ({type(error).__name__}: {text}); please report it, with the traceback "
            f"that {TRACEBACK_VARIABLE}=1 shows"), 1


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
        except Exception as error:
            if os.environ.get(TRACEBACK_VARIABLE):
                raise
            message, status = failure(error)
            print(f"t2i: error: {message}", file=sys.stderr)
            return status
    return 0
