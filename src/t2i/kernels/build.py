"""Building and running our C kernels: compiled with the system's C compiler on first use, cached in
~/.cache/t2i/kernels under a hash of the source and the flags, loaded with ctypes (which releases the
GIL during a call, so that parts of one kernel run on several threads at once)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..devices import cpu_flags
from ..files import short_hash

log = logging.getLogger(__name__)

PARALLEL_MIN_VALUES = 1 << 18  # work on fewer numbers than this runs on one thread: the hand-off would cost more
AVX512_BF16 = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mfma"]


def avx512_bf16_library(source: Path, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """`load_library` of a kernel written for AVX512-BF16: None where the CPU does not have it."""
    if "avx512_bf16" not in cpu_flags():
        log.info("this CPU has no AVX512-BF16: %s is not built", source.name)
        return None
    return load_library(source, [AVX512_BF16], declare)


def load_library(source: Path, flag_sets: Sequence[Sequence[str]],
                 declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """`source` compiled with the first of `flag_sets` that builds and loads, its functions' types set by
    `declare`; None (logged) when there is no working C compiler or no set builds."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not source.is_file():
        log.info("no C compiler found, or no %s: it is not built", source.name)
        return None
    for flags in flag_sets:
        key = short_hash(source.read_bytes(), " ".join([compiler, *flags, platform.machine()]))
        library = Path.home() / ".cache" / "t2i" / "kernels" / f"{source.stem}-{key}.so"
        try:
            if not library.exists():
                _compile(compiler, list(flags), source, library)
            lib = ctypes.CDLL(str(library))
        except (OSError, subprocess.CalledProcessError) as e:
            log.info("building %s with %s failed: %s", source.name, flags, getattr(e, "stderr", None) or e)
            continue
        declare(lib)
        return lib
    log.info("could not compile %s", source.name)
    return None


def _compile(compiler: str, flags: list[str], source: Path, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        subprocess.run([compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(built)], check=True,
                       capture_output=True, text=True)
        os.replace(built, library)  # atomic: a concurrent process sees all of it or none


def run_split(kernel, units: int, values: int, *args) -> None:
    """Run kernel(*args, start, end) over [0, units), split in as many parts as PyTorch has
    threads when the work (`values` numbers) is large enough to pay for the hand-off; this
    thread runs the last part."""
    parts = max(1, min(torch.get_num_threads(), units))
    if parts == 1 or values < PARALLEL_MIN_VALUES:
        kernel(*args, 0, units)
        return
    bounds = [(units * i // parts, units * (i + 1) // parts) for i in range(parts)]
    others = [_pool(parts - 1).submit(kernel, *args, *b) for b in bounds[:-1]]
    kernel(*args, *bounds[-1])
    for job in others:
        job.result()


@cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="t2i-kernel")


# a forked child (a data-loader worker, a server's helper) has none of its parent's threads: it makes its own pool
os.register_at_fork(after_in_child=_pool.cache_clear)
