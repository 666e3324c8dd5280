"""A synthetic dataset of coloured circles, squares and triangles on plain backgrounds.

Each image is drawn deterministically from its index, and the attributes it was drawn
from (colour, shape, size, position, background) are kept, so that captions can be
written from them (`caption`) and generated images checked against them (`analyze`
in `t2i.data.analyze`, reads the attributes back from the pixels).
"""

from __future__ import annotations

import itertools
import re
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
PARTNERS = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}  # the places of two objects
MIN_GAP = 0.1  # between the boxes of two objects, as a fraction of the image: 3 pixels at 32×32
# Colour × shape pairs a captioned dataset never draws in its train split and draws as often as
# any other in its test split: prompts that measure whether a model composes what it has seen.
HELD_OUT = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "square"), ("yellow", "triangle")})


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


def sample_object(rng: np.random.Generator, colours: list[str]) -> ShapeSpec:
    return ShapeSpec(
        colour=colours[rng.integers(len(colours))],
        shape=SHAPES[rng.integers(len(SHAPES))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
    )


def centre_and_radius(obj: ShapeSpec, scale: float) -> tuple[float, float, float]:
    """Centre and half side of the object's bounding square, for an image `scale` wide."""
    cx, cy = POSITIONS[obj.position]
    return (cx + obj.dx) * scale, (cy + obj.dy) * scale, SIZES[obj.size] * scale / 2


def apart(a: ShapeSpec, b: ShapeSpec) -> bool:
    """Whether two objects may share a scene: opposite places, boxes MIN_GAP apart, different looks."""
    ax, ay, ar = centre_and_radius(a, 1)
    bx, by, br = centre_and_radius(b, 1)
    return (PARTNERS.get(a.position) == b.position and (a.colour, a.shape) != (b.colour, b.shape)
            and max(abs(ax - bx), abs(ay - by)) - ar - br >= MIN_GAP)


def sample_scene(rng: np.random.Generator, max_objects: int = 1, exclude: frozenset = frozenset()) -> Scene:
    """One object (one or two if `max_objects=2`) of random colour, shape, size and position on a
    contrasting background; no object is a (colour, shape) pair of `exclude`.

    With the defaults the draws are exactly those the first shapes models were trained on:
    keep their order. Two objects stand left and right or top and bottom, boxes `MIN_GAP`
    apart, and differ in colour or shape. Objects not allowed are all drawn again.
    """
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]
    count = 1 if max_objects == 1 else 1 + int(rng.integers(max_objects))
    while True:
        objects = tuple(sample_object(rng, colours) for _ in range(count))
        excluded = any((obj.colour, obj.shape) in exclude for obj in objects)
        if not excluded and all(apart(a, b) for a, b in itertools.combinations(objects, 2)):
            return Scene(background, objects)


def draw_scene(scene: Scene, image_size: int = 32) -> Image.Image:
    """Render a scene, antialiased by drawing at 4× and downsampling."""
    canvas = image_size * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, r = centre_and_radius(obj, canvas)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # upright triangle in the same bounding square
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return image.resize((image_size, image_size), Image.BOX)


WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "centre": "in the centre"}
RELATION = {"left": "to the left of", "right": "to the right of", "top": "above", "bottom": "below"}
# Every phrasing of a scene, by its number of objects. Fields: the objects `a` and `b` (ShapeSpec),
# `a_where`/`b_where` (WHERE of their positions), `relation` (RELATION of a's position, a to b),
# `background`. Each phrasing names every object's colour and shape; some leave out the rest.
CAPTION_TEMPLATES = {
    1: (
        "a {a.size} {a.colour} {a.shape} {a_where}",
        "{a.colour} {a.shape}, {a.size}, {a.position}, {background} background",
        "a {a.size} {a.colour} {a.shape} {a_where} on a {background} background",
        "a {a.colour} {a.shape}",
        "a {a.colour} {a.shape} {a_where}",
        "a {a.size} {a.colour} {a.shape}",
    ),
    2: (
        "a {a.colour} {a.shape} and a {b.colour} {b.shape}",
        "a {a.size} {a.colour} {a.shape} {a_where} and a {b.size} {b.colour} {b.shape} {b_where}",
        "{a.colour} {a.shape} ({a.size}, {a.position}) and {b.colour} {b.shape} ({b.size}, {b.position}), "
        "{background} background",
        "a {a.colour} {a.shape} {relation} a {b.colour} {b.shape}",
        "a {a.size} {a.colour} {a.shape} {relation} a {b.size} {b.colour} {b.shape} on a {background} background",
    ),
}


def caption(scene: Scene, variant: int | np.random.Generator = 0) -> str:
    """The scene in words, in phrasing number `variant` of CAPTION_TEMPLATES (or one `variant` draws)."""
    templates = CAPTION_TEMPLATES[len(scene.objects)]
    if isinstance(variant, np.random.Generator):
        variant = int(variant.integers(len(templates)))
    a, b = (*scene.objects, None)[:2]
    fields = {"background": scene.background, "a": a, "a_where": WHERE[a.position]}
    if b is not None:
        fields.update(b=b, b_where=WHERE[b.position], relation=RELATION[a.position])
    return re.sub(r"\ba (?=[aeiou])", "an ", templates[variant % len(templates)].format(**fields))


def is_held_out(scene: Scene) -> bool:
    return any((obj.colour, obj.shape) in HELD_OUT for obj in scene.objects)


class ShapesDataset(torch.utils.data.Dataset):
    """`length` scenes drawn from the index alone; "train" and "test" are disjoint streams.

    By default an item is an image of one object: the dataset the first shapes models were
    trained on, which must keep drawing the same images. `max_objects=2` draws one or two
    objects an image. `captioned=True` makes items `(image, caption)`, the phrasing chosen by
    the index, and keeps the HELD_OUT pairs out of the train split.
    """

    def __init__(self, length: int = 50_000, image_size: int = 32, split: str = "train", seed: int = 0,
                 max_objects: int = 1, captioned: bool = False):
        if split not in SPLIT_STREAMS:
            raise UserError(f"unknown split {split!r} for shapes; choose one of: {', '.join(SPLIT_STREAMS)}")
        if max_objects not in (1, 2):
            raise UserError(f"shapes draws 1 or 2 objects an image, not max_objects={max_objects}")
        self.length, self.image_size, self.split, self.seed = length, image_size, split, seed
        self.max_objects, self.captioned = max_objects, captioned
        self.exclude = HELD_OUT if captioned and split == "train" else frozenset()

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene of `index`, and its random stream, left where the scene ends, for the caption."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
        return sample_scene(rng, self.max_objects, self.exclude), rng

    def scene(self, index: int) -> Scene:
        return self._draw(index)[0]

    def caption(self, index: int) -> str:
        return caption(*self._draw(index))

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, str]:
        scene, rng = self._draw(index)
        image = to_tensor(draw_scene(scene, self.image_size))
        return (image, caption(scene, rng)) if self.captioned else image
