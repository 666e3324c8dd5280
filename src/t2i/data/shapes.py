"""A synthetic dataset of coloured circles, squares and triangles on plain backgrounds.

Each image is drawn deterministically from its index, and the attributes it was drawn
from (colour, shape, size, position, background) are kept, so that captions can be
written from them and generated images checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import UserError
from ..images import to_tensor

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (130, 50, 170),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = ("white", "black", "gray")
BACKGROUND_RGB = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.28, "large": 0.46}  # side of the bounding square, as a fraction of the image
POSITIONS = {  # centre of the object, as fractions of width and height
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "centre": (0.5, 0.5),
}
SPLIT_STREAMS = {"train": 0, "test": 1}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn object: its attribute names and the jitter (fractions of the image) it got."""

    colour: str
    shape: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeSpec, ...]


def sample_scene(rng: np.random.Generator) -> Scene:
    """One object of a random colour, shape, size and position on a contrasting background."""
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]
    obj = ShapeSpec(
        colour=colours[rng.integers(len(colours))],
        shape=SHAPES[rng.integers(len(SHAPES))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
    )
    return Scene(background, (obj,))


def draw_scene(scene: Scene, image_size: int = 32) -> Image.Image:
    """Render a scene, antialiased by drawing at 4× and downsampling."""
    canvas = image_size * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = POSITIONS[obj.position]
        cx, cy = (cx + obj.dx) * canvas, (cy + obj.dy) * canvas
        r = SIZES[obj.size] * canvas / 2
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # upright triangle in the same bounding square
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return image.resize((image_size, image_size), Image.BOX)


class ShapesDataset(torch.utils.data.Dataset):
    """`length` scenes drawn from the index alone; "train" and "test" are disjoint streams."""

    def __init__(self, length: int = 50_000, image_size: int = 32, split: str = "train", seed: int = 0):
        if split not in SPLIT_STREAMS:
            raise UserError(f"unknown split {split!r} for shapes; choose one of: {', '.join(SPLIT_STREAMS)}")
        self.length, self.image_size, self.split, self.seed = length, image_size, split, seed

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return sample_scene(np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index]))

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_tensor(draw_scene(self.scene(index), self.image_size))
