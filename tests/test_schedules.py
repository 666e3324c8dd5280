import math

import pytest
import torch

from t2i.errors import UserError
from t2i.schedules import SCHEDULES, get_betas, timestep_grid


def test_linear_matches_ddpm_paper():
    betas = get_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.all(betas[1:] > betas[:-1])


def test_scaled_linear_is_linear_in_sqrt_beta():
    betas = get_betas("scaled_linear", 1000)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    steps = betas.sqrt().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps))


def test_cosine_follows_its_alpha_bar_and_is_clipped():
    T, s = 1000, 0.008
    betas = get_betas("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - betas, 0)
    assert abar[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert betas.max().item() <= 0.999 and betas[-1].item() == pytest.approx(0.999)


def test_linear_alpha_is_seed_003():
    alphas = 1 - get_betas("linear_alpha", 1000)
    assert alphas[0].item() == pytest.approx(0.9999) and alphas[-1].item() == pytest.approx(0.98)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_is_a_valid_beta_sequence(name):
    betas = get_betas(name, 100)
    assert betas.shape == (100,) and torch.all(betas > 0) and torch.all(betas < 1)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="unknown schedule 'quadratic'.*linear"):
        get_betas("quadratic", 10)


@pytest.mark.parametrize("spacing,expected", [
    ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
    ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
])
def test_timestep_spacings(spacing, expected):
    assert timestep_grid(1000, 10, spacing).tolist() == expected


def test_full_grid_is_every_timestep_descending():
    assert timestep_grid(1000, 1000).tolist() == list(range(999, -1, -1))


def test_more_steps_than_timesteps_is_a_user_error():
    with pytest.raises(UserError, match="between 1 and the model's 1000"):
        timestep_grid(1000, 1001)
