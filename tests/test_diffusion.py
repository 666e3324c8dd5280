"""The DDPM maths against the maths: closed forms, Bayes' rule, numeric integrals."""

import math

import pytest
import torch

from t2i.diffusion import Diffusion, discretized_gaussian_log_likelihood, gaussian_kl
from t2i.errors import UserError


@pytest.fixture
def diffusion():
    return Diffusion.from_schedule("linear", 1000)


def test_schedule_quantities(diffusion):
    assert torch.allclose(diffusion.alphas_cumprod, torch.cumprod(1 - diffusion.betas, 0))
    assert diffusion.alphas_cumprod_prev[0] == 1
    assert torch.equal(diffusion.alphas_cumprod_prev[1:], diffusion.alphas_cumprod[:-1])
    assert diffusion.alphas_cumprod.dtype == torch.float64


def test_closed_form_matches_iterated_one_step_process(diffusion):
    """q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1-ᾱ_t) I) vs t+1 applications of q(x_t | x_{t-1})."""
    g = torch.Generator().manual_seed(0)
    n = 20_000
    x0 = torch.tensor([-0.9, -0.2, 0.4, 1.0], dtype=torch.float64)
    x = x0.expand(n, 4).clone()
    checkpoints = {0, 9, 99, 499, 999}
    for step in range(1000):
        x = diffusion.q_step(x, torch.full((n,), step), torch.randn(x.shape, generator=g, dtype=torch.float64))
        if step in checkpoints:
            abar = diffusion.alphas_cumprod[step]
            mean_err = (x.mean(0) - abar.sqrt() * x0).abs().max()
            assert mean_err < 4 * math.sqrt((1 - abar) / n) + 1e-12, step
            assert torch.allclose(x.var(0), (1 - abar).expand(4), rtol=0.05), step
    # and q_sample draws from the same distribution
    noise = torch.randn((n, 4), generator=g, dtype=torch.float64)
    xt = diffusion.q_sample(x0.expand(n, 4), torch.full((n,), 999), noise)
    assert torch.allclose(xt.var(0), x.var(0), rtol=0.06)


def test_q_posterior_matches_spec_formulas(diffusion):
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 10, 100, 500, 999])
    mean, var = diffusion.q_posterior(x0, xt, t)
    b, a, ab = diffusion.betas[t, None], diffusion.alphas[t, None], diffusion.alphas_cumprod[t, None]
    ab_prev = diffusion.alphas_cumprod_prev[t, None]
    assert torch.allclose(var, (1 - ab_prev) / (1 - ab) * b)
    assert torch.allclose(mean, ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * xt)
    eps = diffusion.predict_eps(xt, t, x0)  # the ε form: μ̃ = 1/sqrt(α_t) (x_t - β_t/sqrt(1-ᾱ_t) ε)
    assert torch.allclose(mean, (xt - b / (1 - ab).sqrt() * eps) / a.sqrt())


