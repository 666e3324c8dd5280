"""Winograd F(4×4, 3×3) convolutions (t2i.kernels.winograd) give the direct convolution's outputs."""

import pytest
import torch
import torch.nn.functional as F

from t2i.models.unet import UNet, UNetConfig
from t2i.errors import UserError
from t2i.kernels.winograd import A_T, B_T, G, WinogradConv2d, _kernels, conv3x3, transform_filters, use_winograd
from t2i.pipeline import Pipeline


def test_the_matrices_compute_four_outputs_of_a_three_tap_correlation():
    """F(4, 3) in one dimension: Aᵀ[(G g) ⊙ (Bᵀ d)] = (Σ_k d[i+k] g[k])_{i<4}, exactly in float64."""
    d, g = torch.randn(6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    direct = torch.stack([(d[i:i + 3] * g).sum() for i in range(4)])
    torch.testing.assert_close(A_T @ ((G @ g) * (B_T @ d)), direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False], ids=["C transforms", "PyTorch transforms"])
@pytest.mark.parametrize("shape", [(2, 64, 48, 16, 16), (3, 5, 13, 13, 7), (1, 9, 8, 1, 6)],
                         ids=["tiles fit", "ragged map and lanes", "one row"])
def test_conv3x3_is_the_direct_convolution(fused, shape):
    if fused and _kernels() is None:
        pytest.skip("no C compiler: the fused transforms are not built")
    N, C, C_out, H, W = shape
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=generator)
    weight, bias = torch.randn(C_out, C, 3, 3, generator=generator) / 3, torch.randn(C_out, generator=generator)
    direct = F.conv2d(x, weight, bias, padding=1)
    for b, expected in ((bias, direct), (None, direct - bias.view(-1, 1, 1))):
        out = conv3x3(x, transform_filters(weight), b, fused=fused)
        assert out.shape == expected.shape
        assert (out - expected).abs().max() <= 2e-5 * expected.abs().max()  # float32 rounding, amplified ≤ 8×


def test_a_unet_with_winograd_convolutions_is_the_same_network():
    """Same outputs (fp32, ≤ 1e-4), same state-dict keys; with autograd recording it is the plain
    convolution, so the gradients are the direct convolution's; a changed weight is re-transformed."""
    torch.manual_seed(0)
    config = UNetConfig(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                        attention_levels=(1,), context_dim=32)
    plain = UNet(config).eval()
    fast = UNet(config).eval()
    fast.load_state_dict(plain.state_dict())
    assert use_winograd(fast) > 0 and set(fast.state_dict()) == set(plain.state_dict())
    x, t, context = torch.randn(2, 4, 12, 12), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t, context), plain(x, t, context), atol=1e-4, rtol=0)
    for net in (plain, fast):
        net(x, t, context).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    conv = next(m for m in fast.modules() if isinstance(m, WinogradConv2d))
    with torch.no_grad():
        conv.weight.mul_(2)
        torch.testing.assert_close(conv(x.new_ones(1, conv.in_channels, 4, 4)),
                                   F.conv2d(x.new_ones(1, conv.in_channels, 4, 4), conv.weight, conv.bias, padding=1))


def test_only_eligible_convolutions_are_replaced():
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, stride=2, padding=1),
                              torch.nn.Conv2d(64, 64, 1), torch.nn.Conv2d(4, 64, 3, padding=1))
    assert use_winograd(net) == 1 and isinstance(net[0], WinogradConv2d)
    assert [type(m) for m in net[1:]] == [torch.nn.Conv2d] * 3
    with pytest.raises(ValueError, match="3×3, stride-1"):
        WinogradConv2d(net[1])


def test_pipeline_with_winograd_gives_the_same_images():
    plain = Pipeline.load("shapes", "cpu")
    fast = Pipeline.load("shapes", "cpu").optimize(winograd=True)
    assert any(isinstance(m, WinogradConv2d) for m in fast.unet.modules())
    kwargs = dict(seed=3, num_images=2, steps=10, progress=False, output_type="pt")  # [0, 1]: 5e-5 is 1e-4 in [-1, 1]
    torch.testing.assert_close(fast("a red circle", **kwargs), plain("a red circle", **kwargs), atol=5e-5, rtol=0)


def test_generate_with_winograd_writes_the_same_image(tmp_path):
    import numpy as np
    from PIL import Image

    from t2i.cli import main

    paths = [tmp_path / "direct.png", tmp_path / "winograd.png"]
    for path, extra in zip(paths, ([], ["--winograd"])):
        assert main(["generate", "a red circle", "--model", "shapes", "--seed", "1", "--steps", "10",
                     "--out", str(path), *extra]) == 0
    direct, winograd = (np.asarray(Image.open(p), dtype=np.int16) for p in paths)
    assert np.abs(direct - winograd).max() <= 1  # 8-bit rounding of outputs within ~1e-5


def test_winograd_in_another_dtype_is_refused_in_one_line(tmp_path):
    from t2i.cli import main

    with pytest.raises(UserError, match=r"^Winograd convolutions compute in float32 on the CPU, and model 'shapes' "
                                        r"runs in bfloat16 on cpu: load it in float32 .*--precision fp32"):
        Pipeline.load("shapes", "cpu", "bf16").optimize(winograd=True)
    assert main(["generate", "a red circle", "--model", "shapes", "--precision", "bf16", "--winograd",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()


def test_weights_made_under_inference_mode_work_and_refresh_is_seen():
    """Inference tensors keep no version counter: the filters are still cached, and `refresh()` forgets them."""
    with torch.inference_mode():
        conv = torch.nn.Conv2d(64, 64, 3, padding=1)
        layer = WinogradConv2d(conv)
        x = torch.randn(1, 64, 12, 12, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4, rtol=1e-4)
        assert layer.filters() is layer.filters()  # cached
        conv.weight.mul_(2)
        layer.refresh()
        torch.testing.assert_close(layer(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4, rtol=1e-4)
