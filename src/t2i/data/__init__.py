"""Datasets: a folder of images, and synthetic shapes."""

from __future__ import annotations

import torch

from .folder import ImageFolder
from .shapes import ShapesDataset

SHAPES_LENGTHS = {"train": 50_000, "test": 2_000}


def load_dataset(source: str, image_size: int, split: str = "train") -> torch.utils.data.Dataset:
    """"shapes" (the synthetic dataset) or the path of a folder of images, on one split."""
    if source == "shapes":
        return ShapesDataset(SHAPES_LENGTHS.get(split, SHAPES_LENGTHS["train"]), image_size, split)
    return ImageFolder(source, image_size, split)


__all__ = ["ImageFolder", "ShapesDataset", "load_dataset"]
