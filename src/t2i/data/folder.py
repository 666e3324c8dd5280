"""Any folder of images as a dataset: resized, centre-cropped, in [-1, 1].

A captioned folder keeps each image's caption beside it in a text file of the same
name (`cat.png` + `cat.txt`), the layout of most fine-tuning datasets.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..images import to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SPLITS = ("train", "test", "all")


def in_test_split(name: str, test_fraction: float) -> bool:
    """A stable split by file name: the same file is held out on every machine and run."""
    return zlib.crc32(name.encode()) % 10_000 < test_fraction * 10_000


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` (bicubic, antialiased) and cut the centre square."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageFolder(torch.utils.data.Dataset):
    """Every image below `root`, sorted by path. Items are float32 [3, size, size] in [-1, 1].

    `split="train"` or `"test"` keeps the files on either side of a fixed split by file
    name (`test_fraction` of them held out); `"all"` keeps every file.
    """

    def __init__(self, root: str | Path, image_size: int = 32, split: str = "all", test_fraction: float = 0.05,
                 captioned: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {str(root)!r} does not exist")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"no images in {str(root)!r} (looked for {' '.join(IMAGE_EXTENSIONS)} files)")
        if split != "all":
            want_test = split == "test"
            files = [p for p in files if in_test_split(str(p.relative_to(root)), test_fraction) == want_test]
            if not files:
                raise UserError(
                    f"the {split} split of {str(root)!r} is empty: add images (a {test_fraction:.0%} test split "
                    "needs a few dozen) or use split 'all'"
                )
        if captioned:
            missing = [p for p in files if not p.with_suffix(".txt").is_file()]
            if missing:
                raise UserError(f"{len(missing)} of {len(files)} images in {str(root)!r} have no caption file, "
                                f"e.g. {str(missing[0].with_suffix('.txt'))!r}: write one .txt beside each image")
        self.root, self.files, self.image_size, self.captioned = root, files, image_size, captioned

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, index: int) -> str:
        path = self.files[index].with_suffix(".txt")
        try:
            return " ".join(path.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read caption {str(path)!r}: {error}") from None

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, str]:
        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = to_tensor(resize_center_crop(image, self.image_size))
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"cannot read image {str(path)!r}: {error}") from None
        return (image, self.caption(index)) if self.captioned else image
