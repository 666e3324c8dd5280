import copy
import math

import pytest
import torch
import torch.nn.functional as F

from t2i.errors import UserError
from t2i.models import layers
from t2i.models.layers import Attention, attend, timestep_embedding
from t2i.models.unet import UNet, UNetConfig

TINY = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), head_dim=8)


def perturb_zero_init(model):
    """Residual branches and the output start at zero; give them weights to see every path."""
    for p in model.parameters():
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_timestep_embedding_is_cosines_then_sines():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


def test_cross_attention_is_softmax_qk_v():
    torch.manual_seed(0)
    attn = Attention(dim=12, heads=3, head_dim=4, context_dim=6)
    x, c = torch.randn(2, 5, 12), torch.randn(2, 7, 6)
    q, k, v = attn.to_q(x), attn.to_k(c), attn.to_v(c)
    heads = []
    for h in range(3):
        sl = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., sl])
    assert torch.allclose(attn(x, c), attn.to_out(torch.cat(heads, -1)), atol=1e-5)


def test_a_convnext_unet_refuses_scale_shift_norm_which_its_blocks_would_ignore():
    from t2i.errors import UserError

    with pytest.raises(UserError, match="scale_shift_norm is for ResNet blocks"):
        UNetConfig(block_type="convnext", scale_shift_norm=True, **TINY)


@pytest.mark.parametrize("block_type", ["resnet", "convnext"])
def test_unet_maps_images_to_same_shape(block_type):
    torch.manual_seed(0)
    model = UNet(UNetConfig(block_type=block_type, **TINY))
    perturb_zero_init(model)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999])
    out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the output depends on the timestep
    assert not torch.allclose(model(x, torch.tensor([1, 1, 1])), model(x, torch.tensor([900, 900, 900])))
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_is_deterministic_per_sample_in_a_batch():
    torch.manual_seed(0)
    model = perturb_zero_init(UNet(UNetConfig(**TINY)).eval())
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([3, 30, 300, 900])
    assert torch.allclose(model(x, t)[2:3], model(x[2:3], t[2:3]), atol=1e-5)


def test_unet_rejects_sizes_it_cannot_halve():
    model = UNet(UNetConfig(model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_levels=()))
    with pytest.raises(UserError, match="divisible by 4"):
        model(torch.randn(1, 3, 18, 18), torch.tensor([0]))


def test_config_round_trip_and_validation():
    config = UNetConfig(**TINY)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(UserError, match="unknown block type"):
        UNetConfig(block_type="transformer")
    with pytest.raises(UserError, match="attention levels \\[3\\]"):
        UNetConfig(channel_mult=(1, 2), attention_levels=(3,))
    with pytest.raises(UserError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**config.to_dict(), "wings": 2})


def test_scale_shift_norm_is_adagn():
    from t2i.models.layers import ResBlock

    torch.manual_seed(0)
    block = ResBlock(8, 8, 16, groups=4, scale_shift=True).eval()
    torch.nn.init.normal_(block.conv2.weight, std=0.1)
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
    scale, shift = block.time_emb_proj(torch.nn.functional.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x))))
    expected = x + block.conv2(torch.nn.functional.silu(h * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), expected)
    assert UNet(UNetConfig(**TINY, scale_shift_norm=True))(torch.randn(1, 3, 8, 8), torch.tensor([3])).shape[1] == 3


@pytest.mark.parametrize("amx", [False, True])
def test_bfloat16_attention_on_the_cpu_is_computed_in_float32_where_its_kernels_are_slower(amx, monkeypatch):
    """Float32 (even under autocast) for gradients, and without AMX for inference too; bfloat16's own kernel
    in inference with AMX."""
    monkeypatch.setattr("t2i.models.layers.amx", lambda device: amx)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=generator).bfloat16() for _ in range(3))
    mask = torch.ones(2, 1, 1, 16, dtype=torch.bool)
    mask[1, ..., 5:] = False
    in_float32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).bfloat16()
    in_bfloat16 = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert not torch.equal(in_bfloat16, in_float32)
    with torch.autocast("cpu", torch.bfloat16):
        inference = attend(q, k, v, mask)
        training = attend(q.requires_grad_(), k, v, mask)
    assert inference.dtype == training.dtype == torch.bfloat16
    assert torch.equal(inference, in_bfloat16 if amx else in_float32)
    assert torch.equal(training, in_float32)


