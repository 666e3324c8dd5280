"""FID, KID and nearest-neighbour text alignment of generated images against a held-out split
(the metrics in `t2i.metrics`), beside the floor a model that reproduced its training set would score."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import durable_write, read_json_lines, short_hash

# prompts phrased as people write them, none a caption of the emoji dataset ({"text", "emoji", "name"} a line)
PHRASINGS = Path(__file__).parent / "phrasings.jsonl"


def read_prompts(path: str | Path) -> list[dict]:
    """A JSON-lines file of {"text": prompt, "emoji": the emoji it asks for} (`PHRASINGS`'s form)."""
    rows = []
    for number, row in read_json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not isinstance(row.get("emoji"), str):
            raise UserError(f"{str(path)!r}, line {number}: each line is {{\"text\": prompt, \"emoji\": code}}")
        rows.append(row)
    if not rows:
        raise UserError(f"{str(path)!r} holds no prompts")
    return rows

if TYPE_CHECKING:
    from ..metrics.alignment import AlignmentResult
    from ..metrics.kid import KIDResult


@dataclass
class SampleQualityRow:
    """FID, KID and alignment of one set of images against the reference (the held-out split, or the
    prompted emoji's images)."""

    name: str
    num_images: int
    fid: float
    kid: "KIDResult"
    alignment: "AlignmentResult | None"

    def __str__(self) -> str:
        text = f"{self.name:<8} N={self.num_images:<5} FID {self.fid:8.2f}  {self.kid}"
        return text + (f"  {self.alignment}" if self.alignment is not None else "")


@dataclass
class SampleQualityReport:
    """The model's row and, where asked for, the floor's: a line each."""

    rows: list[SampleQualityRow]

    def __str__(self) -> str:
        return "\n".join(str(row) for row in self.rows)


# how images are read for the network (`images.read_image`): raised when that changes, so that cached features
# of the old reading are not served (2: transparency on white, EXIF orientation)
READING = 2


def files_digest(paths, salt: str = "") -> str:
    """A short hash of files' paths, sizes and modification times: what a cache of results
    computed from them is kept under, so that changed files are not read from a stale cache."""
    stats = [(Path(path).resolve(), Path(path).stat()) for path in paths]
    return short_hash(salt, *(f"{path}|{stat.st_size}|{stat.st_mtime_ns}" for path, stat in stats))


def cached_features(extractor, dataset, cache_dir: Path | None, progress: bool, desc: str) -> torch.Tensor:
    """Inception features of every image of an `ImageFolder`, kept in `cache_dir` under a hash of
    its files (name, size, mtime), image size and `READING`, so the dataset is read through the network once."""
    if cache_dir is None:
        return extractor.of_dataset(dataset, progress=progress, desc=desc)
    salt = f"{READING}|{dataset.image_size}"
    path = Path(cache_dir) / f"inception-{files_digest(dataset.files, salt)}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["features"]
        except (OSError, SafetensorError, KeyError) as error:  # a damaged cache is computed again, not fatal
            warnings.warn(f"the cached features {str(path)!r} are unreadable ({error}): computing them again",
                          stacklevel=2)
    features = extractor.of_dataset(dataset, progress=progress, desc=desc)
    try:  # a cache that cannot be written (read-only, full) costs the next run time, not this run's result
        path.parent.mkdir(parents=True, exist_ok=True)
        durable_write(path, lambda tmp: save_file({"features": features.contiguous()}, str(tmp)))
    except (OSError, SafetensorError) as error:
        warnings.warn(f"could not keep the features in {str(cache_dir)!r} ({error}): the next run computes them "
                      "again; give a writable --cache", stacklevel=2)
    return features


def prompted_reference(features: torch.Tensor, labels: list, wanted: list[str], data: str) -> torch.Tensor:
    """The rows of `features` whose label is one of the `wanted` emoji: prompts' own reference set."""
    keep = [i for i, label in enumerate(labels) if label in set(wanted)]
    missing = sorted(set(wanted) - {labels[i] for i in keep})
    if missing:
        raise UserError(f"{data!r} has no image of emoji {', '.join(missing[:5])} that the prompts ask for: "
                        "give prompts of emoji the dataset has, or a dataset whose metadata.jsonl names them")
    if len(keep) < 2:
        raise UserError(f"{data!r} has {len(keep)} image of the prompts' emoji: FID needs at least two")
    return features[keep]


@torch.no_grad()
def sample_quality(pipe, data: str, num_images: int | None = None, batch_size: int = 32, seed: int = 0,
                   floor: bool = True, cache_dir: Path | None = None, kid_subsets: int = 100,
                   progress: bool = True, prompts: list[dict] | None = None, **options) -> SampleQualityReport:
    """FID and KID of images generated from the held-out split's captions against its images,
    and text alignment (is a generated image's nearest training emoji the prompted one?).

    Image i is generated from held-out image i's canonical caption with seed `seed + i`, or, given
    `prompts` ({"text", "emoji"} each: phrasings the captions do not have, `PHRASINGS`), from prompt
    i, its alignment judged against its "emoji" and FID/KID against the dataset's images (both
    splits) of the emoji the prompts ask for: most of those emoji have no held-out image. With
    `floor` (held-out captions only), the same metrics for as many training images (drawn with
    `seed`), which is what a model that reproduced its training set would score.
    Alignment needs the dataset's `metadata.jsonl` to name each image's `emoji`.
    """
    from ..data.folder import ImageFolder
    from ..metrics.alignment import alignment
    from ..metrics.fid import FIDReference
    from ..metrics.inception import InceptionFeatures
    from ..metrics.kid import kid

    test = ImageFolder(data, pipe.image_size, "test", captioned=True)
    train = ImageFolder(data, pipe.image_size, "train", captioned=True)
    texts = [p["text"] for p in prompts] if prompts is not None else [test.caption(i) for i in range(len(test))]
    n = min(num_images or len(texts), len(texts))
    extractor = InceptionFeatures(pipe.device)
    test_features = cached_features(extractor, test, cache_dir, progress, "inception: held-out")
    train_features = cached_features(extractor, train, cache_dir, progress, "inception: training")
    labels = [test.record(i).get("emoji") for i in range(len(test))]
    train_labels = [train.record(i).get("emoji") for i in range(len(train))]
    labelled = all(labels) and all(train_labels)
    query_labels = [p["emoji"] for p in prompts][:n] if prompts is not None else labels[:n]
    reference = test_features if prompts is None else prompted_reference(
        torch.cat([test_features, train_features]), labels + train_labels, query_labels, data)

    generated = []
    for start in tqdm(range(0, n, batch_size), desc="generate", disable=not progress):
        indices = range(start, min(start + batch_size, n))
        images = pipe(prompt=[texts[i] for i in indices], seed=[seed + i for i in indices], progress=False,
                      output_type="pt", **options) * 2 - 1
        generated.append(extractor(images).double().cpu())
    generated = torch.cat(generated)

    fid_to_reference = FIDReference(reference)

    def row(name: str, features: torch.Tensor, query_labels: list[str]) -> SampleQualityRow:
        aligned = alignment(features, query_labels, train_features, train_labels) if labelled else None
        return SampleQualityRow(name, len(features), fid_to_reference(features),
                                kid(features, reference, kid_subsets, seed=seed), aligned)

    rows = [row("model", generated, query_labels)]
    if floor and prompts is None:  # a training image scored against its own emoji's images would be no floor
        chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        floor_row = row("floor", train_features[chosen], [train_labels[i] for i in chosen.tolist()])
        if labelled:  # a real held-out image's nearest training emoji: the best alignment can be
            floor_row.alignment = alignment(test_features[:n], labels[:n], train_features, train_labels)
        rows.append(floor_row)
    return SampleQualityReport(rows)
