import math

import pytest
import torch

from t2i.errors import UserError
from t2i.schedules import SCHEDULES, get_betas, half_log_snr, timestep_grid


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


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("T", [1000, 100])
def test_every_step_count_gives_that_many_distinct_timesteps_within_range(spacing, T):
    for steps in range(1, T + 1):
        grid = timestep_grid(T, steps, spacing)
        assert len(grid) == steps and grid.min() >= 0 and grid.max() < T, (steps, grid[-3:].tolist())


@pytest.mark.parametrize("T", [1000, 100])
def test_a_trailing_grid_is_every_other_level_of_the_grid_of_twice_its_steps(T):
    # what progressive distillation's rounds stand on: two teacher steps span exactly one student step
    for steps in range(1, T // 2 + 1):
        assert timestep_grid(T, 2 * steps, "trailing")[::2].equal(timestep_grid(T, steps, "trailing")), steps


def test_full_grid_is_every_timestep_descending():
    assert timestep_grid(1000, 1000).tolist() == list(range(999, -1, -1))


def test_more_steps_than_timesteps_is_a_user_error():
    with pytest.raises(UserError, match="between 1 and the model's 1000"):
        timestep_grid(1000, 1001)


@pytest.mark.parametrize("name", ["linear", "scaled_linear"])
def test_logsnr_grid_steps_evenly_in_half_log_snr(name):
    alphas_cumprod = torch.cumprod(1 - get_betas(name, 1000), 0)
    grid = timestep_grid(1000, 20, "logsnr", alphas_cumprod=alphas_cumprod)
    assert grid.tolist() == sorted(set(grid.tolist()), reverse=True) and grid[0] == 999 and grid[-1] == 0
    assert len(grid) == 20
    steps = half_log_snr(alphas_cumprod[grid]).diff()  # λ grows as t falls
    target = (half_log_snr(alphas_cumprod[0]) - half_log_snr(alphas_cumprod[-1])) / 19
    assert (steps > 0).all() and (steps / target - 1).abs().max() < 0.25  # even, up to integer timesteps
    leading = half_log_snr(alphas_cumprod[timestep_grid(1000, 20)]).diff()
    assert leading.max() / leading.min() > 5 * steps.max() / steps.min()  # what it is for


@pytest.mark.parametrize("name, T, steps", [("cosine", 1000, 20), ("linear", 200, 20), ("linear", 30, 30)])
def test_logsnr_grid_has_as_many_distinct_timesteps_as_asked(name, T, steps):
    alphas_cumprod = torch.cumprod(1 - get_betas(name, T), 0)
    grid = timestep_grid(T, steps, "logsnr", alphas_cumprod=alphas_cumprod).tolist()
    assert grid == sorted(set(grid), reverse=True) and len(grid) == steps and grid[0] == T - 1 and grid[-1] == 0


def test_logsnr_grid_needs_the_schedule():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        timestep_grid(1000, 20, "logsnr")
