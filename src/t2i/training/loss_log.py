"""loss.csv and loss.png of a run folder."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import durable_write_bytes
from ..plots import line_plot


class LossLog:
    """loss.csv (step, seconds of training so far, then one column per loss) and its plot.

    Rows are appended one at a time, so a run stopped at any moment keeps every row it wrote;
    a resumed run first drops the rows past the step it resumes from, in one atomic rewrite.
    """

    def __init__(self, out: Path, columns: tuple[str, ...], up_to_step: int | None = None):
        self.path, self.plot_path, self.columns = out / "loss.csv", out / "loss.png", columns
        self.fields = ["step", "seconds", *columns]
        self.rows: list[dict] = []
        if self.path.is_file():
            text = self.path.read_text()
            whole = text[: text.rfind("\n") + 1]  # without a row cut short by a kill
            reader = csv.DictReader(io.StringIO(whole))
            rows = [{k: float(v) for k, v in r.items() if k in self.fields and v not in ("", None)} for r in reader]
            self.rows = [r for r in rows if "step" in r and (up_to_step is None or r["step"] <= up_to_step)]
            if self.rows != rows or whole != text or reader.fieldnames != self.fields:
                durable_write_bytes(self.path, self._csv(self.rows, header=True).encode())

    def _csv(self, rows: list[dict], header: bool) -> str:
        text = io.StringIO()
        writer = csv.DictWriter(text, self.fields, extrasaction="ignore", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows({**r, "step": int(r["step"])} for r in rows)
        return text.getvalue()

    def append(self, step: int, seconds: float, values: dict[str, float]) -> None:
        """The row of a step, written at once."""
        row = {"step": step, "seconds": round(seconds, 2), **values}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(self._csv([row], header=f.tell() == 0))

    def plot(self, title: str, x_label: str = "step") -> None:
        curves = {c: ([r["step"] for r in self.rows if c in r], [r[c] for r in self.rows if c in r])
                  for c in self.columns}
        curves = {c: xy for c, xy in curves.items() if xy[0] and min(xy[1]) > 0}
        if curves:
            line_plot(curves, title, x_label, "loss (log scale)", log_y=True).save(self.plot_path)
