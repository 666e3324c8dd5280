"""How much memory a device has free, and a refusal when work would not fit in it.

Sizes come from a user (an image side, a batch, a config's channels); a refusal from an
estimate made from the shapes, before anything is allocated, is one line, where the
allocator's failure would come after minutes of swapping or as a traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError


def available_memory(device: torch.device | str = "cpu", root: Path = Path("/")) -> int | None:
    """Bytes free on `device`: for the CPU, MemAvailable of /proc/meminfo, or less where a container's memory
    limit leaves less (`container_free`), else psutil's estimate where psutil is installed (None where neither
    is); for a CUDA device, what the driver reports free plus what torch's allocator holds cached but unused
    (it hands that out first). `root` is where /proc and /sys are (tests give another)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free, limited = int(line.split()[1]) * 1024, container_free(root)
                return free if limited is None else min(free, limited)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # not a dependency: where installed, it knows the systems without /proc (macOS, Windows)
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


# (limit, usage, stat) of a control group's memory: cgroup v2, then v1
CGROUP_FILES = (("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory.current", "sys/fs/cgroup/memory.stat"),
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "sys/fs/cgroup/memory/memory.stat"))


def container_free(root: Path = Path("/")) -> int | None:
    """What a container's memory limit (its control group's, as `docker run --memory` sets it) leaves free: the
    limit less what the group uses, less the page cache it could drop (inactive files); None without a limit.
    Past the limit the kernel kills the process, whatever the host has free."""
    for limit_file, usage_file, stat_file in CGROUP_FILES:
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1 writes "no limit" as a huge number
            return None
        try:
            stat = dict(line.split()[:2] for line in (root / stat_file).read_text().splitlines() if line.strip())
            reclaimable = int(stat.get("inactive_file", stat.get("total_inactive_file", 0)))
        except (OSError, ValueError):
            reclaimable = 0
        return max(0, int(limit) - usage + reclaimable)
    return None


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
