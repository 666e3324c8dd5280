"""The variational bound in bits/dim, checked against the entropy of known data."""

import math

import pytest
import torch

from t2i.diffusion import Diffusion

MU, S = 0.1, 0.2


def quantise(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def discretised_gaussian_entropy_bits(mu, s):
    """H of N(mu, s²) rounded to the 256 levels of [-1, 1] (edge levels take the tails), in bits."""
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    edges = torch.cat([torch.tensor([-math.inf]), (levels[:-1] + levels[1:]) / 2, torch.tensor([math.inf])])
    p = torch.special.ndtr((edges - mu) / s).diff()
    p = p[p > 0]
    return -(p * p.log2()).sum().item()


@pytest.fixture(scope="module")
def setup():
    diffusion = Diffusion.from_schedule("linear", 1000)
    x0 = quantise(MU + S * torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return diffusion, x0


def test_bound_with_the_optimal_model_reaches_the_data_entropy(setup, oracle):
    diffusion, x0 = setup
    entropy = discretised_gaussian_entropy_bits(MU, S)
    bpd = diffusion.nll_bits_per_dim(oracle(diffusion, MU, S), x0, generator=torch.Generator().manual_seed(1))
    assert bpd.shape == (32,)
    # an upper bound on the NLL, so not below the entropy (up to Monte-Carlo noise), and tight
    assert entropy - 0.02 < bpd.mean().item() < entropy + 0.1


def test_beta_tilde_gives_a_looser_bound(setup, oracle):
    diffusion, x0 = setup
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    model = oracle(diffusion, MU, S)
    beta = diffusion.nll_bits_per_dim(model, x0, variance="beta", generator=g()).mean()
    beta_tilde = diffusion.nll_bits_per_dim(model, x0, variance="beta_tilde", generator=g()).mean()
    assert beta_tilde > beta + 0.3


def test_a_worse_model_gets_a_worse_bound(setup, oracle):
    diffusion, x0 = setup
    good = diffusion.nll_bits_per_dim(oracle(diffusion, MU, S), x0, generator=torch.Generator().manual_seed(1))
    wrong = diffusion.nll_bits_per_dim(oracle(diffusion, -0.3, 0.5), x0, generator=torch.Generator().manual_seed(1))
    assert wrong.mean() > good.mean() + 0.5


def test_sampled_terms_estimate_the_full_bound_without_bias(setup, oracle):
    diffusion, x0 = setup
    model = oracle(diffusion, MU, S)
    exact = diffusion.nll_bits_per_dim(model, x0, generator=torch.Generator().manual_seed(1)).mean().item()
    estimates = [
        diffusion.nll_bits_per_dim(model, x0, num_timesteps=50, generator=torch.Generator().manual_seed(seed))
        .mean().item()
        for seed in range(8)
    ]
    mean = sum(estimates) / len(estimates)
    spread = torch.tensor(estimates).std().item() / math.sqrt(len(estimates))
    assert abs(mean - exact) < max(4 * spread, 0.02)
