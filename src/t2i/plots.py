"""Small line and histogram plots drawn with PIL, so the package needs no plotting library."""

from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

# ten colours that stay apart from one another; the first four in the order earlier figures used
_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=10 * magnitude)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2 and 5 times powers of ten, as log10 values covering [lo, hi] (log10 units)."""
    ticks = [math.log10(m) + e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    return inside if len(inside) >= 2 else _ticks(lo, hi)


def _fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}"


def _clip_y(p: tuple[float, float], q: tuple[float, float], top: float, bottom: float):
    """The part of the segment p-q with top <= y <= bottom (pixel coordinates), or None."""
    (x0, y0), (x1, y1) = p, q
    if max(y0, y1) < top or min(y0, y1) > bottom:
        return None

    def at(y: float) -> tuple[float, float]:
        return (x0 + (x1 - x0) * (y - y0) / (y1 - y0), y)

    if y0 < top or y0 > bottom:
        p = at(min(max(y0, top), bottom))
    if y1 < top or y1 > bottom:
        q = at(min(max(y1, top), bottom))
    return [p, q]


class Axes:
    """A plotting area mapping data coordinates to pixels, with ticks, labels and a title."""

    def __init__(self, xlim, ylim, title="", xlabel="", ylabel="", size=(640, 400), log_y=False, log_x=False):
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.log_y, self.log_x = log_y, log_x
        self.left, self.top, self.right, self.bottom = 70, 30, size[0] - 20, size[1] - 50
        self.xlim = tuple(math.log10(v) for v in xlim) if log_x else xlim
        self.ylim = tuple(math.log10(v) for v in ylim) if log_y else ylim
        small = font()
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline="black")
        self.draw.text((size[0] / 2, 8), title, fill="black", font=font(14), anchor="mt")
        self.draw.text(((self.left + self.right) / 2, size[1] - 8), xlabel, fill="black", font=small, anchor="mb")
        self.draw.text((self.left, self.top - 4), ylabel, fill="black", font=small, anchor="lb")
        for x in (_log_ticks if log_x else _ticks)(*self.xlim):
            px = self.px(x, self.ylim[0])[0]
            self.draw.line([px, self.bottom, px, self.bottom + 4], fill="black")
            self.draw.text((px, self.bottom + 6), _fmt(10**x if log_x else x), fill="black", font=small, anchor="mt")
        for y in (_log_ticks if log_y else _ticks)(*self.ylim):
            py = self._py(y)
            self.draw.line([self.left - 4, py, self.left, py], fill="black")
            self.draw.text((self.left - 6, py), _fmt(10**y if log_y else y), fill="black", font=small, anchor="rm")

    def _py(self, y: float) -> float:
        y0, y1 = self.ylim
        return self.bottom - (y - y0) / ((y1 - y0) or 1.0) * (self.bottom - self.top)

    def px(self, x: float, y: float) -> tuple[float, float]:
        x0, x1 = self.xlim
        return (self.left + (x - x0) / ((x1 - x0) or 1.0) * (self.right - self.left), self._py(y))

    def data_px(self, x: float, y: float) -> tuple[float, float]:
        return self.px(math.log10(max(x, 1e-12)) if self.log_x else x, math.log10(max(y, 1e-12)) if self.log_y else y)

    def line(self, xs: Sequence[float], ys: Sequence[float], colour=_COLOURS[0], width=2, label=None, index=0,
             markers=False):
        """A polyline through the points, cut at the top and bottom of the plotting area."""
        points = [self.data_px(x, y) for x, y in zip(xs, ys)]
        for p, q in zip(points, points[1:]):
            segment = _clip_y(p, q, self.top, self.bottom)
            if segment:
                self.draw.line(segment, fill=colour, width=width)
        if markers:
            for x, y in points:
                if self.top <= y <= self.bottom:
                    self.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        if label:
            self.legend(label, colour, index)

    def bars(self, edges: Sequence[float], heights: Sequence[float], colour=(160, 190, 230)):
        for lo, hi, h in zip(edges[:-1], edges[1:], heights):
            (x0, y0), (x1, _) = self.data_px(lo, h), self.data_px(hi, h)
            self.draw.rectangle([x0, y0, x1, self.bottom], fill=colour, outline=(120, 150, 200))

    def legend(self, label: str, colour, index: int):
        y = self.top + 10 + 16 * index
        self.draw.line([self.right - 150, y, self.right - 130, y], fill=colour, width=3)
        self.draw.text((self.right - 125, y), label, fill="black", font=font(), anchor="lm")


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], title="", xlabel="", ylabel="",
              log_y=False, log_x=False, y_max: float | None = None, markers=False) -> Image.Image:
    """One line per named series of (xs, ys); `y_max` cuts off what lies above it, `markers` dots each point."""
    xs = [x for x_values, _ in series.values() for x in x_values if not log_x or x > 0]
    ys = [y for _, y_values in series.values() for y in y_values if not log_y or y > 0]
    if y_max is not None:
        ys = [y for y in ys if y <= y_max] + [y_max]
    if not xs or not ys:
        xs, ys = [1.0, 2.0], [1.0, 2.0]
    axes = Axes((min(xs), max(xs)), (min(ys), max(ys)), title, xlabel, ylabel, log_y=log_y, log_x=log_x)
    for i, (name, (x_values, y_values)) in enumerate(series.items()):
        axes.line(x_values, y_values, _COLOURS[i % len(_COLOURS)], label=name, index=i, markers=markers)
    return axes.image


def histogram_plot(edges: Sequence[float], density: Sequence[float], curve: tuple[Sequence[float], Sequence[float]],
                   title="", xlabel="", curve_label="") -> Image.Image:
    """A density histogram with a reference curve drawn over it."""
    top = max(max(density), max(curve[1])) * 1.05
    axes = Axes((edges[0], edges[-1]), (0.0, top), title, xlabel, "density")
    axes.bars(edges, density)
    axes.line(*curve, colour=_COLOURS[1], label=curve_label)
    return axes.image
