"""Datasets: a folder of images, and synthetic shapes."""

from __future__ import annotations

import torch

from .folder import ImageFolder
from .shapes import ShapesDataset

SHAPES_LENGTHS = {"train": 50_000, "test": 2_000}
SHAPES_SOURCES = {"shapes": 1, "shapes2": 2}  # name → most objects an image


def load_dataset(source: str, image_size: int, split: str = "train",
                 captioned: bool = False) -> torch.utils.data.Dataset:
    """"shapes" (one object an image), "shapes2" (one or two) or the path of a folder of
    images, on one split. `captioned` makes items `(image, caption)`."""
    if source in SHAPES_SOURCES:
        length = SHAPES_LENGTHS.get(split, SHAPES_LENGTHS["train"])
        return ShapesDataset(length, image_size, split, max_objects=SHAPES_SOURCES[source], captioned=captioned)
    return ImageFolder(source, image_size, split, captioned=captioned)


def captions_of(dataset) -> list[str]:
    """Every caption of a captioned dataset (all of an image's, if it has several), read
    without loading its images."""
    if hasattr(dataset, "captions"):
        return [c for i in range(len(dataset)) for c in dataset.captions(i)]
    return [dataset.caption(i) for i in range(len(dataset))]


__all__ = ["ImageFolder", "ShapesDataset", "captions_of", "load_dataset"]
