"""Samplers without training: driven by the exact ε-predictor for Gaussian data."""

import pytest
import torch

from t2i.diffusion import Diffusion
from t2i.errors import UserError
from t2i.samplers.ancestral import sample_ddim
from t2i.samplers.dpm_solver import sample_dpmpp_2m
from t2i.samplers.karras import sample_euler
from t2i.samplers import SAMPLERS
from t2i.samplers.base import sampler_grid
from t2i.sampling import SamplerSettings, StopSampling, sample

MU, S = 0.5, 0.3


@pytest.fixture
def diffusion():
    return Diffusion.from_schedule("linear", 1000)


def draw(oracle, diffusion, sampler, steps=None, n=10_000, seed=0, **options):
    model = oracle(diffusion, MU, S)
    return sample(model, diffusion, (n, 2), SamplerSettings(sampler, steps, options=options),
                  generator=torch.Generator().manual_seed(seed), progress=False)


@pytest.mark.parametrize("sampler,steps,options", [
    ("ddpm", 1000, {"variance": "beta"}),
    ("ddpm", 1000, {"variance": "beta_tilde"}),
    ("ddim", 250, {"eta": 0.0}),
    ("dpmpp_2m", 20, {}),
    ("dpmpp_2m_sde", 50, {}),
    ("euler", 250, {}),
    ("euler_ancestral", 250, {}),
    ("heun", 50, {}),
    ("lms", 50, {}),
])
def test_sampler_recovers_gaussian_data(oracle, diffusion, sampler, steps, options):
    x = draw(oracle, diffusion, sampler, steps, **options)
    assert abs(x.mean().item() - MU) < 0.03 * MU
    assert abs(x.std().item() - S) < 0.03 * S


@pytest.mark.parametrize("sampler,steps,tolerance", [("pc", 250, 0.05), ("langevin", 100, 0.08)])
def test_score_samplers_recover_gaussian_data(oracle, diffusion, sampler, steps, tolerance):
    """The score view: Langevin dynamics on s_θ = −ε_θ / sqrt(1−ᾱ). The corrector's
    step follows ‖z‖/‖s‖, a ratio that concentrates only in many dimensions, so 64 here.
    Annealed Langevin lags behind the falling noise: its std ends a few percent high."""
    model = oracle(diffusion, MU, S)
    x = sample(model, diffusion, (1000, 64), SamplerSettings(sampler, steps),
               generator=torch.Generator().manual_seed(0), progress=False)
    assert abs(x.mean().item() - MU) < 0.03 * MU
    assert abs(x.std().item() - S) < tolerance * S


def test_the_corrector_corrects(oracle, diffusion):
    """A coarse ancestral predictor alone is far off (DDPM at 25 steps: std −35%); Langevin
    corrector steps at each level pull the samples back toward p_t."""
    model = oracle(diffusion, MU, S)
    errors = {}
    for corrector_steps in (0, 2):
        settings = SamplerSettings("pc", 25, options={"corrector_steps": corrector_steps})
        x = sample(model, diffusion, (1000, 64), settings, generator=torch.Generator().manual_seed(0), progress=False)
        errors[corrector_steps] = abs(x.std().item() - S)
    assert errors[2] < errors[0] / 2, errors


def test_langevin_chain_at_one_level_reaches_that_level(oracle, diffusion):
    """Langevin dynamics at a single noise level σ samples p_σ = N(μ, s² + σ²) (in x_0 + σε form)
    from any start: run long at one level from a far-off start, the chain forgets it."""
    from t2i.samplers.base import Grid
    from t2i.samplers.langevin import sample_langevin

    model = oracle(diffusion, MU, S)
    sigma = float(diffusion.sigmas[400])
    grid = Grid(torch.tensor([400]), torch.tensor([sigma, sigma], dtype=torch.float64))
    start = torch.full((2000, 8), 5.0)
    x = sample_langevin(lambda x_t, t: diffusion.model_eps(model, x_t, t), start, grid, progress=False,
                        generator=torch.Generator().manual_seed(0), langevin_steps=200, step_size=0.1)
    x = x * (1 + sigma**2) ** 0.5  # back to x_0 + σε
    assert abs(x.mean().item() - MU) < 0.05
    assert abs(x.var().item() / (S**2 + sigma**2) - 1) < 0.06


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
    """With the previous x̂_0 equal to the current one the 2M correction vanishes: on a grid
    that takes only first-order steps (the first, and the last onto x̂_0) DPM-Solver++(2M)
    and DDIM agree."""
    grid = sampler_grid(diffusion, 2, "linspace")
    model = oracle(diffusion, MU, S)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(3))
    eps_fn = lambda x_t, t: model(x_t, t)  # noqa: E731
    torch.testing.assert_close(sample_dpmpp_2m(eps_fn, x, grid, progress=False),
                               sample_ddim(eps_fn, x, grid, progress=False))


