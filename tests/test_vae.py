"""The autoencoder: shapes, the posterior's KL, and bit-exact parity with diffusers' AutoencoderKL."""

import pytest
import torch

from t2i.convert.build import build
from t2i.convert.tensors import StateDictWeights
from t2i.convert.vae_names import foreign_names
from t2i.errors import UserError
from t2i.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig

TINY = VAEConfig(block_channels=(16, 32, 32), num_res_blocks=1, norm_groups=8, latent_channels=4)


def from_diffusers(state_dict, config):
    """Our autoencoder of `config` on a diffusers `AutoencoderKL`'s weights, loaded as Stable Diffusion's are."""
    return build("vae", config, StateDictWeights(state_dict), foreign_names(config, "diffusers"), None,
                 "the diffusers weights do not fit this VAEConfig")


def test_latents_are_f_times_smaller_and_decode_to_image_size():
    vae = AutoencoderKL(TINY).eval()
    x = torch.randn(2, 3, 32, 24)
    posterior = vae.encode(x)
    assert TINY.downsample_factor == 4 and posterior.mean.shape == (2, 4, 8, 6)
    assert vae.decode(posterior.mean).shape == x.shape
    with pytest.raises(UserError, match="divisible by 4"):
        vae.encode(torch.randn(1, 3, 30, 32))


def test_kl_of_the_diagonal_gaussian_matches_torch_distributions():
    torch.manual_seed(0)
    moments = torch.randn(3, 8, 5, 5)
    q = DiagonalGaussian(moments)
    reference = torch.distributions.Normal(q.mean, q.std)
    prior = torch.distributions.Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean))
    expected = torch.distributions.kl_divergence(reference, prior).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), expected)
    draws = torch.stack([q.sample(torch.Generator().manual_seed(i)) for i in range(2000)])
    torch.testing.assert_close(draws.mean(0), q.mean, atol=0.25, rtol=0)
    torch.testing.assert_close(draws.std(0), q.std, atol=0, rtol=0.1)  # σ, not σ² nor a scaled σ (within 5% here)


def test_sd_v1_config_has_the_released_parameter_count():
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig.sd_v1())
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert VAEConfig.sd_v1().downsample_factor == 8


@pytest.mark.parametrize("mid_attention", [True, False])
def test_diffusers_weights_give_the_same_outputs(mid_attention):
    diffusers = pytest.importorskip("diffusers")
    config = VAEConfig(block_channels=(16, 32, 32), num_res_blocks=2, norm_groups=8, latent_channels=4,
                       mid_attention=mid_attention)
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=config.block_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=2, norm_num_groups=8, mid_block_add_attention=mid_attention,
    ).eval()
    ours = from_diffusers(theirs.state_dict(), config)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = theirs.encode(x).latent_dist
        posterior = ours.encode(x)
        torch.testing.assert_close(posterior.mean, expected.mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(posterior.logvar, expected.logvar, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.decode(posterior.mean), theirs.decode(expected.mean).sample, rtol=0, atol=1e-5)


def test_weights_of_another_shape_are_a_user_error():
    with pytest.raises(UserError, match="do not fit this VAEConfig: missing or misshapen"):
        from_diffusers(AutoencoderKL(TINY).state_dict(), VAEConfig(block_channels=(16, 32)))


def test_tiled_decoding_blends_tiles_into_the_whole_image():
    """Tiles over a 20×20 latent: the image departs from the whole decode by less the larger the
    tiles and their overlap (a tile's GroupNorms see its own statistics, its convolutions zero
    padding at the cut); small latents decode whole."""
    torch.manual_seed(0)
    vae = AutoencoderKL(TINY).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
        z = torch.randn(1, 4, 20, 20)
        whole = vae.decode(z)
        errors = [(vae.decode_tiled(z, tile, overlap) - whole).abs().mean().item()
                  for tile, overlap in ((8, 0), (8, 4), (16, 8))]
        assert vae.decode_tiled(z, 8, 4).shape == whole.shape
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.15 * whole.abs().mean().item(), errors
        small = torch.randn(1, 4, 8, 6)
        assert torch.equal(vae.decode_tiled(small, tile=8), vae.decode(small))
        with pytest.raises(UserError, match="overlap"):
            vae.decode_tiled(z, 8, 8)
