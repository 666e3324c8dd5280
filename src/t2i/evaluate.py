"""Evaluation: negative log-likelihood in bits per dimension on held-out data, how well an
autoencoder reconstructs held-out images (PSNR), and how well generated images follow
their prompts (per-attribute accuracy on shapes prompts)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.analyze import analyze
from .data.shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, WHERE, Scene
from .diffusion import Diffusion, Model
from .images import to_levels


@dataclass
class NLLResult:
    bits_per_dim: float
    standard_error: float
    num_images: int
    num_timesteps: int | None  # terms of the bound evaluated per image; None: all T

    def __str__(self) -> str:
        how = "all" if self.num_timesteps is None else f"L_0 and {self.num_timesteps - 1} random KL"
        return (f"NLL {self.bits_per_dim:.3f} ± {self.standard_error:.3f} bits/dim "
                f"({self.num_images} images, {how} terms of the bound)")


@torch.no_grad()
def nll_on_dataset(model: Model, diffusion: Diffusion, dataset, num_images: int = 256, batch_size: int = 64,
                   num_timesteps: int | None = None, variance: str = "beta", seed: int = 0,
                   device="cpu", progress: bool = True,
                   condition: Callable[[list[str]], dict] | None = None) -> NLLResult:
    """The variational bound (`Diffusion.nll_bits_per_dim`) averaged over the first images of `dataset`.

    For a captioned dataset (items `(image, caption)`), `condition(captions)` gives the
    model's condition, e.g. `{"context": τ_θ(y)}`, and the bound is on -log p(x | y).
    """
    generator = torch.Generator().manual_seed(seed)
    num_images = min(num_images, len(dataset))
    values = []
    batches = range(0, num_images, batch_size)
    for start in tqdm(batches, desc="nll", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, num_images))]
        cond = {}
        if condition is not None:
            items, captions = zip(*items)
            cond = condition(list(captions))
        x0 = torch.stack(items).to(device)
        values.append(diffusion.nll_bits_per_dim(model, x0, num_timesteps, variance, generator, progress=progress,
                                                 **cond))
    bpd = torch.cat(values).double()
    stderr = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return NLLResult(bpd.mean().item(), stderr, len(bpd), num_timesteps)


@dataclass
class ReconstructionResult:
    psnr: float  # dB, of the mean squared error over all images (pixels in [0, 1])
    psnr_per_image: float  # dB, the mean of each image's PSNR
    num_images: int

    def __str__(self) -> str:
        return (f"PSNR {self.psnr:.2f} dB over all pixels, {self.psnr_per_image:.2f} dB averaged per image "
                f"({self.num_images} images)")


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / MSE) for images in [0, 1]."""
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-12))


@torch.no_grad()
def reconstruction_psnr(vae, dataset, num_images: int = 512, batch_size: int = 128,
                        progress: bool = True) -> ReconstructionResult:
    """PSNR of D(μ(x)) against x over the first images of `dataset`, both quantised to 8 bits
    as saved images would be."""
    device = next(vae.parameters()).device
    num_images = min(num_images, len(dataset))
    errors = []
    for start in tqdm(range(0, num_images, batch_size), desc="psnr", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, num_images))]
        x = torch.stack([item[0] if isinstance(item, tuple) else item for item in items]).to(device)
        x_hat = vae.decode(vae.encode(x).mean)
        errors.append((((to_levels(x_hat) - to_levels(x)) / 255) ** 2).flatten(1).mean(1).cpu())
    mse = torch.cat(errors).double()
    return ReconstructionResult(psnr(mse.mean()).item(), psnr(mse).mean().item(), len(mse))


# -- prompt following ------------------------------------------------------------------------
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
            expected = {"colour": colour, "shape": shape, "size": size, "position": position}
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


@dataclass
class PromptReport:
    """Accuracy per group ("seen", "held-out") and per attribute, over `images` images each."""

    cfg: float
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)


@torch.no_grad()
def prompt_accuracy(pipe, cases: list[PromptCase], images_per_prompt: int = 4, cfg: float | None = None,
                    seed: int = 0, batch_size: int = 64, progress: bool = True, **options) -> PromptReport:
    """Generate `images_per_prompt` images of each case with `pipe` and score them with `analyze`.

    Image j of prompt i uses seed `seed + j`, the same for every prompt and cfg, so that
    two settings are compared on the same starting noise.
    """
    totals: dict[str, dict[str, list[bool]]] = {}
    jobs = [(case, j) for case in cases for j in range(images_per_prompt)]
    bar = tqdm(total=len(jobs), desc=f"prompts (cfg {pipe.settings(cfg=cfg)['cfg']})", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        images = pipe([case.prompt for case, _ in chunk], cfg=cfg, seed=[seed + j for _, j in chunk],
                      progress=False, **options)
        for (case, _), image in zip(chunk, images):
            for attribute, ok in score_scene(analyze(image), case.expected).items():
                totals.setdefault(case.group, {}).setdefault(attribute, []).append(ok)
        bar.update(len(chunk))
    bar.close()
    report = PromptReport(pipe.settings(cfg=cfg)["cfg"])
    for group, attributes in totals.items():
        report.accuracy[group] = {a: sum(v) / len(v) for a, v in attributes.items()}
        report.images[group] = len(attributes["all"])
    return report
