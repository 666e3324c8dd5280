"""The Fréchet Inception Distance (Heusel et al. 2017, eq. 6).

Two sets of features are summarised by Gaussians N(μ_1, Σ_1), N(μ_2, Σ_2) (the sample mean and
the unbiased covariance), and FID is the Fréchet (2-Wasserstein) distance between them:

    FID = ||μ_1 - μ_2||² + tr(Σ_1 + Σ_2 - 2 (Σ_1 Σ_2)^{1/2}).

tr (Σ_1 Σ_2)^{1/2} is computed as Σ_i sqrt(λ_i) over the eigenvalues λ_i of the symmetric
positive semi-definite Σ_1^{1/2} Σ_2 Σ_1^{1/2}, which has the same eigenvalues as Σ_1 Σ_2;
so no general (complex) matrix square root is needed. All in float64.
FID is biased upward at small N: compare scores computed with the same N only.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ [D], Σ [D, D]) of features [N, D]; Σ with the N - 1 denominator."""
    if len(features) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(features)}")
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def _distance(mu1, sigma1, root1, mu2, sigma2) -> float:
    """The Fréchet distance with Σ_1^{1/2} = `root1` given (float64)."""
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||μ_1 - μ_2||² + tr Σ_1 + tr Σ_2 - 2 tr (Σ_1 Σ_2)^{1/2} (float64)."""
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    return _distance(mu1, sigma1, sqrt_psd(sigma1), mu2, sigma2)


class FIDReference:
    """A fixed set of features to score many sets against: its μ, Σ and Σ^{1/2} computed once.

    Each score then costs one symmetric eigenvalue problem instead of two full ones (the
    trace term is symmetric in the two sets, so either side may be the one whose root is kept).
    """

    def __init__(self, features: torch.Tensor):
        self.mu, self.sigma = feature_statistics(features)
        self.root = sqrt_psd(self.sigma)

    def __call__(self, features: torch.Tensor) -> float:
        """FID between `features` [N, D] and the reference."""
        return _distance(self.mu, self.sigma, self.root, *feature_statistics(features))


def fid(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two sets of features [N_1, D], [N_2, D]."""
    return FIDReference(features1)(features2)
