"""The shapes prompt set: single-object prompts with the attributes they ask for, and the
scoring of a generated image against them by reading its scene back (`analyze`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .analyze import analyze
from .shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, WHERE, Scene

PROMPT_ATTRIBUTES = ("colour", "shape", "size", "position")


@dataclass(frozen=True)
class PromptCase:
    """A prompt naming one object, the attributes it asks for, and its group ("seen" or "held-out")."""

    prompt: str
    expected: dict[str, str]
    group: str


def shapes_prompt_set(prompts_per_pair: int = 2, seed: int = 0) -> list[PromptCase]:
    """The fixed single-object prompt set: every colour × shape pair, each at `prompts_per_pair`
    positions and sizes taken in turn so that all positions and sizes occur equally often.

    Pairs in HELD_OUT (never drawn in the captioned training split) form the "held-out"
    group, which measures whether a model composes a colour and a shape it has only seen apart.
    """
    rng = np.random.default_rng(seed)
    places = itertools.cycle(rng.permutation(list(itertools.product(POSITIONS, SIZES))).tolist())
    cases = []
    for colour, shape in itertools.product(COLOURS, SHAPES):
        for _ in range(prompts_per_pair):
            position, size = next(places)
            expected = dict(zip(PROMPT_ATTRIBUTES, (colour, shape, size, position)))
            text = f"a {size} {colour} {shape} {WHERE[position]}"
            cases.append(PromptCase(text, expected, "held-out" if (colour, shape) in HELD_OUT else "seen"))
    return cases


def score_scene(scene: Scene, expected: dict[str, str]) -> dict[str, bool]:
    """Which asked-for attributes an analysed image shows, and whether it holds exactly one object.

    Each attribute is judged on the object that matches the most of them, so a stray second
    blob does not hide a right answer; `count` reports the stray blob, and `all` asks for
    one object with every attribute right (GenEval's strict score).
    """
    best = max(scene.objects, key=lambda obj: sum(getattr(obj, a) == v for a, v in expected.items()), default=None)
    scores = {a: best is not None and getattr(best, a) == v for a, v in expected.items()}
    scores["count"] = len(scene.objects) == 1
    scores["all"] = all(scores.values())
    return scores


def score_image(image: Image.Image, expected: dict[str, str]) -> dict[str, bool]:
    """`score_scene` of the scene `analyze` reads from a generated image."""
    return score_scene(analyze(image), expected)
