"""Where and in what precision networks run: one choice, shared by generation and training."""

from __future__ import annotations

import torch

from .errors import UserError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    """A torch dtype, or its name ("float16", ...); None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
