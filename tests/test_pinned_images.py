"""The shipped models draw what they drew before: every sampler, guidance, a negative
prompt, img2img and inpainting, against PNGs written by `tests/pinned_cases.py`."""

import numpy as np
import pytest

from pinned_cases import CASES, PINNED, make

PIPES: dict = {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_image_is_as_pinned(name):
    with open(PINNED / f"{name}.png", "rb") as f:
        from PIL import Image
        expected = np.asarray(Image.open(f).convert("RGB"), dtype=np.int16)
    got = np.asarray(make(name, PIPES), dtype=np.int16)
    assert got.shape == expected.shape
    # the same seed on the same kind of CPU: equal up to float rounding, a level or two at most
    assert np.abs(got - expected).max() <= 2, f"{name}: {np.abs(got - expected).mean():.3f} levels apart on average"
