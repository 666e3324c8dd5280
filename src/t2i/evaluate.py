"""Evaluation: negative log-likelihood in bits per dimension on held-out data, how well an
autoencoder reconstructs held-out images (PSNR), how well generated images follow
their prompts (per-attribute accuracy on shapes prompts), and FID, KID and nearest-neighbour
text alignment of generated images against a held-out split (the metrics in `t2i.metrics`)."""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data.analyze import analyze
from .data.shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, WHERE, Scene
from .diffusion import Diffusion, Model
from .images import to_levels

if TYPE_CHECKING:
    from .metrics.alignment import AlignmentResult
    from .metrics.kid import KIDResult


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


# -- FID, KID and text alignment on a held-out split -----------------------------------------
@dataclass
class SampleQualityRow:
    """FID, KID and alignment of one set of images against the held-out split."""

    name: str
    num_images: int
    fid: float
    kid: "KIDResult"
    alignment: "AlignmentResult | None"

    def __str__(self) -> str:
        text = f"{self.name:<8} N={self.num_images:<5} FID {self.fid:8.2f}  {self.kid}"
        return text + (f"  {self.alignment}" if self.alignment is not None else "")


def files_digest(paths, salt: str = "") -> str:
    """A short hash of files' paths, sizes and modification times: what a cache of results
    computed from them is kept under, so that changed files are not read from a stale cache."""
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_features(extractor, dataset, cache_dir: Path | None, progress: bool, desc: str) -> torch.Tensor:
    """Inception features of every image of an `ImageFolder`, kept in `cache_dir` under a hash of
    its files (name, size, mtime) and image size, so the dataset is read through the network once."""
    if cache_dir is None:
        return extractor.of_dataset(dataset, progress=progress, desc=desc)
    path = Path(cache_dir) / f"inception-{files_digest(dataset.files, str(dataset.image_size))}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    features = extractor.of_dataset(dataset, progress=progress, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.contiguous()}, str(path))
    return features


@torch.no_grad()
def sample_quality(pipe, data: str, num_images: int | None = None, batch_size: int = 32, seed: int = 0,
                   floor: bool = True, cache_dir: Path | None = None, kid_subsets: int = 100,
                   progress: bool = True, **options) -> list[SampleQualityRow]:
    """FID and KID of images generated from the held-out split's captions against its images,
    and text alignment (is a generated image's nearest training emoji the prompted one?).

    Image i is generated from held-out image i's canonical caption with seed `seed + i`. With
    `floor`, the same metrics for as many training images (drawn with `seed`), which is what a
    model that reproduced its training set would score. Alignment needs the dataset's
    `metadata.jsonl` to name each image's `emoji`.
    """
    from .data.folder import ImageFolder
    from .metrics.alignment import alignment
    from .metrics.fid import FIDReference
    from .metrics.inception import InceptionFeatures
    from .metrics.kid import kid

    test = ImageFolder(data, pipe.image_size, "test", captioned=True)
    train = ImageFolder(data, pipe.image_size, "train", captioned=True)
    n = min(num_images or len(test), len(test))
    extractor = InceptionFeatures(pipe.device)
    test_features = cached_features(extractor, test, cache_dir, progress, "inception: held-out")
    train_features = cached_features(extractor, train, cache_dir, progress, "inception: training")
    labels = [test.record(i).get("emoji") for i in range(len(test))]
    train_labels = [train.record(i).get("emoji") for i in range(len(train))]
    labelled = all(labels) and all(train_labels)

    generated = []
    for start in tqdm(range(0, n, batch_size), desc="generate", disable=not progress):
        indices = range(start, min(start + batch_size, n))
        images = pipe([test.caption(i) for i in indices], seed=[seed + i for i in indices], progress=False,
                      output_type="pt", **options) * 2 - 1
        generated.append(extractor(images).double().cpu())
    generated = torch.cat(generated)

    fid_to_test = FIDReference(test_features)

    def row(name: str, features: torch.Tensor, query_labels: list[str]) -> SampleQualityRow:
        aligned = alignment(features, query_labels, train_features, train_labels) if labelled else None
        return SampleQualityRow(name, len(features), fid_to_test(features),
                                kid(features, test_features, kid_subsets, seed=seed), aligned)

    rows = [row("model", generated, labels[:n])]
    if floor:
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        floor_row = row("floor", train_features[chosen], [train_labels[i] for i in chosen.tolist()])
        if labelled:  # a real held-out image's nearest training emoji: the best alignment can be
            floor_row.alignment = alignment(test_features[:n], labels[:n], train_features, train_labels)
        rows.append(floor_row)
    return rows
