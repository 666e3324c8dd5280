"""Classifier-free guidance: the guided output is the formula, computed in one batched call."""

import math

import pytest
import torch

from t2i.diffusion import Diffusion
from t2i.errors import UserError
from t2i.sampling import Guidance, SamplerSettings, classifier_free_guidance, sample


class Linear:
    """A stand-in network: output = x · w(context) + t, and a count of calls and batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, context):
        self.batches.append(x.shape[0])
        return x * context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1).float()


def test_guided_output_is_uncond_plus_scale_times_difference():
    torch.manual_seed(0)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([5, 6, 7])
    cond, uncond = {"context": torch.randn(3, 5, 8)}, {"context": torch.randn(3, 5, 8)}
    net = Linear()
    for scale in (0.0, 1.0, 7.5):
        guided = classifier_free_guidance(net, scale, cond, uncond)(x, t)
        e_c, e_u = net(x, t, **cond), net(x, t, **uncond)
        torch.testing.assert_close(guided, e_u + scale * (e_c - e_u))
    assert net.batches[0] == 6  # both branches in one call


def test_guidance_rescale_matches_the_conditional_std_at_phi_one_and_mixes_linearly():
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 20])
    cond, uncond = {"context": torch.randn(2, 4, 8) + 1}, {"context": torch.randn(2, 4, 8)}
    net = Linear()
    plain = classifier_free_guidance(net, 6.0, cond, uncond)(x, t)
    full = classifier_free_guidance(net, 6.0, cond, uncond, rescale=1.0)(x, t)
    half = classifier_free_guidance(net, 6.0, cond, uncond, rescale=0.5)(x, t)
    e_c = net(x, t, **cond)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), e_c.std(dim=(1, 2, 3)))
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)


@pytest.mark.parametrize("scale", [-0.5, math.nan, math.inf])
def test_bad_guidance_scales_are_refused(scale):
    cond = {"context": torch.zeros(1, 2, 3)}
    with pytest.raises(UserError, match="guidance scale"):
        classifier_free_guidance(Linear(), scale, cond, cond)


def test_sample_at_scale_one_skips_the_unconditional_branch_and_guides_otherwise():
    diffusion = Diffusion.from_schedule("linear", 20)
    cond, uncond = {"context": torch.ones(2, 3, 4)}, {"context": torch.zeros(2, 3, 4)}
    net = Linear()
    sample(net, diffusion, (2, 1, 4, 4), SamplerSettings("ddim", 4), cond=cond, guidance=Guidance(uncond, 1.0),
           generator=torch.Generator().manual_seed(0), progress=False)
    assert net.batches == [2] * 4
    net.batches.clear()
    sample(net, diffusion, (2, 1, 4, 4), SamplerSettings("ddim", 4), cond=cond, guidance=Guidance(uncond, 3.0),
           generator=torch.Generator().manual_seed(0), progress=False)
    assert net.batches == [4] * 4
