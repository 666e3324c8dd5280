"""Where and in what precision networks run: bfloat16 by default for large networks where it is native."""

import pytest
import torch

from t2i import devices
from t2i.cli import main
from t2i.errors import UserError
from t2i.pipeline import Pipeline
from tiny_sd import tiny_sd_folder

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, native, amx", [
    ({"avx512f"}, False, False), ({"avx512_bf16"}, True, False), ({"avx512_bf16", "amx_bf16"}, True, True)])
def test_bfloat16_is_native_on_a_cpu_with_avx512_bf16_or_amx(flags, native, amx, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    assert devices.fast_bfloat16(CPU) is native and devices.amx(CPU) is amx
    assert not devices.fast_bfloat16(torch.device("meta"))


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path):
    (tmp_path / "proc").mkdir()
    processor = ("processor\t: {}\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16\n"
                 "vmx flags\t: vnmi preemption_timer\nbugs\t\t: spectre_v1\n\n")
    (tmp_path / "proc/cpuinfo").write_text(processor.format(0) + processor.format(1))  # a block per core, as Linux's
    assert devices.cpu_flags(tmp_path) == {"fpu", "vme", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert devices.cpu_flags(tmp_path / "nowhere") == frozenset()  # no /proc (macOS, Windows): no flags


def test_large_networks_default_to_bfloat16_where_it_is_native(monkeypatch):
    large = torch.nn.Linear(10_000, 10_000, device="meta")  # 100M parameters, no storage
    small = torch.nn.Linear(100, 100)
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert devices.default_dtype(large, CPU) == torch.bfloat16
    assert devices.default_dtype(small, CPU) == torch.float32
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset())
    assert devices.default_dtype(large, CPU) == torch.float32


def test_precisions_are_named_long_or_short():
    assert devices.resolve_dtype("bf16") == devices.resolve_dtype("bfloat16") == torch.bfloat16
    assert devices.resolve_dtype("fp32") == torch.float32 and devices.resolve_dtype(None) is None
    with pytest.raises(UserError, match="unknown precision 'fp64': choose one of fp32, fp16, bf16"):
        devices.resolve_dtype("fp64")


def test_a_pipeline_computes_in_bfloat16_by_default_unless_asked_otherwise(tmp_path, monkeypatch):
    folder = tiny_sd_folder(tmp_path / "sd")
    assert Pipeline.load(folder, "cpu").dtype == torch.float32  # small: float32 on any CPU
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    monkeypatch.setattr(devices, "BFLOAT16_PARAMETERS", 0)  # as if the tiny model were SD's size
    pipe = Pipeline.load(folder, "cpu")
    assert {p.dtype for network in (pipe.unet, pipe.vae, pipe.text_encoder) for p in network.parameters()} \
        == {torch.bfloat16}
    channels_last = torch.channels_last
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=channels_last)  # oneDNN's fast bf16 layout
    full = Pipeline.load(folder, "cpu", dtype="fp32")
    assert full.dtype == torch.float32 and not full.unet.conv_in.weight.is_contiguous(memory_format=channels_last)
    images = [p("tiny prompt", steps=2, seed=0, output_type="pt", progress=False) for p in (pipe, full)]
    assert -10 * torch.log10((images[0] - images[1]).pow(2).mean()) > 30  # dB: the same image to bf16's rounding
    out = tmp_path / "image.png"
    assert main(["generate", "tiny prompt", "--model", str(folder), "--precision", "fp32", "--steps", "2",
                 "--width", "32", "--height", "32", "--out", str(out), "--device", "cpu"]) == 0
    assert out.is_file()


def test_channels_last_pays_for_bfloat16_on_the_cpu_only():
    assert devices.channels_last_pays(CPU, torch.bfloat16)
    assert not devices.channels_last_pays(CPU, torch.float32)
    assert not devices.channels_last_pays(torch.device("cuda"), torch.bfloat16)
