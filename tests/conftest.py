import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


class GaussianOracle:
    """The optimal noise predictor for data x0 ~ N(mu, s² I):

    E[ε | x_t] = sqrt(1-ᾱ_t) (x_t - sqrt(ᾱ_t) mu) / (ᾱ_t s² + 1 - ᾱ_t)   (DESIGN.md, Testing).
    """

    def __init__(self, diffusion, mu: float, s: float):
        self.diffusion, self.mu, self.s = diffusion, mu, s

    def __call__(self, x_t, t):
        abar = self.diffusion.at(self.diffusion.alphas_cumprod, t, x_t)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)


@pytest.fixture
def oracle():
    return GaussianOracle