@pytest.mark.parametrize("spacing", ["trailing", "leading", "karras"])
def test_euler_is_ddim_written_in_sigma(oracle, diffusion, spacing):
    """Karras et al. §3: Euler's method on dx/dσ = (x − D)/σ is DDIM at η = 0, step for step, on any
    grid: integer timesteps, or karras's σ asked at fractional ones."""
    grid = sampler_grid(diffusion, 10, spacing)  # one grid for both: `sample` rounds karras's times for DDIM
    model = oracle(diffusion, MU, S)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    eps_fn = lambda x_t, t: model(x_t, t)  # noqa: E731
    torch.testing.assert_close(sample_euler(eps_fn, x, grid, progress=False),
                               sample_ddim(eps_fn, x, grid, progress=False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampler,steps", [("euler", 400), ("heun", 60), ("dpmpp_2m", 50), ("ddim", 500)])
def test_flow_model_samples_gaussian_data(oracle, flow_oracle, sampler, steps):
    """A network of the velocity u = ε − x_0 (flow matching) runs under every sampler through model_eps,
    and samples what the ε-network of the same data on the same schedule samples."""
    runs = [sample(model(Diffusion.from_schedule("rectified_flow", 1000, prediction_type=prediction), MU, S),
                   Diffusion.from_schedule("rectified_flow", 1000, prediction_type=prediction), (10_000, 2),
                   SamplerSettings(sampler, steps), generator=torch.Generator().manual_seed(0), progress=False)
            for model, prediction in ((flow_oracle, "flow"), (oracle, "epsilon"))]
    torch.testing.assert_close(runs[0], runs[1], atol=1e-4, rtol=1e-4)
    assert abs(runs[0].mean().item() - MU) < 0.03 * MU
    assert abs(runs[0].std().item() - S) < 0.03 * S


def test_euler_on_a_flow_model_is_euler_on_the_straight_path(flow_oracle):
    """Rectified flow's sampler, x ← x + (τ' − τ) u(x, t) on x = (1 − τ) x_0 + τ ε, is the Euler
    sampler step for step (both are DDIM), so a flow model needs no sampler of its own."""
    diffusion = Diffusion.from_schedule("rectified_flow", 1000, prediction_type="flow")
    model, settings = flow_oracle(diffusion, MU, S), SamplerSettings("euler", 12)
    noise = torch.randn(200, 2, generator=torch.Generator().manual_seed(1))
    ours = sample(model, diffusion, noise.shape, settings, x_T=noise, progress=False)
    grid = settings.grid(diffusion)
    taus = grid.sigmas / (1 + grid.sigmas)
    x = noise * (1 + grid.sigmas[0] ** 2).sqrt() * (1 - taus[0])  # x_T = sqrt(ᾱ)(x_0 + σ ε) → (1 − τ)(x_0 + σ ε)
    for i, t in enumerate(grid.timesteps):
        x = x + (taus[i + 1] - taus[i]).item() * model(x, t.expand(len(x)).float())
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_orders_of_convergence(oracle, diffusion):
    """Doubling the steps divides the error of a p-th order solver by about 2^p: Euler is first
    order, Heun second, LMS (order 4) and DPM-Solver++(2M) higher than first; measured against a
    400-step Heun solution from the same x_T, on a Karras grid."""
    model = oracle(diffusion, MU, S)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    reference = sample(model, diffusion, x_T.shape, SamplerSettings("heun", 400), x_T=x_T, progress=False)

    def error(name, steps):
        out = sample(model, diffusion, x_T.shape, SamplerSettings(name, steps, "karras"), x_T=x_T, progress=False)
        return (out - reference).abs().mean().item()

    ratios = {name: error(name, steps) / error(name, 2 * steps)
              for name, steps in (("euler", 30), ("heun", 15), ("lms", 15), ("dpmpp_2m", 15))}
    assert 1.7 < ratios["euler"] < 2.3 and 3.4 < ratios["heun"] < 6, ratios
    assert ratios["lms"] > 4 and ratios["dpmpp_2m"] > 3, ratios
    # and per network call the higher orders win: Heun's 59 calls against Euler's 60
    assert error("heun", 30) < error("euler", 60) / 2


def test_karras_grid_spaces_sigma_and_keeps_it_exact(diffusion):
    grid = sampler_grid(diffusion, 10, "karras")
    sigmas = grid.sigmas[:-1]
    assert sigmas[0].item() == pytest.approx(float(diffusion.sigmas[-1]))
    assert sigmas[-1].item() == pytest.approx(float(diffusion.sigmas[0]))
    assert grid.sigmas[-1] == 0
    ramp = torch.linspace(float(sigmas[0] ** (1 / 7)), float(sigmas[-1] ** (1 / 7)), 10, dtype=torch.float64)
    torch.testing.assert_close(sigmas ** (1 / 7), ramp)
    # the network is asked at each σ's own (fractional) timestep, or at the nearest integer one
    torch.testing.assert_close(diffusion.sigma_at(grid.timesteps), sigmas)
    quantized = sampler_grid(diffusion, 10, "karras", discrete_time=True)
    assert torch.equal(quantized.timesteps, grid.timesteps.round().long())
    assert torch.equal(quantized.sigmas, grid.sigmas)


def test_a_karras_grid_that_lands_on_sigma_min_spaces_its_steps_down_to_it_not_onto_it(diffusion):
    # SD's DDIM (set_alpha_to_one False) ends on σ(0): N steps take N distinct levels down to it, no empty step
    plain = sampler_grid(diffusion, 10, "karras")
    landing = sampler_grid(diffusion, 10, "karras", land_on_sigma_min=True)
    assert len(landing) == 10 and torch.all(landing.sigmas[1:] < landing.sigmas[:-1])
    assert landing.sigmas[-1] == diffusion.sigmas[0] and landing.sigmas[0] == plain.sigmas[0]
    ramp = torch.linspace(float(landing.sigmas[0] ** (1 / 7)), float(landing.sigmas[-1] ** (1 / 7)), 11,
                          dtype=torch.float64)
    torch.testing.assert_close(landing.sigmas ** (1 / 7), ramp)


def test_sigma_and_timestep_are_inverse(diffusion):
    t = torch.tensor([0.0, 0.3, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(diffusion.t_at(diffusion.sigma_at(t)), t)
    integers = torch.arange(1000)
    torch.testing.assert_close(diffusion.sigma_at(integers), diffusion.sigmas)
    abar = 1 / (1 + diffusion.sigmas**2)
    torch.testing.assert_close(abar, diffusion.alphas_cumprod)


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
    batch = sample(model, diffusion, (3, 1, 4, 4), SamplerSettings("ddpm", 100), generator=generators([7, 8, 9]),
                   progress=False)
    alone = sample(model, diffusion, (1, 1, 4, 4), SamplerSettings("ddpm", 100), generator=generators([8]),
                   progress=False)
    assert torch.allclose(batch[1], alone[0], atol=1e-6)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_samplers_take_the_grid_they_are_given(oracle, diffusion, sampler):
    calls = []
    model = oracle(diffusion, MU, S)

    def eps_fn(x, t):
        calls.append(float(t[0]))
        return model(x, t)

    grid = sampler_grid(diffusion, 10, "trailing")
    entry = SAMPLERS[sampler]
    entry.run(eps_fn, torch.randn(4, 2), grid, progress=False,
              **({"generator": torch.Generator().manual_seed(0)} if entry.stochastic else {}))
    assert sorted(set(calls), reverse=True) == grid.timesteps.tolist()
    assert len(calls) == entry.network_calls(10)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clipping_keeps_predicted_x0_in_range(diffusion, sampler):
    wild = lambda x, t: 3.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t[0])))  # noqa: E731
    kwargs = dict(generator=torch.Generator().manual_seed(0), progress=False)
    assert sample(wild, diffusion, (64, 2), SamplerSettings(sampler, 20), **kwargs).abs().max() > 1
    clipped = sample(wild, diffusion, (64, 2), SamplerSettings(sampler, 20, clip=True), **kwargs)
    # DDPM's last step adds no noise and DDIM's returns x̂_0 itself, so both end inside [-1, 1]
    assert clipped.abs().max() <= 1 + 1e-5


def test_clipping_changes_nothing_when_x0_is_in_range(oracle, diffusion):
    plain = draw(oracle, diffusion, "ddim", 50, n=200)
    model = oracle(diffusion, MU, S)
    clipped = sample(model, diffusion, (200, 2), SamplerSettings("ddim", 50, clip=True),
                     generator=torch.Generator().manual_seed(0), progress=False)
    inside = (plain.abs() < 0.9).all(dim=1)
    assert torch.allclose(plain[inside], clipped[inside], atol=1e-3)


def test_registry_and_bad_input(oracle, diffusion):
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "euler_ancestral", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde",
                             "langevin", "pc"}
    model = oracle(diffusion, MU, S)
    with pytest.raises(UserError, match="unknown sampler 'euler_x'.*ddpm"):
        sample(model, diffusion, (2, 2), "euler_x")
    with pytest.raises(UserError, match="between 1 and the model's 1000"):
        sample(model, diffusion, (2, 2), SamplerSettings("ddim", 1001))
    with pytest.raises(UserError, match="takes no option eta"):
        sample(model, diffusion, (2, 2), SamplerSettings("ddpm", options={"eta": 0.5}))


