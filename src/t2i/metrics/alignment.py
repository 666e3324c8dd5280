"""Text alignment by nearest neighbour: does a generated image look most like the emoji it was prompted with?

Each generated image's Inception features are compared (Euclidean distance) with those of a
gallery of labelled dataset images; the gallery's labels (emoji) are ranked by their nearest
image, and the prompt counts as a top-k hit if its label is among the k nearest labels.
Ranking labels rather than images keeps five skin tones of one emoji from filling a top-5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AlignmentResult:
    top1: float
    top5: float
    scored: int  # queries whose label is in the gallery
    skipped: int  # queries whose label is not

    def __str__(self) -> str:
        return (f"alignment top-1 {self.top1:.1%}, top-5 {self.top5:.1%} "
                f"({self.scored} images; {self.skipped} whose emoji is not in the gallery left out)")


def label_ranks(queries: torch.Tensor, gallery: torch.Tensor, gallery_labels: list[str],
                query_labels: list[str], batch_size: int = 256) -> list[int | None]:
    """Each query's rank (0 = nearest) of its own label among the gallery's labels ordered by
    their nearest image; None if the label is not in the gallery."""
    names = sorted(set(gallery_labels))
    index = {name: i for i, name in enumerate(names)}
    column = torch.tensor([index[label] for label in gallery_labels])
    ranks = []
    for start in range(0, len(queries), batch_size):
        distances = torch.cdist(queries[start:start + batch_size].double(), gallery.double())
        nearest = torch.full((len(distances), len(names)), float("inf"), dtype=torch.float64)
        nearest.scatter_reduce_(1, column.expand(len(distances), -1), distances, "amin")
        for row, label in zip(nearest, query_labels[start:start + batch_size]):
            if label not in index:
                ranks.append(None)
            else:
                ranks.append(int((row < row[index[label]]).sum()))
    return ranks


def alignment(queries: torch.Tensor, query_labels: list[str], gallery: torch.Tensor,
              gallery_labels: list[str]) -> AlignmentResult:
    ranks = [r for r in label_ranks(queries, gallery, gallery_labels, query_labels) if r is not None]
    skipped = len(query_labels) - len(ranks)
    if not ranks:
        return AlignmentResult(float("nan"), float("nan"), 0, skipped)
    return AlignmentResult(sum(r < 1 for r in ranks) / len(ranks), sum(r < 5 for r in ranks) / len(ranks),
                           len(ranks), skipped)
