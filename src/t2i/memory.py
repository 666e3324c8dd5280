"""How much memory a device has free, and a refusal when work would not fit in it.

Sizes come from a user (an image side, a batch, a config's channels); a refusal from an
estimate made from the shapes, before anything is allocated, is one line, where the
allocator's failure would come after minutes of swapping or as a traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free on `device`: for the CPU, MemAvailable of /proc/meminfo, else psutil's estimate where
    psutil is installed (None where neither is); for a CUDA device, what the driver reports free plus
    what torch's allocator holds cached but unused (it hands that out first)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # not a dependency: where installed, it knows the systems without /proc (macOS, Windows)
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def check_fits(nbytes: float, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse work estimated at `nbytes` when the device has less free: "{what} needs about N GiB and
    the cpu has M GiB free: {fix}". Where the free memory is unknown nothing is refused."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        raise UserError(f"{what} needs about {format_bytes(nbytes)} and the {torch.device(device).type} has "
                        f"{format_bytes(free)} free: {fix}")