@pytest.mark.parametrize("head_dim", [8, 16])
def test_attention_in_chunks_is_attention(head_dim, monkeypatch):
    """Row blocks of 64 queries (the last of 36), on heads strided as `Attention._split` leaves them, with V's
    columns padded to 16 or not, give softmax(QKᵀ/√d) V."""
    monkeypatch.setattr(layers, "CHUNK_SCORE_BYTES", 64 * 70 * 8)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, length, 3, head_dim, generator=generator, dtype=torch.float64).transpose(1, 2)
               for length in (100, 70, 70))
    torch.testing.assert_close(layers.attend_in_chunks(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_peaked_attention_in_bfloat16_chunks_keeps_near_the_fused_kernel_s_error():
    """Scores of std 9 rounded to bfloat16 as they are would double the fused bfloat16 kernel's error (relative
    L2 against float64: 2.1x here); less each row's offset they stay within 1.5x of it (1.39x)."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 512, 40, generator=generator, dtype=torch.float64) * scale for scale in (3, 3, 1))
    reference = F.scaled_dot_product_attention(q, k, v)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fused, chunks = F.scaled_dot_product_attention(q, k, v), layers.attend_in_chunks(q, k, v)
    error = [((out.double() - reference).norm() / reference.norm()).item() for out in (fused, chunks)]
    assert error[1] < 1.5 * error[0]


@pytest.mark.parametrize("built", [True, False], ids=["kernel built", "no kernel"])
def test_bfloat16_inference_attention_without_amx_takes_the_kernel_or_the_chunks(built, monkeypatch):
    """Without AMX, unmasked bfloat16 attention in inference runs in our kernel from KERNEL_SCORES scores (where it
    is built; in chunks from CHUNKED_SCORES where not), within bfloat16's rounding of float32; a mask, a causal
    mask, gradients, K and V of another dtype or broadcast over Q's batch, or AMX take torch's fused kernel."""
    from t2i.kernels import attention as kernel

    if built and not kernel.available():
        pytest.skip("the attention kernel is not built here (no AVX512-BF16 or no C compiler)")
    monkeypatch.setattr(layers, "amx", lambda device: False)
    monkeypatch.setattr(kernel, "available", lambda: built)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 1024, 16, generator=generator) for _ in range(3))
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v), rtol=0.02, atol=0.02)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert layers.attention_path(q, k, v) == ("kernel" if built else "chunks")
    assert layers.attention_path(q[:, :, :16], k[:, :, :16], v[:, :, :16]) == "fused fp32"  # 256 scores
    assert layers.attention_path(q[:, :, :1023], k, v) == ("kernel" if built else "fused fp32")
    mask = torch.ones(1, 1, 1, 1024, dtype=torch.bool)
    for args, kwargs in [((q, k, v, mask), {}), ((q, k, v), {"causal": True}), ((q, k.float(), v.float()), {}),
                         ((torch.cat([q, q]), k, v), {}), ((q.requires_grad_(), k, v), {})]:
        assert layers.attention_path(*args, **kwargs) == "fused fp32"
    monkeypatch.setattr(layers, "amx", lambda device: True)
    assert layers.attention_path(q.detach(), k, v) == "fused"
    assert layers.attention_path(q.float(), k.float(), v.float()) == "fused"


@pytest.mark.parametrize("channels_last", [True, False], ids=["NHWC", "NCHW"])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (3, 2, 0), (1, 1, 0)])
def test_small_bfloat16_convolutions_without_amx_run_as_one_matrix_product(kernel, stride, padding, channels_last,
                                                                           monkeypatch):
    """`layers.Conv2d` in bfloat16 inference without AMX takes `conv_as_matmul` up to MATMUL_CONV_ROWS output pixels,
    within bfloat16's rounding of float32's convolution, whichever memory layout the maps and the filters have;
    more pixels, fewer channels, gradients, float32, groups or AMX take the direct convolution."""
    monkeypatch.setattr(layers, "amx", lambda device: False)
    torch.manual_seed(0)
    conv = layers.Conv2d(256, 40, kernel, stride=stride, padding=padding)
    x = torch.randn(2, 256, 9, 7)
    reference = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)
    fast = conv.to(torch.bfloat16)
    x = x.bfloat16()
    if channels_last:
        fast, x = fast.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    assert layers.conv_path(fast, x) == "direct"  # autograd records: the parameters need gradients
    with torch.no_grad():
        assert layers.conv_path(fast, x) == "matmul"
        out = fast(x)
        torch.testing.assert_close(out.float(), reference, rtol=0.02, atol=0.02)
        assert out.shape == reference.shape
        direct = F.conv2d(x, fast.weight, fast.bias, stride=stride, padding=padding).float()
        # no further from float32 than the direct bfloat16 convolution, but for a rounding of the sum
        assert (out.float() - reference).norm() <= 1.5 * (direct - reference).norm()
        assert layers.conv_path(fast, torch.cat([x] * 8 * stride ** 2)) == "direct"  # past MATMUL_CONV_ROWS
        assert layers.conv_path(fast, x.float()) == "direct"
        monkeypatch.setattr(layers, "amx", lambda device: True)
        assert layers.conv_path(fast, x) == "direct"
    grouped = layers.Conv2d(256, 256, 3, padding=1, groups=2).bfloat16()
    narrow = layers.Conv2d(255, 40, 3, padding=1).bfloat16()  # under MATMUL_CONV_CHANNELS
    with torch.no_grad():
        monkeypatch.setattr(layers, "amx", lambda device: False)
        assert layers.conv_path(grouped, x) == "direct"
        assert layers.conv_path(narrow, x[:, :255]) == "direct"


def test_bfloat16_inference_fuses_the_feed_forward_s_and_residuals_element_wise_work_into_its_products():
    """A transformer block in bfloat16 inference on the CPU computes GEGLU's GELU and product and the residual sums
    on the float32 sums of oneDNN's products (`layers.epilogues_fuse`): as near float32 as the unfused block or
    nearer. A hook on a layer (an on-the-fly LoRA's) or training mode keeps the unfused path, so the hook counts."""
    if layers.linear_pointwise() is None:
        pytest.skip("torch is built without oneDNN here")
    torch.manual_seed(0)
    block = layers.TransformerBlock(64, 4, 16, 32).eval()
    for p in block.parameters():  # zero-initialised layers would hide the output projections
        torch.nn.init.normal_(p, std=0.1)
    x, context = torch.randn(2, 50, 64), torch.randn(2, 7, 32)
    with torch.no_grad():
        reference = block(x, context)
        fast = copy.deepcopy(block).bfloat16()
        assert layers.epilogues_fuse(x.bfloat16(), fast.ff.proj)
        fused = fast(x.bfloat16(), context.bfloat16()).float()
        unfused = [fast.ff.proj, fast.ff.out, fast.attn1.to_out, fast.attn2.to_out]
        handles = [layer.register_forward_hook(lambda m, a, out: out) for layer in unfused]  # hooks that change nothing
        assert not layers.epilogues_fuse(x.bfloat16(), fast.ff.proj)
        plain = fast(x.bfloat16(), context.bfloat16()).float()
        error = [((out - reference).norm() / reference.norm()).item() for out in (fused, plain)]
        assert error[0] < 1e-2 and error[0] <= 1.1 * error[1], error
        torch.testing.assert_close(fused, plain, rtol=0.05, atol=0.05)
        handles[0].remove()
        fast.ff.proj.register_forward_hook(lambda m, a, out: out + 1)  # a hook's change reaches the output
        shifted = fast(x.bfloat16(), context.bfloat16()).float()
        assert (shifted - plain).abs().mean() > 0.1
        assert not layers.epilogues_fuse(x.bfloat16(), fast.train().ff.proj)
