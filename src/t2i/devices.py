"""Where and in what precision networks run: one choice, shared by generation and training."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # the short names, as in --mixed-precision
# Networks at least this large compute in bfloat16 by default where it is fast: SD's U-Net (860M parameters) runs
# a step in 0.4x of float32's time on a CPU with AMX; our emoji models (~10M) are too small to gain, and are
# measured in float32.
BFLOAT16_PARAMETERS = 100_000_000


def available_devices() -> list[str]:
    """The devices torch can run on here: "cpu", then "cuda:0", "cuda:1", ... and "mps" if present."""
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (a GPU if there is one, else the CPU) or a device torch knows that is present here."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"unknown device {name!r} ({error}): choose auto or one of {', '.join(available_devices())}") \
            from None
    present = device.type == "cpu" or (device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()) \
        or (device.type == "mps" and "mps" in available_devices())
    if not present:
        raise UserError(f"there is no device {str(device)!r} here: choose auto or one of "
                        f"{', '.join(available_devices())}")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype, or its name ("float16", ...) or short name ("fp16", ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    dtype = PRECISIONS.get(dtype, dtype)
    if dtype not in DTYPES:
        raise UserError(f"unknown precision {dtype!r}: choose one of {', '.join(PRECISIONS)}")
    return DTYPES[dtype]


@functools.cache
def cpu_flags(root: Path = Path("/")) -> frozenset[str]:
    """The instruction-set flags this CPU reports in /proc/cpuinfo (none where there is no such file).
    `root` is where /proc is (tests give another)."""
    try:
        text = (root / "proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic is native on `device`: a GPU that has it, or a CPU with AVX512-BF16 or AMX
    (elsewhere oneDNN emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def amx(device: torch.device) -> bool:
    """Whether `device` is a CPU with AMX tiles for bfloat16, where torch's fused bfloat16 attention kernel is
    also faster (without them it is no faster than float32's: `models.layers.attend`)."""
    return device.type == "cpu" and "amx_bf16" in cpu_flags()


def default_dtype(networks: torch.nn.Module, device: torch.device) -> torch.dtype:
    """What a pipeline computes in when no precision is asked for: bfloat16 for large networks where it is
    native (`fast_bfloat16`), float32 otherwise."""
    parameters = sum(p.numel() for p in networks.parameters())
    return torch.bfloat16 if parameters >= BFLOAT16_PARAMETERS and fast_bfloat16(device) else torch.float32


def channels_last_pays(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether convolutions run faster on NHWC feature maps: oneDNN's bfloat16 kernels on the CPU (SD's U-Net
    step 0.73x the time of NCHW's, the emoji U-Net's training step 0.84x: docs/benchmarks.md)."""
    return device.type == "cpu" and dtype == torch.bfloat16
