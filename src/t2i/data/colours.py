"""The main colours of a picture, in the basic colour words people use in prompts.

Emoji names say what an emoji is but rarely what colour it is ("turtle", "bird"), while
prompts often say both ("a blue and white bird"). `colour_words` names the colours that
cover most of a picture's opaque pixels, so that captions can carry them: every opaque
pixel gets one of eleven basic colour terms (Berlin and Kay's), by its hue, saturation and
value; the words of the largest shares are returned, the largest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey")
# Hue (degrees) where each chromatic word ends, going round from red.
HUES = ((15, "red"), (40, "orange"), (68, "yellow"), (165, "green"), (255, "blue"), (290, "purple"),
        (340, "pink"), (360, "red"))


def pixel_words(rgb: np.ndarray) -> np.ndarray:
    """The basic colour word of each pixel of an (N, 3) array of RGB in [0, 255]."""
    rgb = rgb.astype(np.float64) / 255
    value = rgb.max(axis=1)
    chroma = value - rgb.min(axis=1)
    saturation = chroma / np.maximum(value, 1e-12)  # chroma is 0 where value is
    r, g, b = rgb.T
    safe = np.maximum(chroma, 1e-12)
    hue = np.select([value == r, value == g], [((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4) * 60
    chromatic = np.array([word for _, word in HUES], dtype=object)
    words = chromatic[np.searchsorted([end for end, _ in HUES], hue, side="right").clip(max=len(HUES) - 1)]
    warm = (words == "orange") | (words == "red")
    words[warm & (saturation > 0.25) & ((value < 0.55) | ((value < 0.85) & (saturation < 0.75)))] = "brown"
    words[(words == "red") & (value > 0.8) & (saturation < 0.5)] = "pink"
    grey = saturation < 0.2
    words[grey] = np.where(value[grey] > 0.85, "white", "grey")
    words[value < 0.2] = "black"
    return words


def colour_words(image: Image.Image, share: float = 0.2, most: int = 2) -> list[str]:
    """The colour words (at most `most`) that each cover at least `share` of the picture's
    opaque pixels (alpha ≥ 128; all pixels if it has no alpha), the largest share first."""
    rgba = np.asarray(image.convert("RGBA")).reshape(-1, 4)
    opaque = rgba[rgba[:, 3] >= 128, :3]
    if len(opaque) == 0:
        return []
    names, counts = np.unique(pixel_words(opaque), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [str(names[i]) for i in order[:most] if counts[i] >= share * len(opaque)]


def says_a_colour(text: str) -> bool:
    """Whether `text` holds one of the colour words ("red apple", "flag: white")."""
    return bool(set(text.lower().replace(":", " ").replace(",", " ").split()) & set(WORDS))


def colour_phrase(words: Sequence[str]) -> str:
    """["blue", "white"] -> "blue and white"; [] -> ""."""
    return " and ".join(words)
