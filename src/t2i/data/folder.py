"""Any folder of images as a dataset: resized, centre-cropped, in [-1, 1].

A captioned folder keeps each image's caption beside it in a text file of the same
name (`cat.png` + `cat.txt`), the layout of most fine-tuning datasets, or lists them in
a `metadata.jsonl` (one JSON object a line: `file_name`, and `text`, one caption or a
list of them), the layout of Hugging Face's `imagefolder` that diffusers'
train_text_to_image reads. With `train/metadata.jsonl` and `test/metadata.jsonl` the
folder brings its own held-out split; otherwise the split is a hash of the file name.

An image with several captions carries them all, joined by CAPTION_SEPARATOR, as its
item's caption; the training loop picks one at random per step (`choose_caption`).
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import torch
from PIL import Image

from ..errors import UserError
from ..files import read_json_lines
from ..images import read_image, to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
SPLITS = ("train", "test", "all")
METADATA = "metadata.jsonl"
CAPTION_SEPARATOR = "\n"  # never inside a caption: captions are whitespace-normalised


def caption_choices(text: str) -> list[str]:
    """The captions an item's caption text holds (one, or several joined by CAPTION_SEPARATOR)."""
    return text.split(CAPTION_SEPARATOR)


def choose_caption(text: str, rng: random.Random) -> str:
    """One of an item's captions, drawn with `rng` (the step's, so that resume repeats it)."""
    choices = caption_choices(text)
    return choices[0] if len(choices) == 1 else choices[rng.randrange(len(choices))]


def normalise(caption: str) -> str:
    return " ".join(caption.split())


def read_metadata(path: Path) -> dict[Path, dict]:
    """{image path: its row} of a `metadata.jsonl`, each row's captions as a list under
    "captions"; file names are relative to the file's folder."""
    entries = {}
    for number, row in read_json_lines(path):
        try:
            name, text = row["file_name"], row.get("text", "")
        except (KeyError, TypeError):
            raise UserError(f"{str(path)!r} line {number} is not a JSON object with a 'file_name'") from None
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise UserError(f"{str(path)!r} line {number}: 'text' must be a caption or a list of captions")
        row["captions"] = [c for c in (normalise(t) for t in texts) if c] or [""]
        entries[inside(path.parent, name, f"{str(path)!r} line {number}")] = row
    return entries


def inside(folder: Path, name, where: str) -> Path:
    """`folder / name`, refused unless `name` is a relative path that stays inside the folder: a
    dataset names only its own files."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"{where}: file_name {name!r} must be a path relative to {str(folder)!r}, inside it")
    return folder / name


def split_metadata(root: Path, split: str) -> dict[Path, dict] | None:
    """The entries of a folder's own split (train/ and test/ each with a metadata.jsonl), or
    of its one metadata.jsonl for every split; None when it has neither."""
    if all((root / s / METADATA).is_file() for s in ("train", "test")):
        splits = ("train", "test") if split == "all" else (split,)
        return {k: v for s in splits for k, v in read_metadata(root / s / METADATA).items()}
    if (root / METADATA).is_file():
        return read_metadata(root / METADATA)
    return None


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

    `split="train"` or `"test"` keeps the files on either side of a fixed split: the
    folder's own (train/ and test/ with a metadata.jsonl each), else by file name
    (`test_fraction` of them held out); `"all"` keeps every file. `captioned` makes items
    `(image, captions)`, the captions of an image joined by CAPTION_SEPARATOR.
    """

    def __init__(self, root: str | Path, image_size: int = 32, split: str = "all", test_fraction: float = 0.05,
                 captioned: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {str(root)!r} does not exist")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        metadata = split_metadata(root, split)
        if metadata is not None:
            missing = [p for p in metadata if not p.is_file()]
            if missing:
                raise UserError(f"{len(missing)} images listed in {str(root)!r}'s {METADATA} are missing, "
                                f"e.g. {str(missing[0])!r}")
            files = sorted(metadata)
        else:
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"no images in {str(root)!r} (looked for {' '.join(IMAGE_EXTENSIONS)} files)")
        own_split = metadata is not None and (root / "test" / METADATA).is_file()
        if split != "all" and not own_split:
            want_test = split == "test"
            files = [p for p in files if in_test_split(str(p.relative_to(root)), test_fraction) == want_test]
            if not files:
                raise UserError(
                    f"the {split} split of {str(root)!r} is empty: add images (a {test_fraction:.0%} test split "
                    "needs a few dozen) or use split 'all'"
                )
        self.metadata = metadata
        if captioned and metadata is not None and not any(c for p in files for c in metadata[p]["captions"]):
            keys = sorted(set(metadata[files[0]]) - {"captions", "file_name"})
            raise UserError(f"no image in {str(root)!r} has a caption: each row of {METADATA} needs a 'text' (a "
                            f"caption or a list of them); its first row has {', '.join(map(repr, keys)) or 'no other'} "
                            "fields")
        if captioned and metadata is None:
            missing = [p for p in files if not p.with_suffix(".txt").is_file()]
            if missing:
                raise UserError(f"{len(missing)} of {len(files)} images in {str(root)!r} have no caption file, "
                                f"e.g. {str(missing[0].with_suffix('.txt'))!r}: write one .txt beside each image")
        self.root, self.files, self.image_size, self.captioned = root, files, image_size, captioned

    def __len__(self) -> int:
        return len(self.files)

    def caption(self, index: int) -> str:
        """The image's caption (its first, canonical one if it has several)."""
        return self.captions(index)[0]

    def record(self, index: int) -> dict:
        """The image's row of metadata.jsonl ({} without one): what else it says about the image."""
        return {} if self.metadata is None else self.metadata[self.files[index]]

    def captions(self, index: int) -> list[str]:
        """Every caption of the image."""
        if self.metadata is not None:
            return self.metadata[self.files[index]]["captions"]
        path = self.files[index].with_suffix(".txt")
        try:
            return [normalise(path.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read caption {str(path)!r}: {error}") from None

    def sizes(self) -> list[tuple[int, int] | None]:
        """Each image's (width, height), read from its file's header (None for a file that does not read as
        an image: loading it says why)."""
        sizes = []
        for path in self.files:
            try:
                with Image.open(path) as image:
                    sizes.append(image.size)
            except (OSError, ValueError, Image.DecompressionBombError):
                sizes.append(None)
        return sizes

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, str]:
        image = to_tensor(resize_center_crop(read_image(self.files[index]), self.image_size))
        return (image, CAPTION_SEPARATOR.join(self.captions(index))) if self.captioned else image