@pytest.mark.parametrize("t", [1, 50, 700])
def test_q_posterior_matches_bayes_rule_on_a_grid(diffusion, t):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalised numerically in 1-D."""
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.5]], dtype=torch.float64)
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    a, b = diffusion.alphas[t], diffusion.betas[t]
    ab_prev = diffusion.alphas_cumprod_prev[t]
    log_p = -(xt[0, 0] - a.sqrt() * grid) ** 2 / (2 * b) - (grid - ab_prev.sqrt() * x0[0, 0]) ** 2 / (2 * (1 - ab_prev))
    p = torch.exp(log_p - log_p.max())
    p = p / torch.trapezoid(p, grid)
    mean_numeric = torch.trapezoid(grid * p, grid)
    var_numeric = torch.trapezoid((grid - mean_numeric) ** 2 * p, grid)
    mean, var = diffusion.q_posterior(x0, xt, torch.tensor([t]))
    assert mean.item() == pytest.approx(mean_numeric.item(), abs=1e-7)
    assert var.item() == pytest.approx(var_numeric.item(), rel=1e-4)


def test_parameterisations_round_trip(diffusion):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(6, 2, 4, 4, generator=g), torch.randn(6, 2, 4, 4, generator=g)
    t = torch.tensor([0, 3, 30, 300, 600, 999])
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_eps(xt, t, x0), eps, atol=1e-4)
    assert torch.allclose(diffusion.predict_x0(xt, t, eps), x0, atol=1e-3)
    v = diffusion.get_v(x0, t, eps)
    assert torch.allclose(diffusion.predict_x0_from_v(xt, t, v), x0, atol=1e-5)
    assert torch.allclose(diffusion.predict_eps_from_v(xt, t, v), eps, atol=1e-5)


def test_score_of_gaussian_data_is_exact(diffusion, oracle):
    """s(x_t) = ∇ log q(x_t) = -(x_t - sqrt(ᾱ) μ)/(ᾱ s² + 1 - ᾱ) for x_0 ~ N(μ, s²), and -ε*/sqrt(1-ᾱ) equals it."""
    mu, s = 0.3, 0.5
    xt, t = torch.randn(8, 3, dtype=torch.float64), torch.arange(0, 1000, 125)
    abar = diffusion.alphas_cumprod[t, None]
    true_score = -(xt - abar.sqrt() * mu) / (abar * s**2 + 1 - abar)
    assert torch.allclose(diffusion.score(xt, t, oracle(diffusion, mu, s)(xt, t)), true_score)


def test_denoising_score_matching_is_l_simple(diffusion):
    """Vincent 2011 / Song & Ermon: σ_t² ||s_θ(x_t) - ∇ log q(x_t | x_0)||² with s_θ = -ε_θ/σ_t is ||ε - ε_θ||²,
    the DDPM loss, for any network; the conditional score here comes from autograd of the Gaussian's density."""
    torch.manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    weight = torch.randn(3, 3, dtype=torch.float64)

    def model(x, t_in):  # any ε_θ: a channel mix that depends on t
        return torch.einsum("ij,bjhw->bihw", weight, x) * (1 + t_in.to(x)[:, None, None, None] / 1000)

    x_t = diffusion.q_sample(x0, t, noise).requires_grad_(True)
    abar = diffusion.alphas_cumprod.double()[t][:, None, None, None]
    log_q = -((x_t - abar.sqrt() * x0) ** 2 / (2 * (1 - abar))).sum()
    (conditional_score,) = torch.autograd.grad(log_q, x_t)
    x_t = x_t.detach()
    eps_theta = diffusion.model_eps(model, x_t, t)
    dsm = ((1 - abar) * (diffusion.score(x_t, t, eps_theta) - conditional_score) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(dsm, diffusion.training_loss(model, x0, t, noise), rtol=1e-5, atol=1e-8)


def test_gaussian_kl_matches_numeric_integral():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.4, math.log(1.7)
    x = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    log_p = -0.5 * (math.log(2 * math.pi) + lv1) - (x - m1) ** 2 / (2 * math.exp(lv1))
    log_q = -0.5 * (math.log(2 * math.pi) + lv2) - (x - m2) ** 2 / (2 * math.exp(lv2))
    numeric = torch.trapezoid(log_p.exp() * (log_p - log_q), x).item()
    closed = gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2))).item()
    assert closed == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("mean,scale", [(0.0, 0.01), (0.5, 0.2), (-0.99, 0.003), (3.0, 0.5), (0.123, 1e-4)])
def test_discretized_decoder_sums_to_one_over_256_levels(mean, scale):
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                torch.full_like(levels, math.log(scale)))
    assert torch.isfinite(log_p).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_decoder_is_the_bin_probability():
    x, mean, scale = torch.tensor([0.2], dtype=torch.float64), torch.tensor([0.19]), 0.02
    half = 1 / 255
    expected = torch.special.ndtr((x + half - mean) / scale) - torch.special.ndtr((x - half - mean) / scale)
    got = discretized_gaussian_log_likelihood(x, mean.double(), torch.tensor([math.log(scale)], dtype=torch.float64))
    assert got.exp().item() == pytest.approx(expected.item(), rel=1e-9)


def test_training_loss_is_zero_for_a_perfect_predictor(diffusion):
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    perfect = lambda x_t, t: diffusion.predict_eps(x_t, t, x0)  # noqa: E731
    loss = diffusion.training_loss(perfect, x0, t, noise)
    assert loss.shape == (4,) and loss.max() < 1e-4
    zero = diffusion.training_loss(lambda x_t, t: torch.zeros_like(x_t), x0, t, noise)
    assert torch.allclose(zero, noise.pow(2).flatten(1).mean(1))


def test_v_prediction_loss_targets_v():
    diffusion = Diffusion.from_schedule("cosine", 1000, prediction_type="v")
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([5, 400, 990])
    perfect_v = lambda x_t, t: diffusion.get_v(x0, t, diffusion.predict_eps(x_t, t, x0))  # noqa: E731
    assert diffusion.training_loss(perfect_v, x0, t, noise).max() < 1e-6
    # and model_eps turns a v output back into ε
    xt = diffusion.q_sample(x0, t, noise)
    assert torch.allclose(diffusion.model_eps(perfect_v, xt, t), noise, atol=1e-4)


