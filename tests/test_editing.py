"""Image editing in the sampler: img2img by strength, and inpainting by replacement."""

import pytest
import torch

from t2i.diffusion import Diffusion
from t2i.errors import UserError
from t2i.samplers import SAMPLERS
from t2i.samplers.base import sampler_grid
from t2i.sampling import Edit, SamplerSettings, sample, strength_grid


@pytest.fixture
def setup(oracle):
    diffusion = Diffusion.from_schedule("linear", 200)
    eps = oracle(diffusion, 0.5, 0.3)
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return eps(x, t)

    init = torch.full((64, 1, 4, 4), -0.8)
    return diffusion, model, init, calls


def run(setup, sampler="ddim", seed=0, edit=None):
    diffusion, model, init, _ = setup
    generator = [torch.Generator().manual_seed(seed + i) for i in range(init.shape[0])]
    return sample(model, diffusion, init.shape, SamplerSettings(sampler, 20), edit=edit, generator=generator,
                  progress=False)


def test_strength_picks_the_tail_of_the_grid():
    grid = sampler_grid(Diffusion.from_schedule("linear", 20), 20, "leading")
    whole = strength_grid(grid, 1.0)
    assert len(strength_grid(grid, 0.0)) == 0
    assert torch.equal(whole.timesteps, grid.timesteps) and torch.equal(whole.sigmas, grid.sigmas)
    half = strength_grid(grid, 0.5)
    assert half.timesteps.tolist() == list(range(9, -1, -1)) and torch.equal(half.sigmas, grid.sigmas[10:])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(UserError, match="strength must be a finite number from 0 to 1"):
            Edit(torch.zeros(1, 1, 4, 4), bad)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_strength_zero_returns_the_input_and_one_is_plain_generation(setup, sampler):
    diffusion, model, init, calls = setup
    assert torch.equal(run(setup, sampler, edit=Edit(init, 0.0)), init) and calls == []
    torch.testing.assert_close(run(setup, sampler, edit=Edit(init, 1.0)), run(setup, sampler))


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_distance_to_the_input_grows_with_strength(setup, sampler):
    diffusion, model, init, calls = setup
    distances = []
    for strength in (0.2, 0.4, 0.7, 1.0):
        calls.clear()
        out = run(setup, sampler, edit=Edit(init, strength))
        assert len(calls) == SAMPLERS[sampler].network_calls(int(20 * strength))
        distances.append((out - init).abs().mean().item())
    assert distances == sorted(distances) and distances[0] > 0, distances


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_inpainting_keeps_the_known_region_and_fills_the_rest(setup, sampler):
    diffusion, model, init, calls = setup
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, 2:] = 1
    out = run(setup, sampler, edit=Edit(init, mask=mask))
    assert torch.equal(out[..., :2], init[..., :2])
    filled = out[..., 2:]
    assert abs(filled.mean().item() - 0.5) < 0.1  # drawn from the model's N(0.5, 0.3²), not the input's -0.8


def test_a_mask_without_an_image_is_an_error(setup):
    with pytest.raises(UserError, match="a mask needs the image"):
        run(setup, edit=Edit(None, mask=torch.ones(1, 1, 4, 4)))
