"""Comparison grids: the same seeds under every combination of prompts, samplers, guidance scales
and strengths asked for, a row each — the figure that shows what one setting changes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from .errors import UserError
from .images import PNG_PARAMETERS_KEY, enlarge, make_grid
from .guards import random_seed
from .pipeline import Pipeline
from .sampling import check_strength

VARIED = ("prompt", "sampler", "cfg", "strength")


@dataclass
class Comparison:
    """One row of images per combination (`combinations[i]` holds its prompt, sampler, cfg and
    strength as asked, None for "the model's"), the same `seeds` in every row; `source` is the
    image edited, if any."""

    rows: list[list[Image.Image]]
    combinations: list[dict]
    seeds: list[int]
    source: Image.Image | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [image for row in self.rows for image in row]

    def parameters(self) -> dict:
        """The grid's parameters: the first image's, with each varied setting listed row by row
        (the sampler and cfg as they ran, the prompt and strength as asked)."""
        ran = [row[0].info[PNG_PARAMETERS_KEY] for row in self.rows]
        return {**ran[0], "num": len(self.seeds),
                "prompt": [c["prompt"] for c in self.combinations], "sampler": [r["sampler"] for r in ran],
                "cfg": [r["cfg"] for r in ran], "strength": [c["strength"] for c in self.combinations]}

    def grid(self, zoom: int = 1) -> Image.Image:
        """A row per combination, each after the source image when editing; with one seed, the
        combinations side by side in one row instead. The grid carries `parameters()`."""
        rows = self.rows if len(self.seeds) > 1 else [self.images]
        lead = [self.source] if self.source is not None else []
        grid = make_grid([enlarge(image, zoom) for row in rows for image in lead + row], ncols=len(lead) + len(rows[0]))
        grid.info[PNG_PARAMETERS_KEY] = self.parameters()
        return grid


def compare(pipe: Pipeline, prompts: Sequence[str] = ("",), samplers: Sequence[str | None] = (None,),
            cfgs: Sequence[float | None] = (None,), strengths: Sequence[float | None] = (None,), *,
            seed: int | None = None, num_images: int = 1, image: Image.Image | None = None,
            row_done: Callable[[int, list[Image.Image]], None] | None = None, **options) -> Comparison:
    """Generate `num_images` images (seeds `seed`, `seed + 1`, ...) for every combination of the
    settings given; None stands for the model's own. `options` go to every `pipe(...)` call;
    `row_done(i, images)` is told each row as it ends (to save it before the next starts)."""
    if len(strengths) > 1 and image is None:
        raise UserError("several strengths need an image to edit")
    seed = random_seed() if seed is None else seed  # drawn once: every row starts from the same noise
    combinations = [dict(zip(VARIED, values)) for values in itertools.product(prompts or [""], samplers, cfgs,
                                                                              strengths)]
    for combination in combinations:  # each checked before the first runs, so that a bad one loses no work
        check_combination(pipe, combination, options)
    rows = []
    for combination in combinations:
        rows.append(pipe(seed=seed, num_images=num_images, image=image, **combination, **options))
        if row_done is not None:
            row_done(len(rows) - 1, rows[-1])
    return Comparison(rows, combinations, list(range(seed, seed + num_images)), image)


def check_combination(pipe: Pipeline, combination: dict, options: dict) -> None:
    """Refuse a row's sampler, steps, spacing, guidance, strength and sampler options as its call would (the
    student's where one takes the call), before any network runs."""
    sampler, cfg, steps, spacing = (combination["sampler"], combination["cfg"], options.get("steps"),
                                    options.get("spacing"))
    runner = pipe.student(steps, sampler, cfg, spacing, options.get("negative_prompt"),
                          options.get("guidance_rescale")) or pipe
    settings = runner.settings(sampler=sampler, steps=steps, spacing=spacing, cfg=cfg,
                               guidance_rescale=options.get("guidance_rescale"))
    runner.sampler_settings(settings, options.get("eta"), options.get("sampler_options"))
    if combination["strength"] is not None:
        check_strength(combination["strength"])
