"""Prompt following: how often generated images show what their prompts ask for, per group of
prompts and per attribute (the shapes prompt set and its scoring live in `t2i.data.shapes_prompts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.shapes_prompts import PromptCase, score_image


@dataclass
class PromptReport:
    """Accuracy per group ("seen", "held-out") and per attribute, over `images` images each."""

    cfg: float
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return str(PromptComparison([self]))


@dataclass
class PromptComparison:
    """The same prompts scored at several guidance scales: one table, a row per group and cfg."""

    reports: list[PromptReport]

    def __str__(self) -> str:
        groups = list(dict.fromkeys(group for report in self.reports for group in report.accuracy))
        columns = list(dict.fromkeys(c for report in self.reports for row in report.accuracy.values() for c in row))
        lines = [f"{'group':<10} {'cfg':>5} {'images':>6} " + " ".join(f"{c:>8}" for c in columns)]
        for group in groups:
            for report in self.reports:
                row = report.accuracy[group]
                lines.append(f"{group:<10} {report.cfg:>5g} {report.images[group]:>6} "
                             + " ".join(f"{row[c]:>8.1%}" for c in columns))
        return "\n".join(lines)


@torch.no_grad()
def prompt_accuracy(pipe, cases: list[PromptCase], images_per_prompt: int = 4, cfg: float | None = None,
                    seed: int = 0, batch_size: int = 64, progress: bool = True,
                    score: Callable[[Image.Image, dict[str, str]], dict[str, bool]] = score_image,
                    **options) -> PromptReport:
    """Generate `images_per_prompt` images of each case with `pipe` and `score` each against the
    attributes its case asks for (by default, reading a shapes scene back with `analyze`).

    Image j of prompt i uses seed `seed + j`, the same for every prompt and cfg, so that
    two settings are compared on the same starting noise.
    """
    totals: dict[str, dict[str, list[bool]]] = {case.group: {} for case in cases}
    counts = dict.fromkeys(totals, 0)
    jobs = [(case, j) for case in cases for j in range(images_per_prompt)]
    bar = tqdm(total=len(jobs), desc=f"prompts (cfg {pipe.settings(cfg=cfg)['cfg']})", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        images = pipe(prompt=[case.prompt for case, _ in chunk], cfg=cfg, seed=[seed + j for _, j in chunk],
                      progress=False, **options)
        for (case, _), image in zip(chunk, images):
            counts[case.group] += 1
            for attribute, ok in score(image, case.expected).items():
                totals[case.group].setdefault(attribute, []).append(ok)
        bar.update(len(chunk))
    bar.close()
    report = PromptReport(pipe.settings(cfg=cfg)["cfg"])
    for group, attributes in totals.items():
        if counts[group]:
            report.accuracy[group] = {a: sum(v) / len(v) for a, v in attributes.items()}
            report.images[group] = counts[group]
    return report


def compare_cfgs(pipe, cases: list[PromptCase], cfgs: Sequence[float | None] = (None,), images_per_prompt: int = 4,
                 seed: int = 0, batch_size: int = 64, progress: bool = True, **options) -> PromptComparison:
    """`prompt_accuracy` at each guidance scale of `cfgs` (None: the model's), on the same seeds."""
    return PromptComparison([prompt_accuracy(pipe, cases, images_per_prompt, cfg, seed, batch_size, progress,
                                             **options) for cfg in cfgs])
