"""Speed measurement and the speed options: counted FLOPs, `t2i bench`, `Pipeline.optimize`."""

import re

import torch
import torch.nn.functional as F

from t2i.bench import count_flops, interleaved_times
from t2i.cli import main
from t2i.pipeline import Pipeline


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


def test_bench_prints_each_part(capsys):
    assert main(["bench", "--model", "shapes", "--repeats", "1", "--prompt", "a red circle"]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): [float(v) for v in m.groups()[1:]]
            for m in re.finditer(r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| \d+% \|$", out, re.M)}
    assert set(rows) == {"U-Net, one guided step", "text encoder", "decoder", "whole call"}, out
    steps = int(re.search(r"(\d+) steps", out).group(1))
    step, text, decoder, whole = (rows[name][1] for name in ("U-Net, one guided step", "text encoder", "decoder",
                                                               "whole call"))
    assert abs(whole - (steps * step + text + decoder)) < 0.02 * whole  # GFLOP of the whole call
    assert rows["whole call"][0] > rows["U-Net, one guided step"][0] * steps / 2  # seconds


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
