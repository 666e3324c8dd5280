"""Reading a shapes scene back from pixels: fixed rules, no learning.

`analyze(image)` returns the `Scene` (background, and each object's colour, shape, size
and position) that an image shows, so that a generated image can be scored against the
prompt it was generated from. Distances are in levels 0..255.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..images import to_pil
from .shapes import BACKGROUND_RGB, COLOURS, POSITIONS, SIZES, Scene, ShapeSpec

OBJECT_DISTANCE = 35.0  # a pixel this far from the background belongs to an object (palette ≥ 89 away)
MIN_OBJECT_AREA = 0.01  # smaller specks, as a fraction of the image, are noise (a small triangle is 0.04)
# Shapes are told apart by cumulants κ_n of the object's mass along x and y, scaled by its area A to
# be free of size. A blur adds a Gaussian's cumulants, which are 0 beyond κ2, so these survive it.
TRIANGLE_SKEW = 2 * 2**0.5 / 5 * (2 / 18) ** 1.5  # -κ3(y)/A^1.5 of an upright triangle (mass low); 0 for the others
SQUARE_KURTOSIS = -1 / 120  # κ4/A² of a square along x or y (a uniform spread)
CIRCLE_KURTOSIS = -1 / (16 * np.pi**2)  # the same of a circle (a semicircle spread)


def nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> str:
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name]) - rgb) ** 2)))


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean [H, W] mask, as masks, by flood fill."""
    h, w = mask.shape
    todo = mask.tolist()
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if not todo[y0][x0]:
            continue
        todo[y0][x0] = False
        stack, pixels = [(y0, x0)], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and todo[ny][nx]:
                    todo[ny][nx] = False
                    stack.append((ny, nx))
        component = np.zeros_like(mask)
        component[tuple(np.array(pixels).T)] = True
        found.append(component)
    return found


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    for _ in range(radius):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def cumulants(mass: np.ndarray, coordinate: np.ndarray) -> tuple[float, float]:
    """κ3 and κ4 of `coordinate` under the (unnormalized) distribution `mass`, both [H, W]."""
    total = mass.sum()
    d = coordinate - (mass * coordinate).sum() / total
    m2, m3, m4 = ((mass * d**k).sum() / total for k in (2, 3, 4))
    return m3, m4 - 3 * m2**2


def read_object(pixels: np.ndarray, background: np.ndarray, region: np.ndarray, colours: dict) -> ShapeSpec | None:
    """Colour, shape, size and place of the object whose pixels (with their antialiased rim) are `region`.

    Each pixel is taken as a mix `background + α (colour - background)`. α is the object's
    mass: its cumulants give the shape (unclipped, so that noise cancels out); α's largest
    value per column (row) summed is the width (height), so that partly covered rim pixels
    count for what they cover; the place is the centre of that bounding box. None if the
    pixels have no mass in their own colour (not one object, e.g. two colours either side of
    the background).
    """
    h, w, _ = pixels.shape
    offset = pixels[region] - background
    distance = np.linalg.norm(offset, axis=-1)
    rgb = np.median(pixels[region][distance >= 0.8 * np.percentile(distance, 90)], axis=0)
    direction = rgb - background
    alpha = np.zeros((h, w))
    alpha[region] = offset @ direction / max(direction @ direction, 1.0)
    area = alpha.sum()
    if area < 1:
        return None
    ys, xs = np.mgrid[:h, :w] + 0.5
    (_, kurtosis_x), (skew_y, kurtosis_y) = cumulants(alpha, xs), cumulants(alpha, ys)
    if -skew_y / area**1.5 > TRIANGLE_SKEW / 2:
        shape = "triangle"
    else:
        kurtosis = (kurtosis_x + kurtosis_y) / 2 / area**2
        shape = "square" if kurtosis < (SQUARE_KURTOSIS + CIRCLE_KURTOSIS) / 2 else "circle"
    alpha = alpha.clip(0, 1)
    columns, rows = alpha.max(axis=0), alpha.max(axis=1)
    width, height = columns.sum(), rows.sum()
    cx = columns @ xs[0] / width / w
    cy = rows @ ys[:, 0] / height / h
    size = min(SIZES, key=lambda name: abs(SIZES[name] - (width / w + height / h) / 2))
    position = min(POSITIONS, key=lambda name: (POSITIONS[name][0] - cx) ** 2 + (POSITIONS[name][1] - cy) ** 2)
    return ShapeSpec(nearest(colours, rgb), shape, size, position,
                     dx=float(cx - POSITIONS[position][0]), dy=float(cy - POSITIONS[position][1]))


def analyze(image: Image.Image | torch.Tensor) -> Scene:
    """The scene an image shows, read from its pixels: a PIL image, or [3, H, W] in [-1, 1].

    The background is the nearest background colour to the median border pixel; objects are
    the connected groups of pixels far from it; each is read by `read_object`. Objects come
    in the order of POSITIONS.
    """
    pixels = np.asarray(to_pil(image) if isinstance(image, torch.Tensor) else image.convert("RGB"), np.float64)
    h, w, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = nearest(BACKGROUND_RGB, background_rgb)
    colours = {name: rgb for name, rgb in COLOURS.items() if name != background}
    cores = np.linalg.norm(pixels - background_rgb, axis=-1) > OBJECT_DISTANCE
    rim = max(1, round(w / 32))
    objects = [
        read_object(pixels, background_rgb, dilate(core, rim) & ~(cores & ~core), colours)
        for core in components(cores)
        if core.sum() >= MIN_OBJECT_AREA * h * w
    ]
    objects = [obj for obj in objects if obj is not None]
    order = list(POSITIONS)
    objects.sort(key=lambda obj: (order.index(obj.position), obj.dx, obj.dy))
    return Scene(background, tuple(objects))
