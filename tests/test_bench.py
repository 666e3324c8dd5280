"""Speed measurement and the speed options: counted FLOPs, `t2i bench`, `Pipeline.optimize`."""

import pytest
import torch
import torch.nn.functional as F

from t2i.bench import count_flops, interleaved_times, time_generation
from t2i.cli import main
from t2i.errors import UserError
from t2i.pipeline import Pipeline

NUM_THREADS = torch.get_num_threads()


def test_attention_flops_are_counted_on_the_cpu():
    """QKᵀ and the product with V: 2 · 2·B·H·N·M·D; FlopCounterMode alone counts the CPU's fused op as 0."""
    q, k, v = torch.randn(2, 4, 64, 16), torch.randn(2, 4, 32, 16), torch.randn(2, 4, 32, 16)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * (2 * 2 * 4 * 64 * 32 * 16)


def test_interleaved_times_time_every_function_alike():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-ups, then alternating order
    assert all(len(ts) == 4 and min(ts) >= 0 for ts in times.values())


def test_channels_last_gives_the_same_images():
    plain = Pipeline.load("shapes", "cpu")
    fast = Pipeline.load("shapes", "cpu").optimize(channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    kwargs = dict(seed=3, num_images=2, steps=10, progress=False, output_type="pt")  # [0, 1]: 5e-5 is 1e-4 in [-1, 1]
    torch.testing.assert_close(fast("a red circle", **kwargs), plain("a red circle", **kwargs), atol=5e-5, rtol=0)


def test_optimize_keeps_the_tiling_it_is_not_given():
    pipe = Pipeline.load("shapes", "cpu").optimize(vae_tile=64)
    assert pipe.optimize(channels_last=True).vae_tile == 64  # a later call for another option leaves it
    assert pipe.optimize(vae_tile=0).vae_tile is None


PARTS = ["U-Net, one guided step", "text encoder", "decoder", "whole call"]


@pytest.fixture(scope="module")
def report():
    return time_generation("shapes", "a red circle", repeats=1, devices=["cpu"], threads=[1, 2])


def test_bench_times_each_part_and_counts_its_flops(report):
    assert [run.name for run in report.runs] == ["cpu fp32, 1 thread", "cpu fp32, 2 threads"]
    assert torch.get_num_threads() == NUM_THREADS  # restored
    for run in report.runs:
        assert sorted(part.part for part in run.parts) == sorted(PARTS)
        step, text, decoder, whole = (run.part(name) for name in PARTS)
        assert whole.flops == run.steps * step.flops + text.flops + decoder.flops  # one U-Net call a step
        assert all(part.seconds > 0 and part.flops > 0 for part in run.parts) and run.peak_gflops > 0
        assert whole.gflops == pytest.approx(whole.flops / 1e9 / whole.seconds)
    assert [p.flops for p in report.runs[0].parts] == [p.flops for p in report.runs[1].parts]
    assert set(report.speedups) == {"cpu fp32, 2 threads"}


def test_an_unguided_call_is_counted_on_its_own_rows_not_twice_as_many():
    from t2i.bench import pipeline_figures

    pipe = Pipeline.load("shapes", "cpu")
    guided = pipeline_figures(pipe, "a red circle", 1, 1)
    pipe.defaults = {**pipe.defaults, "cfg": 1.0}  # guidance off: one branch, B rows
    unguided = pipeline_figures(pipe, "a red circle", 1, 1)
    assert unguided.part("U-Net, one step").flops * 2 == guided.part("U-Net, one guided step").flops
    assert unguided.part("text encoder").flops * 2 == guided.part("text encoder").flops  # no empty prompt


def test_bench_report_prints_a_table_row_for_every_part(report):
    text = str(report)
    assert text.startswith("t2i bench: model 'shapes', prompt 'a red circle', batch 1, median of 1;")
    for run in report.runs:
        block = str(run)
        assert f"\n\n{block}\n\n" in text
        assert block.startswith(f"{run.name}: {run.sampler}, {run.steps} steps, cfg {run.cfg}, 32×32; matmul peak ")
        header, rule, *rows = block.splitlines()[1:]
        assert header == "| part | seconds | GFLOP | GFLOP/s | of peak |" and rule == "|---|---:|---:|---:|---:|"
        assert [row.split(" | ")[0] for row in rows] == [f"| {part.part}" for part in run.parts]
    ratio = report.speedups["cpu fp32, 2 threads"]
    assert text.splitlines()[-1] == f"cpu fp32, 2 threads: the whole call {ratio:.2f}× as fast as on cpu fp32, 1 thread"


def test_bench_prints_its_report(report, monkeypatch, capsys):
    import t2i.bench

    asked = []

    def time_generation(*args):
        asked.append(args)
        return report

    monkeypatch.setattr(t2i.bench, "time_generation", time_generation)
    assert main(["bench", "--model", "shapes", "--repeats", "1", "--prompt", "a red circle", "--device", "cpu",
                 "--threads", "1", "2", "--precision", "fp32", "bf16"]) == 0
    assert capsys.readouterr().out == f"{report}\n"
    assert asked == [("shapes", "a red circle", 1, 1, ["cpu"], [1, 2], False, False, False, ["fp32", "bf16"])]


def test_bench_times_each_precision_asked_with_its_own_matmul_peak():
    """`t2i bench --precision fp32 bf16` (the issue's CPU-against-GPU question, in each precision): a run per
    precision, named by it, its networks in that dtype and its peak measured in it; Winograd, float32's, refuses
    another precision in one line before any model loads."""
    report = time_generation("shapes", "a red circle", repeats=1, devices=["cpu"], threads=[2],
                             precisions=["fp32", "bfloat16"])
    assert [run.name for run in report.runs] == ["cpu fp32, 2 threads", "cpu bf16, 2 threads"]
    assert [run.precision for run in report.runs] == ["fp32", "bf16"]
    assert all(run.peak_gflops > 0 for run in report.runs)
    assert set(report.speedups) == {"cpu bf16, 2 threads"}
    with pytest.raises(UserError, match="--winograd computes in float32"):
        time_generation("shapes", devices=["cpu"], winograd=True, precisions=["bf16"])


def test_generate_decodes_in_tiles_when_asked(tmp_path):
    """`--vae-tile 4` on the shipped model's 8×8 latents: four overlapping tiles, the same image within
    the blending's deviation, not the same bits (the tiles were really decoded apart)."""
    paths = [tmp_path / "whole.png", tmp_path / "tiled.png"]
    for path, extra in zip(paths, ([], ["--vae-tile", "4"])):
        assert main(["generate", "a red circle", "--model", "shapes", "--seed", "1", "--steps", "10",
                     "--out", str(path), *extra]) == 0
    from PIL import Image
    import numpy as np

    whole, tiled = (np.asarray(Image.open(p), dtype=np.float64) for p in paths)
    assert whole.shape == tiled.shape and 0 < np.abs(whole - tiled).mean() < 20


def test_flops_of_bfloat16_inference_count_the_fused_linear_layers():
    """oneDNN's linear layers with fused epilogues (bfloat16 inference on the CPU) count as the plain layers do."""
    from t2i.models import layers

    block = layers.TransformerBlock(64, 4, 16, 32).eval()
    x, context = torch.randn(2, 50, 64), torch.randn(2, 7, 32)
    with torch.no_grad():
        plain = count_flops(lambda: block(x, context))
        block = block.bfloat16()
        assert layers.epilogues_fuse(x.bfloat16(), block.ff.proj) or layers.linear_pointwise() is None
        assert count_flops(lambda: block(x.bfloat16(), context.bfloat16())) == plain
