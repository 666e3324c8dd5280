"""Our samplers against diffusers' schedulers: the same network, the same start, the same noise.

The network is a small random U-Net of ours (time-dependent, so a wrong or rounded timestep
shows). diffusers runs its own loop (`scale_model_input`, the network, `step`) from the start
our samplers take, x_T ~ N(0, I) in x_t form; its σ schedulers hold x_0 + σε, so they start
from x_T · sqrt(1 + σ_max²) (their `init_noise_sigma` is σ_max itself on "linspace" and
"trailing" grids, a small mismatch that would hide what is compared here). Latents must
agree within 1e-4.
"""

import inspect

import pytest
import torch

from t2i.diffusion import Diffusion
from t2i.models.unet import UNet, UNetConfig
from t2i.sampling import SamplerSettings, sample

diffusers = pytest.importorskip("diffusers")

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SHAPE = (2, 4, 8, 8)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                           attention_levels=(1,), head_dim=8)).eval()
    with torch.no_grad():  # away from the zero-initialised output layer, which would make ε = 0
        for p in unet.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return unet


def theirs(scheduler, network, x_T, steps, seed, start_sigma=None):
    scheduler.set_timesteps(steps)
    return run_scheduler(scheduler, network, x_T, seed, start_sigma)


def run_scheduler(scheduler, network, x_T, seed, start_sigma=None):
    generator = torch.Generator().manual_seed(seed)
    noise = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    x = x_T if start_sigma is None else x_T * (1 + start_sigma**2) ** 0.5
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = network(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
            x = scheduler.step(out, t, x, **noise).prev_sample
    return x


def ours(network, sampler, x_T, steps, seed, **options):
    diffusion = Diffusion.from_schedule("scaled_linear", 1000)
    with torch.no_grad():
        return sample(network, diffusion, SHAPE, SamplerSettings(sampler, steps, **options), x_T=x_T,
                      generator=torch.Generator().manual_seed(seed), progress=False)


def start(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim(network, steps):
    scheduler = diffusers.DDIMScheduler(**SD, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    x_T = start()
    expected = theirs(scheduler, network, x_T, steps, 0)
    got = ours(network, "ddim", x_T, steps, 0, spacing="trailing", set_alpha_to_one=False)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpmpp_2m(network, karras, steps):
    """On a Karras grid both ask the network at the rounded timestep of each σ."""
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2,
                                                      timestep_spacing="trailing", use_karras_sigmas=karras)
    x_T = start()
    expected = theirs(scheduler, network, x_T, steps, 0)
    got = ours(network, "dpmpp_2m", x_T, steps, 0, spacing="karras" if karras else "trailing")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_dpmpp_2m_sde(network):
    scheduler = diffusers.DPMSolverMultistepScheduler(**SD, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                      timestep_spacing="trailing")
    x_T = start()
    expected = theirs(scheduler, network, x_T, 20, 5)
    got = ours(network, "dpmpp_2m_sde", x_T, 20, 5, spacing="trailing")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("karras", [False, True])
def test_euler(network, karras):
    """With Karras σ diffusers asks the network at fractional timesteps, as we do."""
    scheduler = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace" if karras else "trailing",
                                                 use_karras_sigmas=karras)
    x_T = start()
    scheduler.set_timesteps(20)
    expected = run_scheduler(scheduler, network, x_T, 0, float(scheduler.sigmas[0]))
    got = ours(network, "euler", x_T, 20, 0, spacing="karras" if karras else "trailing")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("karras", [False, True])
def test_euler_ancestral(network, karras):
    """diffusers' Euler ancestral has no Karras option: its grid is set to the Karras σ that its
    Euler scheduler makes, and their timesteps, before the loop."""
    scheduler = diffusers.EulerAncestralDiscreteScheduler(**SD, timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    if karras:
        grid = diffusers.EulerDiscreteScheduler(**SD, timestep_spacing="linspace", use_karras_sigmas=True)
        grid.set_timesteps(20)
        scheduler.sigmas, scheduler.timesteps = grid.sigmas.clone(), grid.timesteps.clone()
    x_T = start()
    expected = run_scheduler(scheduler, network, x_T, 3, float(scheduler.sigmas[0]))
    got = ours(network, "euler_ancestral", x_T, 20, 3, spacing="karras" if karras else "trailing")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_heun_and_lms(network):
    """Beyond the required four: Heun (two calls a step, the second at the next step's time)
    and LMS (order 4, its coefficients integrated exactly where diffusers uses quadrature)."""
    x_T = start()
    for name, cls in (("heun", diffusers.HeunDiscreteScheduler), ("lms", diffusers.LMSDiscreteScheduler)):
        scheduler = cls(**SD, timestep_spacing="trailing")
        scheduler.set_timesteps(12)
        expected = run_scheduler(scheduler, network, x_T, 0, float(scheduler.sigmas[0]))
        got = ours(network, name, x_T, 12, 0, spacing="trailing")
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0, msg=name)
