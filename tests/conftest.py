import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(max(1, torch.get_num_threads()))


class GaussianOracle:
    """The optimal noise predictor for data x0 ~ N(mu, s² I):

    E[ε | x_t] = sqrt(1-ᾱ_t) (x_t - sqrt(ᾱ_t) mu) / (ᾱ_t s² + 1 - ᾱ_t)   (Bayes' rule for jointly Gaussian x_0 and x_t).
    """

    def __init__(self, diffusion, mu: float, s: float):
        self.diffusion, self.mu, self.s = diffusion, mu, s

    def __call__(self, x_t, t):
        abar = self.diffusion.scales_at(t, x_t)[0] ** 2  # t may be fractional (the σ samplers)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)


@pytest.fixture
def oracle():
    return GaussianOracle


class GaussianFlowOracle:
    """The optimal velocity for data x0 ~ N(mu, s² I) on the straight path x = (1 - τ) x_0 + τ ε:

    u = E[ε | x] - E[x_0 | x], with x ~ N((1-τ) mu, (1-τ)² s² + τ²), E[ε | x] = τ r / v and
    E[x_0 | x] = mu + (1-τ) s² r / v for r = x - (1-τ) mu, v = (1-τ)² s² + τ²; τ = σ/(1+σ) of the
    schedule's σ(t), by another road than `Diffusion.flow_input`'s.
    """

    def __init__(self, diffusion, mu: float, s: float):
        self.diffusion, self.mu, self.s = diffusion, mu, s

    def __call__(self, x, t):
        sigma = self.diffusion.sigma_at(t).to(x).reshape(-1, *([1] * (x.ndim - 1)))
        tau = sigma / (1 + sigma)
        r, v = x - (1 - tau) * self.mu, (1 - tau) ** 2 * self.s**2 + tau**2
        return tau * r / v - (self.mu + (1 - tau) * self.s**2 * r / v)


@pytest.fixture
def flow_oracle():
    return GaussianFlowOracle


COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (240, 210, 30)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """A captioned folder where the caption decides the image: plain squares of four colours,
    each caption one of two phrasings, pixels jittered a little."""
    folder = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for i in range(16):
            pixels = np.clip(np.array(rgb) + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}{i}.png")
            (folder / f"{name}{i}.txt").write_text(f"a {name} picture" if i % 2 else f"{name}")
    return folder
