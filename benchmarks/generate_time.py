"""Time to generate images with a model at its default settings, as `t2i generate` would.

The pipeline is loaded once (loading time is reported apart), warmed up with one call, and
then `--repeats` calls of `pipe(prompt, seed=i)` are timed; the median and the spread are
reported for each batch size. The FLOPs of one guided denoising step are counted with
`torch.utils.flop_counter.FlopCounterMode`, giving the GFLOP/s achieved (U-Net steps only,
over the time of the whole call: text encoder and decoder add time but are not counted), set against the
GFLOP/s of a 2048×2048 fp32 `torch.mm` on the same machine (a practical peak).

With `--command N`, it also times the whole `t2i generate PROMPT` command N times, as a
user types it: a new process that imports torch, loads the model, generates one image and
writes the PNG (median and spread of the wall time).

`--steps N` with no `--sampler` runs the model's distilled student of N steps where it has one, as
`t2i generate --steps N` does.

Run:  python benchmarks/generate_time.py [--model emoji] [--prompt "..."] [--sampler S --steps K]
          [--repeats 10] [--batch 1 4] [--command 5]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from t2i.bench import count_flops, matmul_peak_gflops
from t2i.pipeline import DEFAULT_MODEL, Pipeline
from t2i.samplers import SAMPLERS


def step_flops(pipe: Pipeline, batch: int, guided: bool = True) -> int:
    """FLOPs of one U-Net call of a step: the batch doubled (conditional + unconditional) when guided,
    at the U-Net's input size (the latent's, for a latent model)."""
    size = pipe.image_size // pipe.downsample_factor
    rows = 2 * batch if guided else batch
    x = torch.randn(rows, pipe.unet.config.in_channels, size, size)
    t = torch.full((rows,), 500)
    cond = pipe.encode_prompts([""] * rows)
    with torch.no_grad():
        return count_flops(lambda: pipe.unet(x, t, **cond))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompt", default="red apple")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--sampler", default=None, help="default: the model's")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (or the sampler's)")
    parser.add_argument("--command", type=int, default=0, metavar="N",
                        help="also time the whole `t2i generate` command N times")
    args = parser.parse_args()

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    pipe = Pipeline.load(args.model, "cpu")
    print(f"load {args.model!r}: {time.perf_counter() - start:.3f} s")
    # as `t2i generate --steps N` runs it: the model's distilled student of N steps if it has one
    runner = pipe.student(args.steps, args.sampler) or pipe
    settings = runner.settings(sampler=args.sampler, steps=args.steps, cfg=None)
    print(f"settings: sampler {settings['sampler']}, {settings['steps']} steps, cfg {settings['cfg']}, "
          f"{pipe.image_size}×{pipe.image_size}" + (f"; the distilled student {runner.name}" if runner is not pipe
                                                    else ""))
    peak = matmul_peak_gflops()
    print(f"peak (2048² fp32 mm): {peak:.1f} GFLOP/s")
    print("| images per call | median s/call | min–max | s/image | GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        options = {"sampler": args.sampler, "steps": args.steps, "progress": False}
        pipe(args.prompt, num_images=batch, seed=0, **options)  # warm-up
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            pipe(args.prompt, num_images=batch, seed=i, **options)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        calls = SAMPLERS[settings["sampler"]].network_calls(settings["steps"])  # each a batched call, guided or not
        gflops = step_flops(runner, batch, guided=settings["cfg"] != 1) * calls / median / 1e9
        print(f"| {batch} | {median:.3f} | {min(times):.3f}–{max(times):.3f} | {median / batch:.3f} | "
              f"{gflops:.1f} | {gflops / peak:.0%} |")
    if args.command:
        time_command(args)


def time_command(args) -> None:
    """Wall time of `t2i generate` in a new process, from start to the PNG written."""
    options = [f"--{name}={value}" for name, value in (("sampler", args.sampler), ("steps", args.steps)) if value]
    times = []
    with tempfile.TemporaryDirectory() as work:
        for i in range(args.command):
            command = [sys.executable, "-m", "t2i", "generate", args.prompt, "--model", args.model,
                       "--seed", str(i), "--out", str(Path(work) / f"{i}.png"), *options]
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    print(f"whole command ({shlex.join(command[3:])}): median {statistics.median(times):.2f} s, "
          f"{min(times):.2f}–{max(times):.2f} s over {len(times)} runs")


if __name__ == "__main__":
    main()
