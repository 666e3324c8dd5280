import hashlib
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from t2i.convert.build import build
from t2i.convert.tensors import StateDictWeights
from t2i.convert.unet_names import foreign_names
from t2i.errors import UserError
from t2i.models.layers import FeedForward, SpatialTransformer
from t2i.models.unet import UNet, UNetConfig, coordinates

TINY_TEXT = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=4,
                 context_dim=12, transformer_depth=2)


def from_diffusers(reference, config):
    """Our U-Net of `config` on the weights of diffusers' `reference`, loaded as Stable Diffusion's are."""
    return build("unet", config, StateDictWeights(reference.state_dict()), foreign_names(config, "diffusers"), None,
                 "the diffusers weights do not fit this UNetConfig")


def state_dict_digest(model):
    lines = sorted(f"{key}:{tuple(value.shape)}" for key, value in model.state_dict().items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# Recorded before cross-attention was added. They protect the weights of models trained
# with unconditional configs (runs/shapes32 is the default one): their state-dict keys
# and shapes must never change, or saved checkpoints stop loading.
@pytest.mark.parametrize("config, digest", [
    (UNetConfig(), "f704238b54a50efaac6dd2ff075ac02e5f9a7f36679c272177feec874ba2f20d"),
    (UNetConfig(block_type="convnext"), "0b63b9b31fb963e06cfcade442672aeb1b4723786e34a6c71acd9d5f9a6a8158"),
])
def test_unconditional_state_dict_keys_are_unchanged(config, digest):
    with torch.device("meta"):
        model = UNet(config)
    assert state_dict_digest(model) == digest


def test_geglu_feed_forward_is_value_times_gelu_of_gate():
    torch.manual_seed(0)
    ff, x = FeedForward(6, mult=4), torch.randn(2, 3, 6)
    value, gate = ff.proj(x)[..., :24], ff.proj(x)[..., 24:]
    assert torch.allclose(ff(x), ff.out(value * F.gelu(gate)), atol=1e-6)


def test_spatial_transformer_starts_as_identity_and_reads_the_context():
    torch.manual_seed(0)
    block = SpatialTransformer(16, heads=2, head_dim=8, context_dim=5, depth=2, groups=8)
    x, context = torch.randn(2, 16, 4, 6), torch.randn(2, 3, 5)
    assert torch.equal(block(x, None, context), x)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    out = block(x, None, context)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert not torch.allclose(out, block(x, None, torch.randn(2, 3, 5)))


def test_text_unet_depends_on_context_and_trains_every_weight():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY_TEXT))
    for p in model.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.randn(2, 7, 12)
    out = model(x, t, context)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, t, torch.randn(2, 7, 12)))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())


def test_pooled_text_embedding_shifts_the_timestep_embedding():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY_TEXT, pooled_dim=12)).eval()
    for p in model.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    x, t, context, pooled = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.randn(2, 7, 12), torch.randn(2, 12)
    out = model(x, t, context, pooled)
    assert not torch.allclose(out, model(x, t, context, torch.randn(2, 12)))
    model.pooled_proj.weight.data.zero_()
    model.pooled_proj.bias.data.zero_()
    torch.testing.assert_close(model(x, t, context, pooled), model(x, t, context, torch.zeros(2, 12)))
    with pytest.raises(UserError, match="needs one"):
        model(x, t, context)
    with pytest.raises(UserError, match="takes no pooled"):
        UNet(UNetConfig(**TINY_TEXT))(x, t, context, pooled)


def test_coord_channels_give_the_network_absolute_position():
    x = torch.zeros(1, 3, 4, 6)
    grid = coordinates(x)
    assert grid.shape == (1, 2, 4, 6)
    torch.testing.assert_close(grid[0, 0, 0], torch.tensor([-5, -3, -1, 1, 3, 5]) / 6)  # x: pixel centres
    torch.testing.assert_close(grid[0, 1, :, 0], torch.tensor([-3, -1, 1, 3]) / 4)  # y, down the rows
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY_TEXT, coord_channels=True)).eval()
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    flat, t, context = torch.zeros(1, 3, 64, 64), torch.tensor([500]), torch.randn(1, 7, 12)
    centre = (..., slice(28, 36), slice(28, 36))  # pixels whose convolutions never see the border
    with torch.no_grad():
        out = model(flat, t, context)[centre]
        assert out.std() > 1e-3  # a flat image, yet each pixel knows where it is
        model.conv_in.weight[:, 3:] = 0  # blind the network to the coordinates
        blind = model(flat, t, context)[centre]
    torch.testing.assert_close(blind, blind[..., :1, :1].expand_as(blind))


