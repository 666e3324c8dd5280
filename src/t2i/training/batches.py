"""The batches of a run's steps: those of step k depend only on (seed, k), so a resumed run
takes the same steps the uninterrupted one would."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from ..errors import UserError
from .config import RunConfig


class StepBatchSampler(torch.utils.data.Sampler):
    """Index batches for steps start..stop-1; the batch of step k depends only on (seed, k).

    Each epoch is a fresh permutation seeded by (seed, epoch); the last partial batch of
    an epoch is dropped so that every batch has the same size. With `weights` (one per
    image), an epoch is instead `size` draws with replacement, image i with probability
    ∝ weights[i]. With a `share` (positions in the batch), only those examples of each batch
    are yielded: one process's part of a batch that several compute (`distributed.World.share`).
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int,
                 weights: torch.Tensor | None = None, share: range | None = None):
        if size < batch_size:
            raise UserError(f"the dataset has {size} images, fewer than one batch of {batch_size}: lower batch_size")
        if weights is not None and len(weights) != size:
            raise ValueError(f"{len(weights)} weights for {size} images")
        self.size, self.batch_size, self.seed, self.start, self.stop = size, batch_size, seed, start, stop
        self.per_epoch, self.weights = size // batch_size, weights
        self.share = share or range(batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * 100_003 + epoch) % 2**63)  # manual_seed's range
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        epoch, perm = -1, None
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = self.epoch_order(epoch)
            offset = (step % self.per_epoch) * self.batch_size
            yield perm[offset + self.share.start: offset + self.share.stop].tolist()


def group_weights(labels: Sequence) -> torch.Tensor:
    """A weight per item, 1 / (number of items with its label): drawn by these weights,
    every label comes up equally often, however many items it has."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


def step_loader(dataset, config: RunConfig, start: int, device: torch.device,
                weights: torch.Tensor | None = None, share: range | None = None) -> torch.utils.data.DataLoader:
    """The batches of steps start..max_steps-1, or this process's `share` of each (see `StepBatchSampler`)."""
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.max_steps, weights,
                               share)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                       pin_memory=device.type == "cuda")


def step_seed(seed: int, step: int) -> int:
    """The seed of step k's randomness (noise, timesteps, dropout, caption choice)."""
    return (seed * 1_000_003 + step) % (2**63)


def example_generators(seed: int, step: int, positions: range | Sequence[int]) -> list[torch.Generator]:
    """A generator for each example of step k's batch, seeded by (seed, k, its position in the batch): what
    an example draws does not depend on which process computes it, or with which others."""
    base = step_seed(seed, step)
    return [torch.Generator().manual_seed((base * 1_000_033 + position) % (2**63)) for position in positions]