@pytest.mark.parametrize("spacing", [None, "karras"])
@pytest.mark.parametrize("sampler", sorted(name for name, entry in SAMPLERS.items() if entry.discrete_time))
def test_discrete_time_samplers_hand_the_network_integer_timesteps(diffusion, sampler, spacing):
    """An ε-model that indexes the schedule's tables with t, as `Diffusion`'s own functions do,
    works under every discrete-time sampler, on its own grid and on a Karras grid."""
    dtypes = []

    def indexing_model(x_t, t):
        dtypes.append(t.dtype)
        abar = diffusion.alphas_cumprod[t].float()[:, None]  # float indices would raise here
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)

    x = sample(indexing_model, diffusion, (2000, 2), SamplerSettings(sampler, 50, spacing),
               generator=torch.Generator().manual_seed(0), progress=False)
    assert dtypes and set(dtypes) == {torch.long}
    assert abs(x.mean().item() - MU) < 0.1 * MU


def test_sigma_samplers_ask_between_the_integers_only_on_a_karras_grid(oracle, diffusion):
    """Euler on a Karras grid asks at fractional times (floats); on a grid of training
    timesteps it is handed the integers themselves."""
    model = oracle(diffusion, MU, S)
    seen = {}
    for spacing in ("karras", "leading"):
        seen[spacing] = []
        sample(lambda x, t: seen[spacing].append(t) or model(x, t), diffusion, (4, 2),
               SamplerSettings("euler", 10, spacing), progress=False)
    assert all(t.is_floating_point() for t in seen["karras"])
    assert any(bool(t[0] != t[0].round()) for t in seen["karras"])
    assert {t.dtype for t in seen["leading"]} == {torch.long}


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral", "heun"])
def test_a_callback_that_stops_sampling_gets_the_latest_x0_back(oracle, diffusion, sampler):
    """StopSampling at step k returns x̂_0 of the network's latest call, the same tensor that a callback
    watching an uninterrupted run sees at step k; stopped before any call, it returns x_T."""
    model, shape = oracle(diffusion, MU, S), (256, 2)
    seen = {}

    def watch(i, steps, x0):
        seen.setdefault(i, x0())

    def stop_at(k):
        def callback(i, steps, x0):
            if i == k:
                raise StopSampling
        return callback

    def run(progress):
        return sample(model, diffusion, shape, SamplerSettings(sampler, 10), generator=torch.Generator().manual_seed(3),
                      progress=progress)

    finished = run(watch)
    stopped = run(stop_at(5))
    assert torch.equal(stopped, seen[5]) and not torch.allclose(stopped, finished)
    assert stopped.std() < S  # a posterior mean: shrunk towards μ, not noise
    assert torch.equal(run(stop_at(0)), torch.randn(shape, generator=torch.Generator().manual_seed(3)))


def test_stopped_inpainting_keeps_the_known_region(oracle, diffusion):
    """Stopped mid-way, an inpainting returns its x̂_0 inside the mask and the original outside, as a finished
    one does."""
    from t2i.sampling import Edit

    init = torch.full((4, 2), 0.25)
    mask = torch.tensor([[1.0, 0.0]]).expand(4, 2)

    def stop_at_5(i, steps, x0):
        if i == 5:
            raise StopSampling

    x = sample(oracle(diffusion, MU, S), diffusion, (4, 2), SamplerSettings("ddim", 10), edit=Edit(init, 1.0, mask),
               generator=torch.Generator().manual_seed(0), progress=stop_at_5)
    assert torch.equal(x[:, 1], init[:, 1]) and not torch.equal(x[:, 0], init[:, 0])