def test_rectified_flow_schedule_is_the_straight_path():
    """At t the schedule's x_t, rescaled by `flow_input`, is (1 − τ) x_0 + τ ε with τ = (t+1)/(T+1)."""
    diffusion = Diffusion.from_schedule("rectified_flow", 1000, prediction_type="flow")
    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 2, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0, 1, 499, 998, 999])
    x, tau = diffusion.flow_input(diffusion.q_sample(x0, t, eps), t)
    expected_tau = ((t + 1) / 1001).double().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(tau, expected_tau)
    torch.testing.assert_close(x, (1 - expected_tau) * x0 + expected_tau * eps)


def test_flow_loss_and_model_eps_at_fractional_timesteps(flow_oracle):
    """The true velocity u = ε − x_0 has zero loss at fractional (logit-normal) t, and model_eps turns it into ε."""
    diffusion = Diffusion.from_schedule("rectified_flow", 1000, prediction_type="flow")
    g = torch.Generator().manual_seed(7)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = diffusion.sample_timesteps(4, g)
    assert t.is_floating_point() and not bool((t == t.round()).all())
    true_u = lambda x, t_net: noise - x0  # noqa: E731 - the conditional velocity of these very x0 and noise
    assert diffusion.training_loss(true_u, x0, t, noise).max() < 1e-10
    zero = diffusion.training_loss(lambda x, t_net: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(zero, (noise - x0).pow(2).flatten(1).mean(1))
    signal, sigma = diffusion.scales_at(t, x0)
    torch.testing.assert_close(diffusion.model_eps(true_u, signal * x0 + sigma * noise, t), noise, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="Min-SNR"):
        diffusion.training_loss(true_u, x0, t, noise, min_snr_gamma=5.0)


def test_flow_timesteps_are_logit_normal():
    """logit τ of the drawn timesteps is N(0, 1) (SD3's density), inside the schedule's span."""
    diffusion = Diffusion.from_schedule("rectified_flow", 1000, prediction_type="flow")
    t = diffusion.sample_timesteps(20_000, torch.Generator().manual_seed(8))
    sigma = diffusion.sigma_at(t)
    logit = torch.log(sigma)  # τ = σ/(1+σ), so logit τ = log σ
    assert abs(logit.mean().item()) < 0.03 and abs(logit.std().item() - 1) < 0.03
    assert float(t.min()) >= 0 and float(t.max()) <= 999
    per_example = diffusion.sample_timesteps(3, [torch.Generator().manual_seed(k) for k in range(3)])
    alone = torch.cat([diffusion.sample_timesteps(1, [torch.Generator().manual_seed(k)]) for k in range(3)])
    torch.testing.assert_close(per_example, alone)


def test_min_snr_weighting(diffusion):
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 100, 900])
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    plain = diffusion.training_loss(zero, x0, t, noise)
    weighted = diffusion.training_loss(zero, x0, t, noise, min_snr_gamma=5.0)
    snr = diffusion.alphas_cumprod[t] / (1 - diffusion.alphas_cumprod[t])
    assert torch.allclose(weighted, plain * (snr.clamp(max=5) / snr).float())
    assert weighted[0] < plain[0] and weighted[2] == pytest.approx(plain[2].item())


def test_p_mean_is_algorithm_2(diffusion):
    g = torch.Generator().manual_seed(6)
    xt, t = torch.randn(3, 2, 4, 4, generator=g), torch.tensor([0, 200, 999])
    model = lambda x, t: 0.3 * x  # noqa: E731
    p = diffusion.p_mean_variance(model, xt, t, variance="beta")
    a, b, ab = (diffusion.at(v, t, xt) for v in (diffusion.alphas, diffusion.betas, diffusion.alphas_cumprod))
    assert torch.allclose(p.mean, (xt - b / (1 - ab).sqrt() * model(xt, t)) / a.sqrt(), atol=1e-5)
    assert torch.allclose(p.variance, b)
    p_tilde = diffusion.p_mean_variance(model, xt, t, variance="beta_tilde")
    assert torch.allclose(p_tilde.variance[1:], diffusion.at(diffusion.posterior_variance, t, xt)[1:])
    assert p_tilde.variance[0].item() == pytest.approx(diffusion.posterior_variance[1].item())


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="prediction type"):
        Diffusion.from_schedule("linear", 10, prediction_type="x0")
    with pytest.raises(UserError, match="variance"):
        Diffusion.from_schedule("linear", 10).model_log_variance("learned", torch.tensor([0]), torch.zeros(1, 1))
