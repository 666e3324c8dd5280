"""loss.csv and loss.png of a run folder."""

from __future__ import annotations

import csv
from pathlib import Path

from ..plots import line_plot


class LossLog:
    """loss.csv (step, seconds of training so far, then one column per loss) and its plot."""

    def __init__(self, out: Path, columns: tuple[str, ...], up_to_step: int | None = None):
        self.path, self.plot_path, self.columns = out / "loss.csv", out / "loss.png", columns
        self.rows: list[dict] = []
        if self.path.is_file():
            with self.path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            self.rows = [r for r in self.rows if up_to_step is None or r["step"] <= up_to_step]

    def append(self, step: int, seconds: float, values: dict[str, float]) -> None:
        """Values of a step already logged join its row."""
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(values)
        else:
            self.rows.append({"step": step, "seconds": round(seconds, 2), **values})

    def write(self, title: str) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "seconds", *self.columns], extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**r, "step": int(r["step"])} for r in self.rows)
        curves = {c: ([r["step"] for r in self.rows if c in r], [r[c] for r in self.rows if c in r])
                  for c in self.columns}
        curves = {c: xy for c, xy in curves.items() if xy[0] and min(xy[1]) > 0}
        if curves:
            line_plot(curves, title, "step", "loss (log scale)", log_y=True).save(self.plot_path)
