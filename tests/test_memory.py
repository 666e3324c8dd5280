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
