"""Samplers without training: driven by the exact ε-predictor for Gaussian data."""

import pytest
import torch

from t2i.diffusion import Diffusion
from t2i.errors import UserError
from t2i.sampling import SAMPLERS, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m
from t2i.schedules import timestep_grid

MU, S = 0.5, 0.3


@pytest.fixture
def diffusion():
    return Diffusion.from_schedule("linear", 1000)


def draw(oracle, diffusion, sampler, steps=None, n=10_000, seed=0, **options):
    model = oracle(diffusion, MU, S)
    return sample(model, diffusion, (n, 2), sampler, steps, generator=torch.Generator().manual_seed(seed),
                  progress=False, **options)


@pytest.mark.parametrize("sampler,steps,options", [
    ("ddpm", 1000, {"variance": "beta"}),
    ("ddpm", 1000, {"variance": "beta_tilde"}),
    ("ddim", 250, {"eta": 0.0}),
    ("dpmpp_2m", 20, {}),
])
def test_sampler_recovers_gaussian_data(oracle, diffusion, sampler, steps, options):
    x = draw(oracle, diffusion, sampler, steps, **options)
    assert abs(x.mean().item() - MU) < 0.03 * MU
    assert abs(x.std().item() - S) < 0.03 * S


def test_ddim_50_steps_discretization_error(oracle, diffusion):
    """At 50 steps DDIM's std is several percent low (−7.9% here, linear schedule): the
    discretization error of the ODE solver, the baseline that faster samplers must beat."""
    std_50 = draw(oracle, diffusion, "ddim", 50).std().item()
    std_250 = draw(oracle, diffusion, "ddim", 250).std().item()
    assert 0.88 * S < std_50 < 0.97 * S
    assert abs(std_250 - S) < abs(std_50 - S) / 3


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_dpmpp_2m_at_20_steps_beats_ddim_at_50(oracle, schedule):
    """The point of a second-order solver: fewer network calls for a smaller discretization error."""
    diffusion = Diffusion.from_schedule(schedule, 1000)
    dpm = draw(oracle, diffusion, "dpmpp_2m", 20).std().item()
    ddim = draw(oracle, diffusion, "ddim", 50).std().item()
    assert abs(dpm - S) < 0.04 * S and abs(dpm - S) < abs(ddim - S), (dpm, ddim)


def test_dpmpp_2m_first_order_is_ddim(oracle, diffusion):
    """With the previous x̂_0 equal to the current one the 2M correction vanishes: on a two-step
    grid (the second step is the final jump to x̂_0) DPM-Solver++(2M) and DDIM agree."""
    grid = timestep_grid(1000, 2, "linspace")
    model = oracle(diffusion, MU, S)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(3))
    eps_fn = lambda x_t, t: model(x_t, t)  # noqa: E731
    torch.testing.assert_close(sample_dpmpp_2m(eps_fn, diffusion, x, grid, progress=False),
                               sample_ddim(eps_fn, diffusion, x, grid, progress=False))


def test_ddim_with_eta_one_on_the_full_grid_is_ddpm(oracle, diffusion):
    """DDIM eq. 16: η = 1 makes the generative process DDPM's with σ² = β̃; same noise, same samples."""
    ddpm = draw(oracle, diffusion, "ddpm", variance="beta_tilde", n=500)
    ddim = draw(oracle, diffusion, "ddim", 1000, eta=1.0, n=500)
    assert torch.allclose(ddpm, ddim, atol=1e-4)


def test_respaced_ddpm_still_samples_the_data(oracle):
    diffusion = Diffusion.from_schedule("cosine", 1000)
    x = draw(oracle, diffusion, "ddpm", 250)
    assert abs(x.mean().item() - MU) < 0.03 * MU and abs(x.std().item() - S) < 0.03 * S


def test_same_seed_same_sample_whatever_the_batch(oracle, diffusion):
    model = oracle(diffusion, MU, S)
    generators = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    batch = sample(model, diffusion, (3, 1, 4, 4), "ddpm", 100, generator=generators([7, 8, 9]), progress=False)
    alone = sample(model, diffusion, (1, 1, 4, 4), "ddpm", 100, generator=generators([8]), progress=False)
    assert torch.allclose(batch[1], alone[0], atol=1e-6)


def test_samplers_take_the_grid_they_are_given(oracle, diffusion):
    calls = []
    model = oracle(diffusion, MU, S)

    def eps_fn(x, t):
        calls.append(int(t[0]))
        return model(x, t)

    grid = timestep_grid(1000, 10, "trailing")
    for fn in (sample_ddpm, sample_ddim, sample_dpmpp_2m):
        calls.clear()
        fn(eps_fn, diffusion, torch.randn(4, 2), grid, progress=False)
        assert calls == grid.tolist()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clipping_keeps_predicted_x0_in_range(diffusion, sampler):
    wild = lambda x, t: 3.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t[0])))  # noqa: E731
    kwargs = dict(generator=torch.Generator().manual_seed(0), progress=False)
    assert sample(wild, diffusion, (64, 2), sampler, 20, **kwargs).abs().max() > 1
    clipped = sample(wild, diffusion, (64, 2), sampler, 20, clip=True, **kwargs)
    # DDPM's last step adds no noise and DDIM's returns x̂_0 itself, so both end inside [-1, 1]
    assert clipped.abs().max() <= 1 + 1e-5


def test_clipping_changes_nothing_when_x0_is_in_range(oracle, diffusion):
    plain = draw(oracle, diffusion, "ddim", 50, n=200)
    model = oracle(diffusion, MU, S)
    clipped = sample(model, diffusion, (200, 2), "ddim", 50, generator=torch.Generator().manual_seed(0),
                     progress=False, clip=True)
    inside = (plain.abs() < 0.9).all(dim=1)
    assert torch.allclose(plain[inside], clipped[inside], atol=1e-3)


def test_registry_and_bad_input(oracle, diffusion):
    assert set(SAMPLERS) >= {"ddpm", "ddim"}
    model = oracle(diffusion, MU, S)
    with pytest.raises(UserError, match="unknown sampler 'euler_x'.*ddpm"):
        sample(model, diffusion, (2, 2), "euler_x")
    with pytest.raises(UserError, match="between 1 and the model's 1000"):
        sample(model, diffusion, (2, 2), "ddim", steps=1001)
    with pytest.raises(UserError, match="takes no option eta"):
        sample(model, diffusion, (2, 2), "ddpm", eta=0.5)
