"""A captioned emoji dataset from the emoji images that two npm packages carry.

`emoji-datasource-twitter` holds Twemoji (graphics CC-BY 4.0, Twitter and contributors)
and `emoji-datasource-google` Noto Emoji (Apache 2.0, Google); both carry the same
`emoji.json` (MIT, Cal Henderson's emoji-data) naming each emoji, its category,
subcategory, short names and skin-tone variations, and a 64×64 RGBA PNG of each.

`build_emoji_dataset` reads the two tarballs (fetched with `npm pack` at pinned versions,
or given by the user), composites every image on white, and writes the image-folder
layout that diffusers' `train_text_to_image` reads (Hugging Face `imagefolder`):

    DIR/train/metadata.jsonl, DIR/train/*.png      the training split
    DIR/test/metadata.jsonl,  DIR/test/*.png       the held-out split
    DIR/dataset.json, DIR/README.md, DIR/licenses/ sources, attribution, licence texts

Each line of `metadata.jsonl` has `file_name` and `text`, a list of captions (several
phrasings of one image; the first is the canonical one). diffusers' script picks one of
a list at random per step, and so does `t2i train` (`data.folder.choose_caption`).
The held-out split is fixed by a hash of (style, emoji): all skin tones of one emoji in
one style fall on the same side, so a held-out image is never a recoloured training image,
while the same emoji in the other style may be seen in training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import UserError
from .colours import colour_phrase, colour_words, says_a_colour
from .folder import in_test_split


@dataclass(frozen=True)
class EmojiSource:
    """One npm package of emoji images: its name, pinned version, image set and licence."""

    style: str  # the word in the captions, "twemoji" or "noto"
    package: str
    version: str
    image_set: str  # the folder under img/ and the has_img_<set> flag of emoji.json
    licence: str
    attribution: str
    sha256: str  # of the tarball npm publishes at `version`


SOURCES = (
    EmojiSource("twemoji", "emoji-datasource-twitter", "16.0.0", "twitter", "CC-BY-4.0",
                "Twemoji graphics by Twitter, Inc. and other contributors (https://github.com/jdecked/twemoji), "
                "licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/). Changed here: "
                "composited on white.",
                "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    EmojiSource("noto", "emoji-datasource-google", "16.0.0", "google", "Apache-2.0",
                "Noto Emoji images by Google Inc. (https://github.com/googlefonts/noto-emoji), licensed under the "
                "Apache License 2.0 (licenses/Apache-2.0.txt). Changed here: composited on white.",
                "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
)
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
TEST_FRACTION = 0.1
IMAGE_SIZE = 64
FORMAT = 2  # of the captions and layout; recorded in dataset.json (2: colour captions)


def source_by_package(name: str) -> EmojiSource:
    for source in SOURCES:
        if source.package == name:
            return source
    raise UserError(f"the tarball holds npm package {name!r}, not one of: {', '.join(s.package for s in SOURCES)}")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i" / "npm"


def npm_pack(source: EmojiSource, destination: Path) -> Path:
    """The package's tarball at its pinned version, from `destination` or fetched there by `npm pack`."""
    path = destination / f"{source.package}-{source.version}.tgz"
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(f"npm is not installed, so {source.package}@{source.version} cannot be fetched: install "
                        "Node.js and npm (e.g. apt install npm), or pass each package's tarball with --tarball")
    destination.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([npm, "pack", f"{source.package}@{source.version}", "--pack-destination",
                               str(destination)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise UserError(f"npm pack {source.package}@{source.version} took over 30 minutes: check the network, "
                        "or pass the tarball with --tarball") from None
    if done.returncode != 0 or not path.is_file():
        lines = [line for line in done.stderr.splitlines() if "ERR" in line] or done.stderr.splitlines() or ["?"]
        raise UserError(f"npm pack {source.package}@{source.version} failed ({lines[-1].strip()}): check the "
                        "network, or pass the tarball with --tarball")
    return path


@dataclass
class EmojiPackage:
    """What one tarball holds: its source, version, the emoji list, licence and images by file name."""

    source: EmojiSource
    version: str
    emoji: list[dict]
    licence_text: str
    images: dict[str, bytes]
    sha256: str


def read_package(path: str | Path, size: int = IMAGE_SIZE) -> EmojiPackage:
    """An emoji-datasource tarball read in one pass: package.json, emoji.json, LICENSE and the
    64 px images (the smallest set at least `size`, else the largest)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tarball {str(path)!r} does not exist")
    files: dict[str, bytes] = {}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("package/")
                if member.isfile() and (name in ("package.json", "emoji.json", "LICENSE")
                                        or (name.startswith("img/") and name.endswith(".png")
                                            and name.count("/") == 3)):
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(f"{str(path)!r} is not a readable npm tarball ({error}): download it again") from None
    if "package.json" not in files or "emoji.json" not in files:
        raise UserError(f"{str(path)!r} is not an emoji-datasource package: it has no package.json and emoji.json")
    try:
        package = json.loads(files["package.json"])
        emoji = json.loads(files["emoji.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{str(path)!r} holds a damaged package.json or emoji.json ({error})") from None
    source = source_by_package(package.get("name"))
    if package.get("version") == source.version and digest != source.sha256:
        raise UserError(f"{str(path)!r} is not the tarball npm publishes for {source.package}@{source.version} "
                        "(its sha256 differs): download it again")
    prefix = f"img/{source.image_set}/"
    sizes = sorted({int(n.split("/")[2]) for n in files if n.startswith(prefix) and n.split("/")[2].isdigit()})
    if not sizes:
        raise UserError(f"{str(path)!r} holds no {source.image_set} images (img/{source.image_set}/64/*.png)")
    chosen = next((s for s in sizes if s >= size), sizes[-1])
    images = {n.rsplit("/", 1)[1]: data for n, data in files.items() if n.startswith(f"{prefix}{chosen}/")}
    licence = files.get("LICENSE", b"").decode("utf-8", "replace")
    return EmojiPackage(source, str(package.get("version")), emoji, licence, images, digest)


def readable(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def skin_tone_text(key: str | None) -> str:
    """"1F3FB-1F3FF" -> "light skin tone and dark skin tone"; None -> ""."""
    if not key:
        return ""
    tones = list(dict.fromkeys(SKIN_TONES.get(part.upper(), "") for part in key.split("-")))
    return " and ".join(t for t in tones if t)


def emoji_captions(entry: dict, style: str, skin_tone: str | None = None, colours: Sequence[str] = ()) -> list[str]:
    """Several phrasings of one emoji image, the canonical one first (it names the style).

    Built from emoji.json's name, short names, category and subcategory and the skin tone:
    some captions name the style and some do not, so that a prompt without a style draws
    either one. `colours`, the image's main colour words (`colours.colour_words`), add two
    phrasings that say what colour it is, as prompts do ("a blue and white bird"), unless
    the name already says a colour ("red apple").
    """
    name = " ".join(entry["name"].lower().split())
    tone = skin_tone_text(skin_tone)
    subject = f"{name}, {tone}" if tone else name
    kind = f"{style} style"
    short = ", ".join(dict.fromkeys(readable(s) for s in entry.get("short_names") or []))
    where = ", ".join(readable(p) for p in (entry.get("subcategory"), entry.get("category")) if p)
    captions = [f"{subject}, {kind}", subject, f"an emoji of {subject}", f"a drawing of {subject} in {kind}",
                f"{short}{', ' + tone if tone else ''}", f"{subject}, {where} emoji, {kind}" if where else ""]
    if colours and not says_a_colour(name):
        coloured = f"{colour_phrase(colours)} {name}"
        coloured = f"{'an' if coloured[0] in 'aeiou' else 'a'} {coloured}"
        captions += [coloured, f"a drawing of {coloured}"]
    return [c for c in dict.fromkeys(captions) if c]


def emoji_images(entry: dict):
    """(file name, skin-tone key or None, unified code) of an emoji and of each skin-tone variation."""
    yield entry["image"], None, entry["unified"]
    for key, variation in sorted((entry.get("skin_variations") or {}).items()):
        yield variation["image"], key, variation["unified"]


def read_rgba(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA")


def on_white(image: Image.Image, size: int) -> Image.Image:
    """An RGBA image composited on white, as RGB of `size`×`size` (Lanczos if it must be resized)."""
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, image).convert("RGB")
    return image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS)


def dataset_readme(packages: list[EmojiPackage], counts: dict[str, int], size: int) -> str:
    lines = [f"# Emoji, captioned, {size}×{size} on white", "",
             "Written by `t2i data emoji`. Layout: `train/` and `test/` (the fixed held-out split), each with",
             "`metadata.jsonl` (`file_name`, `text`: a list of captions, the first canonical) as diffusers'",
             "train_text_to_image reads it. Images of one emoji in one style are all on the same side.", "",
             f"Images: {counts['train']} train, {counts['test']} test.", "", "## Sources and licences", ""]
    for p in packages:
        lines += [f"- `{p.source.package}@{p.version}` (npm, sha256 of the tarball {p.sha256}), captions say "
                  f"\"{p.source.style} style\": {p.source.attribution}"]
    lines += ["- Names, categories and short names of the emoji: emoji-data by Cal Henderson, MIT licence "
              "(licenses/emoji-datasource-MIT.txt).", ""]
    return "\n".join(lines)


def write_notices(out: Path, packages: list[EmojiPackage]) -> None:
    licences = out / "licenses"
    licences.mkdir(exist_ok=True)
    if any(p.source.licence == "Apache-2.0" for p in packages):
        text = (resources.files("t2i.data") / "licenses" / "Apache-2.0.txt").read_text(encoding="utf-8")
        (licences / "Apache-2.0.txt").write_text(text, encoding="utf-8")
    if any(p.source.licence == "CC-BY-4.0" for p in packages):
        (licences / "CC-BY-4.0.txt").write_text(
            "The Twemoji graphics are licensed under the Creative Commons Attribution 4.0 International licence:\n"
            "https://creativecommons.org/licenses/by/4.0/legalcode\n"
            "Copyright 2019 Twitter, Inc and other contributors; https://github.com/jdecked/twemoji\n",
            encoding="utf-8")
    mit = next((p.licence_text for p in packages if p.licence_text), "")
    if mit:
        (licences / "emoji-datasource-MIT.txt").write_text(mit, encoding="utf-8")


def build_emoji_dataset(out: str | Path, tarballs: list[str | Path] | None = None, size: int = IMAGE_SIZE,
                        test_fraction: float = TEST_FRACTION, download_dir: str | Path | None = None,
                        progress: bool = True) -> dict[str, int]:
    """Write the dataset into `out` from the given tarballs, or from both packages at their
    pinned versions (`npm pack` into `download_dir`); returns the image count per split."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} is not empty: choose a new folder (or remove it)")
    if not 0 < test_fraction < 1:
        raise UserError(f"the test fraction is between 0 and 1, got {test_fraction}")
    if tarballs:
        packages = [read_package(path, size) for path in tarballs]
    else:
        where = Path(download_dir) if download_dir else cache_dir()
        packages = [read_package(npm_pack(source, where), size) for source in SOURCES]
    styles = [p.source.style for p in packages]
    if len(set(styles)) != len(styles):
        raise UserError(f"two tarballs of the same package ({', '.join(styles)}): give each package once")
    jobs = [(p, entry, image, tone, unified) for p in packages for entry in p.emoji
            if entry.get(f"has_img_{p.source.image_set}", True) and entry.get("name")
            for image, tone, unified in emoji_images(entry) if image in p.images]
    if not jobs:
        raise UserError("the tarballs hold no emoji images: nothing to write")
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for split in rows:
        (out / split).mkdir(parents=True, exist_ok=True)
    for package, entry, image, tone, unified in tqdm(jobs, desc="emoji", disable=not progress):
        style = package.source.style
        split = "test" if in_test_split(f"{style}/{entry['unified']}", test_fraction) else "train"
        file_name = f"{style}_{image}"
        try:
            rgba = read_rgba(package.images[image])
            on_white(rgba, size).save(out / split / file_name)
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{package.source.package}: image {image} is damaged ({error}): "
                            "download the package again") from None
        rows[split].append({"file_name": file_name, "text": emoji_captions(entry, style, tone, colour_words(rgba)),
                            "emoji": entry["unified"], "unified": unified, "name": entry["name"].lower(),
                            "style": style, "skin_tone": skin_tone_text(tone) or None,
                            "category": entry.get("category"), "subcategory": entry.get("subcategory")})
    for split, split_rows in rows.items():
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
        (out / split / "metadata.jsonl").write_text(lines, encoding="utf-8")
    counts = {split: len(split_rows) for split, split_rows in rows.items()}
    write_notices(out, packages)
    (out / "README.md").write_text(dataset_readme(packages, counts, size), encoding="utf-8")
    info = {"format": FORMAT, "image_size": size, "test_fraction": test_fraction, "counts": counts,
            "sources": [{"package": p.source.package, "version": p.version, "sha256": p.sha256,
                         "style": p.source.style, "licence": p.source.licence} for p in packages]}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return counts