def test_masked_context_tokens_do_not_matter():
    torch.manual_seed(0)
    model = UNet(UNetConfig(**TINY_TEXT, mask_context_padding=True)).eval()
    for p in model.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.randn(2, 7, 12)
    mask = torch.tensor([[True] * 3 + [False] * 4, [True] * 5 + [False] * 2])
    other = context.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 12)
    with torch.no_grad():
        out = model(x, t, context, context_mask=mask)
        torch.testing.assert_close(out, model(x, t, other, context_mask=mask))
        assert not torch.allclose(out, model(x, t, other))  # unmasked, the padding is read
        torch.testing.assert_close(model(x[:1], t[:1], context[:1, :3]), out[:1])  # as if it were not there


def test_context_must_match_the_config():
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([0])
    with pytest.raises(UserError, match="needs a context"):
        UNet(UNetConfig(**TINY_TEXT))(x, t)
    with pytest.raises(UserError, match="takes no context"):
        UNet(UNetConfig(model_channels=16, channel_mult=(1, 2), attention_levels=()))(x, t, torch.randn(1, 7, 12))
    with pytest.raises(UserError, match="num_heads 3 must divide"):
        UNetConfig(**{**TINY_TEXT, "num_heads": 3})
    config = UNetConfig.sd_v1()
    assert UNetConfig.from_dict(config.to_dict()) == config


def test_sd_v1_has_the_parameters_of_diffusers_unet():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ours = UNet(UNetConfig.sd_v1())
        theirs = diffusers.UNet2DConditionModel(cross_attention_dim=768)  # the defaults are SD v1 but for this
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert 859e6 < count < 860e6
    assert Counter(p.shape for p in ours.parameters()) == Counter(p.shape for p in theirs.parameters())
    assert from_diffusers(theirs, UNetConfig.sd_v1()).state_dict().keys() == ours.state_dict().keys()


# (diffusers kwargs, our equivalent config): SD v1's shape (conv projections, fixed heads,
# cross-attention on the outer level and in the middle) and SD 2's (linear projections,
# heads of fixed width — diffusers' attention_head_dim is a head count), deeper transformers.
SD_V1_LIKE = (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8),
              dict(attention_levels=(0,), num_heads=8))
SD_2_LIKE = (dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                  use_linear_projection=True, transformer_layers_per_block=2, layers_per_block=2),
             dict(attention_levels=(1,), head_dim=16, transformer_depth=2, num_res_blocks=2))


def tiny_pair(theirs, ours):
    """A tiny diffusers UNet2DConditionModel and the UNetConfig of the same layout."""
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.UNet2DConditionModel(
        **{**dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  cross_attention_dim=16, norm_num_groups=8), **theirs})
    config = UNetConfig(**{**dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                                  num_res_blocks=1, context_dim=16, norm_groups=8), **ours})
    return reference.eval(), config


@pytest.mark.parametrize("theirs, ours", [SD_V1_LIKE, SD_2_LIKE])
def test_converted_diffusers_unet_gives_the_same_output(theirs, ours):
    torch.manual_seed(0)
    reference, config = tiny_pair(theirs, ours)
    with torch.no_grad():
        for p in reference.parameters():  # away from the zero and identity inits that hide mistakes
            p.add_(torch.randn_like(p) * 0.1)
    model = from_diffusers(reference, config)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 777]), torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = reference(x, t, encoder_hidden_states=context).sample
        out = model(x, t, context)
    assert expected.abs().mean() > 0.1
    assert (out - expected).abs().max() < 1e-4


def test_weights_of_another_layout_are_a_user_error():
    theirs, ours = SD_V1_LIKE
    reference, config = tiny_pair(theirs, {**ours, "attention_levels": (1,)})
    with pytest.raises(UserError, match=r"do not fit this UNetConfig: missing or misshapen \['down_blocks"):
        from_diffusers(reference, config)
