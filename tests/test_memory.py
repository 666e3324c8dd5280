"""Free memory as `memory.available_memory` reads it, and where it cannot."""

import sys
import types
from pathlib import Path

import pytest
import torch

from t2i.memory import available_memory


def test_the_cpu_reads_meminfo_else_psutil_else_nothing(monkeypatch):
    assert available_memory() is None or available_memory() > 0
    real = Path.read_text

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise OSError("no /proc here")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    monkeypatch.setitem(sys.modules, "psutil", types.SimpleNamespace(
        virtual_memory=lambda: types.SimpleNamespace(available=3 * 2**30)))
    assert available_memory("cpu") == 3 * 2**30
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert available_memory("cpu") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_device_counts_what_torch_holds_cached_as_free():
    before = available_memory("cuda")
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    del block  # back to torch's cache, not to the driver
    assert abs(available_memory("cuda") - before) < 64 * 2**20


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_containers_memory_limit_bounds_what_is_free(tmp_path, version):
    from t2i.memory import available_memory

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 50331648 kB\n")  # 48 GiB
    assert available_memory("cpu", tmp_path) == 48 * 2**30  # no container: the host's
    group = tmp_path / ("sys/fs/cgroup" if version == "v2" else "sys/fs/cgroup/memory")
    group.mkdir(parents=True)
    names = ("memory.max", "memory.current") if version == "v2" else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (group / names[0]).write_text(f"{8 * 2**30}\n")  # docker run --memory=8g
    (group / names[1]).write_text(f"{7 * 2**30}\n")
    (group / "memory.stat").write_text(f"anon {5 * 2**30}\n{'' if version == 'v2' else 'total_'}inactive_file "
                                       f"{2**30}\n")
    assert available_memory("cpu", tmp_path) == 2 * 2**30  # 8 - 7 + 1 of page cache it can drop
    (group / names[0]).write_text("max\n" if version == "v2" else f"{2**63 - 4096}\n")  # no limit set
    assert available_memory("cpu", tmp_path) == 48 * 2**30
