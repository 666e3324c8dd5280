"""Conversions between tensors in [-1, 1] and PIL images, grids, and PNGs with parameters."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import UserError
from .files import durable_write
from .metadata import INFOTEXT_KEY, check_parameters, from_infotext, to_infotext

PNG_PARAMETERS_KEY = "t2i"
MAX_PIXELS = 8192 * 8192  # an image file declaring more is refused before its pixels are decoded
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_image(source: str | Path | BinaryIO, mode: str = "RGB", name: str | None = None) -> Image.Image:
    """The image in `source` (a path, or an open binary file such as an upload's bytes, called `name`
    in errors) converted to `mode`, read with limits: a file that is not an image, a decompression
    bomb (more than MAX_PIXELS declared) or a text chunk over PIL's limit is one `UserError`. 16-bit
    greyscale keeps its levels (PIL's own conversion clips them to white); an EXIF orientation is applied, and
    transparency is read as AUTOMATIC1111 reads it (`without_alpha`)."""
    source = Path(source) if isinstance(source, str) else source
    name = name or (f"image {str(source)!r}" if isinstance(source, Path) else "the image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise UserError(f"{name} is {image.width}×{image.height}, more than this reads "
                                    f"({MAX_PIXELS // 10**6} megapixels): resize it")
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # a phone's photo the way up it is shown
                return without_alpha(eight_bit(image), mode)
    except UserError:
        raise
    except IsADirectoryError:
        raise UserError(f"{str(source)!r} is a folder, not an image") from None
    except FileNotFoundError:
        raise UserError(f"{name} does not exist") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError, SyntaxError) as error:  # PIL raises all of these for malformed files
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise UserError(f"cannot read {name}: {reason}") from None


def without_alpha(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode`, its transparency read as AUTOMATIC1111 reads it: an image with see-through pixels lies on
    white (not on whatever colour they hide), and as a mask ("L") such an image is its alpha: opaque = redraw."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA") or image.getchannel("A").getextrema() == (255, 255):
        return image.convert(mode)
    if mode == "L":
        return image.getchannel("A")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert(mode)


def eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale as 8-bit greyscale, its top byte; other images as they are."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    levels = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
    return Image.fromarray(levels).convert("L")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float32 [3, H, W] in [-1, 1], on the 256 levels k/127.5 - 1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] (clipped) -> the 8-bit levels 0..255 a saved image holds, as floats."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()


def to_pil(x: torch.Tensor) -> Image.Image:
    """[3, H, W] (or [1, H, W]) in [-1, 1] -> PIL image; values outside are clipped."""
    array = to_levels(x.cpu()).to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def make_grid(images: torch.Tensor | list[Image.Image], ncols: int | None = None, padding: int = 2,
              background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile images [N, C, H, W] (or PIL images of one size) into a grid, near-square by default."""
    pils = [to_pil(x) for x in images] if isinstance(images, torch.Tensor) else list(images)
    ncols = ncols or math.ceil(math.sqrt(len(pils)))
    nrows = math.ceil(len(pils) / ncols)
    w, h = pils[0].size
    grid = Image.new("RGB", (ncols * (w + padding) + padding, nrows * (h + padding) + padding), background)
    for i, image in enumerate(pils):
        row, col = divmod(i, ncols)
        grid.paste(image.convert("RGB"), (padding + col * (w + padding), padding + row * (h + padding)))
    return grid


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """The image `factor`× larger on each side, each pixel a block (nearest neighbour)."""
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def save_png(image: Image.Image, path: str | Path, parameters: dict | None = None) -> Path:
    """Save a PNG; `parameters` (by default those a Pipeline left in `image.info`) go into a
    text chunk as JSON so the image can be reproduced, and one image's generation parameters
    also into AUTOMATIC1111's `parameters` chunk (`metadata.to_infotext`)."""
    path = Path(path)
    if parameters is None:
        parameters = image.info.get(PNG_PARAMETERS_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text(PNG_PARAMETERS_KEY, json.dumps(parameters, sort_keys=True))
        infotext = to_infotext(parameters)
        if infotext is not None:
            info.add_itxt(INFOTEXT_KEY, infotext)
    durable_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def read_parameters(path: str | Path) -> dict:
    """The generation parameters a PNG file carries (`image_parameters`)."""
    return image_parameters(read_image(path))


def refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def image_parameters(image: Image.Image) -> dict:
    """The generation parameters an image read from a PNG carries: ours (saved by `save_png`), else
    those of AUTOMATIC1111's `parameters` chunk read into our names, else {}."""
    ours, theirs = image.info.get(PNG_PARAMETERS_KEY), image.info.get(INFOTEXT_KEY)
    if ours:
        try:  # NaN and Infinity are JSON to Python only, and never in parameters t2i writes
            parameters = json.loads(ours, parse_constant=refuse_constant)
        except (ValueError, RecursionError):
            parameters = None
        if not isinstance(parameters, dict):
            raise UserError(f"the image's {PNG_PARAMETERS_KEY!r} text chunk is not t2i's parameters (a JSON object): "
                            "it was written by something else, or damaged")
        return check_parameters(parameters, f"the image's {PNG_PARAMETERS_KEY!r} text chunk")
    return from_infotext(theirs) if theirs else {}
