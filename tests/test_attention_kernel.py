"""The AVX512-BF16 attention kernel (`t2i.kernels.attention`): softmax(QKᵀ/√d) V with bfloat16 products and
float32 scores, against float64, at the fused bfloat16 kernel's error."""

import pytest
import torch
import torch.nn.functional as F

from t2i.kernels import attention as kernel

pytestmark = pytest.mark.skipif(not kernel.available(), reason="no AVX512-BF16 CPU or no C compiler here")


@pytest.mark.parametrize("shape", [
    (1, 2, 64, 64, 40),     # SD v1's head size, whole blocks of 16 rows and keys
    (2, 3, 77, 77, 64),     # rows and keys past a block, SD 2.x's head size
    (1, 2, 100, 77, 80),    # a cross-attention's 77 keys
    (1, 1, 48, 300, 160),   # 10 blocks of value columns, the last whole
    (1, 2, 33, 17, 2),      # one pair: the 8-lane tail of the value columns
    (1, 1, 32, 40, 512),    # the decoder's head size
])
def test_the_kernel_is_attention_within_the_fused_bfloat16_kernel_s_error(shape):
    batch, heads, queries, keys, d = shape
    generator = torch.Generator().manual_seed(0)
    # Q, K, V strided as `Attention._split` leaves them: [B, heads, N, d] views of [B, N, heads, d]
    q, k, v = (torch.randn(batch, n, heads, d, generator=generator, dtype=torch.float64).transpose(1, 2)
               for n in (queries, keys, keys))
    reference = F.scaled_dot_product_attention(q, k, v)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out = kernel.attention(q, k, v)
    assert out.shape == reference.shape and out.dtype == torch.bfloat16
    error, fused = (((o.double() - reference).norm() / reference.norm()).item()
                    for o in (out, F.scaled_dot_product_attention(q, k, v)))
    assert error < 1.1 * fused and error < 1e-2, (error, fused)


def test_peaked_attention_keeps_the_fused_kernel_s_error_and_a_scale_is_taken():
    """Scores of std 9, where rounding them to bfloat16 would double the error: kept in float32, they are not."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 512, 40, generator=generator, dtype=torch.float64) * std for std in (3, 3, 1))
    for scale in (None, 0.05):
        reference = F.scaled_dot_product_attention(q, k, v, scale=scale)
        fused = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=scale)
        out = kernel.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale)
        error, fused_error = (((o.double() - reference).norm() / reference.norm()).item() for o in (out, fused))
        assert error < 1.1 * fused_error, (scale, error, fused_error)


def test_any_leading_shape_and_contiguous_heads_give_the_same_attention():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, n, 8, generator=generator).bfloat16() for n in (40, 24, 24))
    heads = kernel.attention(q, k, v)
    assert torch.equal(kernel.attention(q[0], k[0], v[0]), heads[0])  # [H, L, d]
    assert torch.equal(kernel.attention(q[None], k[None], v[None])[0], heads)  # [1, B, H, L, d]
    assert torch.equal(kernel.attention(q.contiguous(), k, v), heads)


def test_huge_scores_do_not_overflow_and_a_scale_must_be_positive():
    """Scores near 1e9: each weight's exponent is (s - m) · scale, exact at the largest score, not s · scale less a
    rounded m · scale, which overflowed to inf and made NaN rows."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 16, 8, generator=generator, dtype=torch.float64) * std for std in (3e4, 3e4, 1))
    out = kernel.attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    reference = F.scaled_dot_product_attention(q.bfloat16().double(), k.bfloat16().double(), v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference, rtol=0.02, atol=0.02)
    with pytest.raises(ValueError, match="scale must be positive"):
        kernel.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=-0.1)


def test_under_torch_compile_the_kernel_reads_live_tensors():
    """A graph broken around the C call must not free the packed K and V that it reads by address."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 256, 16, generator=generator).bfloat16()
    compiled = torch.compile(lambda a: kernel.attention(a, a, a), backend="eager")
    torch.testing.assert_close(compiled(q), kernel.attention(q, q, q))


def test_what_the_kernel_takes():
    q = torch.zeros(1, 2, 16, 8, dtype=torch.bfloat16)
    assert kernel.takes(q, q, q)
    assert not kernel.takes(q, q, q[:, :, :15])  # keys and values of different counts
    assert not kernel.takes(q.float(), q.float(), q.float())
    assert not kernel.takes(q[..., :7], q[..., :7], q[..., :7])  # an odd head size
    assert not kernel.takes(q, q[:, :1], q[:, :1])  # K and V broadcast over Q's heads
    assert not kernel.takes(q, q[:, :, :0], q[:, :, :0])  # no keys
