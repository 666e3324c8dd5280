"""The Kernel Inception Distance (Bińkowski et al. 2018, §4): the squared maximum mean
discrepancy between two sets of features under the cubic polynomial kernel
k(x, y) = (xᵀy / D + 1)³, with the unbiased estimator

    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j).

It is computed on `subsets` random subsets of min(`subset_size`, N₁, N₂) features of each set
(as the paper's code does, and torch-fidelity and clean-fid after it, so that numbers compare) and
reported as mean and standard deviation; when both sets are that size, every subset would be the
whole set, so it is one estimate on all of them, with no spread. Unlike FID it is unbiased, so
small sets compare fairly, and it can be slightly negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class KIDResult:
    mean: float
    std: float
    subsets: int
    subset_size: int

    def __str__(self) -> str:
        if self.subsets == 1:
            return f"KID {self.mean:.5f} (one estimate on {self.subset_size} images a side)"
        return f"KID {self.mean:.5f} ± {self.std:.5f} ({self.subsets} subsets of {self.subset_size})"


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((k_xx.sum() - k_xx.trace()) / (m * (m - 1)) + (k_yy.sum() - k_yy.trace()) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(features1: torch.Tensor, features2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KIDResult:
    """KID between features [N_1, D] and [N_2, D]; subsets of min(subset_size, N_1, N_2)."""
    size = min(subset_size, len(features1), len(features2))
    if size < 2:
        raise UserError(f"KID needs at least 2 images in each set, got {len(features1)} and {len(features2)}")
    if size == len(features1) == len(features2):
        return KIDResult(mmd2_unbiased(features1.double(), features2.double()), float("nan"), 1, size)
    generator = torch.Generator().manual_seed(seed)
    x, y = features1.double(), features2.double()
    values = torch.tensor([mmd2_unbiased(x[torch.randperm(len(x), generator=generator)[:size]],
                                         y[torch.randperm(len(y), generator=generator)[:size]])
                           for _ in range(subsets)])
    return KIDResult(values.mean().item(), values.std().item() if subsets > 1 else 0.0, subsets, size)
