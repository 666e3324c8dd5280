"""Training steps/s on this CPU: one process with every thread against torchrun's processes with one thread each.

The same run (pixel-space shapes by default, `--batch-size` examples a step) is trained by
`python -m t2i train` with OMP_NUM_THREADS = cores, and by `torchrun --standalone --nproc_per_node
cores -m t2i train` with OMP_NUM_THREADS = 1, alternating, `--rounds` times each. The rate is read from
the run's loss.csv (training seconds between the first and the last logged step), so process start,
loading and the final save are not counted. Both runs take the same steps (`training.distributed`), so
their final losses are printed too: they agree up to floating-point summation order.

Run:  python benchmarks/train_distributed.py [--cores 2] [--steps 60] [--batch-size 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train(out: Path, processes: int, threads: int, steps: int, batch: int) -> tuple[float, float]:
    """(steps/s, last logged loss) of one run."""
    run = ["-m", "t2i", "train", "--data", "shapes", "--image-size", "32", "--channels", "32", "--batch-size",
           str(batch), "--max-steps", str(steps), "--save-every", str(steps), "--sample-every",
           "1000000", "--probe-every", "0", "--device", "cpu", "--out", str(out)]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                         "--standalone", "--nproc_per_node", str(processes)]
    subprocess.run([*launcher, *run], check=True, capture_output=True, env={**os.environ,
                                                                            "OMP_NUM_THREADS": str(threads)})
    rows = [line.split(",") for line in (out / "loss.csv").read_text().splitlines()[1:]]
    (first_step, first_seconds), (last_step, last_seconds) = [(int(r[0]), float(r[1])) for r in (rows[0], rows[-1])]
    return (last_step - first_step) / (last_seconds - first_seconds), float(rows[-1][2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    setups = {f"1 process x {args.cores} threads": (1, args.cores),
              f"{args.cores} processes x 1 thread": (args.cores, 1)}
    rates, losses = {name: [] for name in setups}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (processes, threads) in setups.items():
                rate, loss = train(Path(tmp) / f"{round_}-{processes}", processes, threads, args.steps, args.batch_size)
                rates[name].append(rate)
                losses[name] = loss
    medians = {name: statistics.median(values) for name, values in rates.items()}
    names = list(setups)
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size,
                      "steps_per_s": {name: [round(v, 3) for v in values] for name, values in rates.items()},
                      "median_steps_per_s": {name: round(v, 3) for name, v in medians.items()},
                      "processes_over_threads": round(medians[names[1]] / medians[names[0]], 3),
                      "final_loss": losses}, indent=2))


if __name__ == "__main__":
    main()
