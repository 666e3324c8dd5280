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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import UserError
from .colours import colour_phrase, colour_words, says_a_colour
from .emoji_sets import (SETS, DrawingSet, check_pin, cldr_names, drawing_set, matched, read_drawings, read_members,
                         tarball_name)
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


def npm_pack(source: EmojiSource | DrawingSet, destination: Path) -> Path:
    """The package's tarball at its pinned version, from `destination` or fetched there by `npm pack`."""
    path = destination / tarball_name(source)
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
    files = read_members(path, lambda name: name in ("package.json", "emoji.json", "LICENSE")
                         or (name.startswith("img/") and name.endswith(".png") and name.count("/") == 3))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if "package.json" not in files or "emoji.json" not in files:
        raise UserError(f"{str(path)!r} is not an emoji-datasource package: it has no package.json and emoji.json")
    try:
        package = json.loads(files["package.json"])
        emoji = json.loads(files["emoji.json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{str(path)!r} holds a damaged package.json or emoji.json ({error})") from None
    source = source_by_package(package.get("name"))
    check_pin(path, source.package, source.version, source.sha256, str(package.get("version")), digest)
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


def emoji_captions(entry: dict, style: str, skin_tone: str | None = None, colours: Sequence[str] = (),
                   notes: dict | None = None) -> list[str]:
    """Several phrasings of one emoji image, the canonical one first (it names the style).

    Built from emoji.json's name, short names, category and subcategory and the skin tone:
    some captions name the style and some do not, so that a prompt without a style draws
    either one. `colours`, the image's main colour words (`colours.colour_words`), add two
    phrasings that say what colour it is, as prompts do ("a blue and white bird"), unless
    the name already says a colour ("red apple"). `notes` (OpenMoji's annotation and tags) add
    its annotation where it names the drawing otherwise, and the subject with its first tags.
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
    if notes:
        annotation = " ".join(notes.get("annotation", "").lower().split())
        tags = [t.strip() for t in f"{notes.get('tags', '')},{notes.get('openmoji_tags', '')}".lower().split(",")
                if t.strip() and t.strip() not in name]
        captions += [annotation if annotation != name else "", f"{subject}, {', '.join(tags[:4])}" if tags else ""]
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


def drop_held_out_copies(out: Path, rows: dict[str, list[dict]], pixels: dict[str, str]) -> list[dict]:
    """The training rows without those whose pixels equal a held-out image's (a territory's flag that is its
    country's, a set drawing two emoji alike): a held-out image must not be trained on, under any caption."""
    held_out = {pixels[row["file_name"]] for split in ("test", "test-extra") for row in rows[split]}
    kept = []
    for row in rows["train"]:
        if pixels[row["file_name"]] in held_out:
            (out / "train" / row["file_name"]).unlink()
        else:
            kept.append(row)
    return kept


def dataset_readme(sources: list[dict], counts: dict[str, int], size: int) -> str:
    lines = [f"# Emoji, captioned, {size}×{size} on white", "",
             "Written by `t2i data emoji`. Layout: `train/`, `test/` (Twemoji and Noto held out: the fixed",
             "comparison set) and `test-extra/` (the further sets held out), each with `metadata.jsonl`",
             "(`file_name`, `text`: a list of captions, the first canonical) as diffusers' train_text_to_image",
             "reads it. Images of one emoji in one style are all on the same side, and no training image",
             "has a held-out image's pixels.", "",
             f"Images: {counts['train']} train, {counts['test']} test, {counts.get('test-extra', 0)} test-extra.", "",
             "## Sources and licences", ""]
    for source in sources:
        lines += [f"- `{source['package']}@{source['version']}` (npm, sha256 of the tarball {source['sha256']}), "
                  f"captions say \"{source['style'].replace('-', ' ')} style\": {source['attribution']}"]
    lines += ["- Names, categories and short names of the emoji: emoji-data by Cal Henderson, MIT licence "
              "(licenses/emoji-datasource-MIT.txt).", ""]
    return "\n".join(lines)


CC_NOTICES = {
    "CC-BY-4.0": "Creative Commons Attribution 4.0 International: https://creativecommons.org/licenses/by/4.0/legalcode\n"
                 "Twemoji: Copyright 2019 Twitter, Inc and other contributors; https://github.com/jdecked/twemoji\n"
                 "EmojiOne 2: Emoji One; https://github.com/EmojiTwo/emojitwo\n",
    "CC-BY-SA-4.0": "Creative Commons Attribution-ShareAlike 4.0 International: "
                    "https://creativecommons.org/licenses/by-sa/4.0/legalcode\nOpenMoji: https://openmoji.org\n",
}


def write_notices(out: Path, sources: list[dict], emoji_data_licence: str, package_licences: dict[str, str]) -> None:
    """The licence texts the sources need beside the images: Apache's, the CC licences' pointers, MIT texts."""
    licences = out / "licenses"
    licences.mkdir(exist_ok=True)
    kinds = {source["licence"] for source in sources}
    if "Apache-2.0" in kinds:
        text = (resources.files("t2i.data") / "licenses" / "Apache-2.0.txt").read_text(encoding="utf-8")
        (licences / "Apache-2.0.txt").write_text(text, encoding="utf-8")
    for kind, text in CC_NOTICES.items():
        if kind in kinds:
            (licences / f"{kind}.txt").write_text(text, encoding="utf-8")
    if emoji_data_licence:
        (licences / "emoji-datasource-MIT.txt").write_text(emoji_data_licence, encoding="utf-8")
    for package, text in package_licences.items():
        (licences / f"{package.lstrip('@').replace('/', '-')}-LICENSE.txt").write_text(text, encoding="utf-8")
    if {source["package"] for source in sources} & set(MICROSOFT_FLUENT):  # the drawings' own licence, which
        # their npm packagers' LICENSE (their own MIT, or none) does not carry
        text = (resources.files("t2i.data") / "licenses" / "fluentui-emoji-MIT.txt").read_text(encoding="utf-8")
        (licences / "microsoft-fluentui-emoji-MIT.txt").write_text(text, encoding="utf-8")


MICROSOFT_FLUENT = ("fluentui-emoji", "@lobehub/fluent-emoji-3d")
  # Microsoft's Fluent Emoji (MIT), repackaged


ALL_SETS = (*(source.style for source in SOURCES), *(drawings.name for drawings in SETS))


def tarball_package(path: str | Path) -> str:
    """The npm package a tarball holds (its package.json's name)."""
    files = read_members(path, lambda name: name == "package.json")
    try:
        return json.loads(files["package.json"])["name"]
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError, TypeError):
        raise UserError(f"{str(path)!r} is not an npm package: it has no readable package.json") from None


def build_emoji_dataset(out: str | Path, tarballs: list[str | Path] | None = None, size: int = IMAGE_SIZE,
                        test_fraction: float = TEST_FRACTION, download_dir: str | Path | None = None,
                        progress: bool = True, sets: Sequence[str] | None = None) -> dict[str, int]:
    """Write the dataset into `out` from the given tarballs, or from the packages of `sets` (default:
    all, `ALL_SETS`) at their pinned versions (`npm pack` into `download_dir`); returns the image count
    per split. Twemoji and Noto's held-out images are `test/`, the fixed comparison set; the further
    sets' (`data.emoji_sets`) are `test-extra/`, so that `test/` stays what it was."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} is not empty: choose a new folder (or remove it)")
    if not 0 < test_fraction < 1:
        raise UserError(f"the test fraction is between 0 and 1, got {test_fraction}")
    sets = list(dict.fromkeys(sets or (ALL_SETS if not tarballs else ())))
    unknown = [name for name in sets if name not in ALL_SETS]
    if unknown:
        raise UserError(f"unknown emoji set {unknown[0]!r}; choose from: {', '.join(ALL_SETS)}")
    where = Path(download_dir) if download_dir else cache_dir()
    given = {tarball_package(path): Path(path) for path in tarballs or ()}
    if tarballs and not sets:  # the sets of the tarballs given
        sets = [s.style for s in SOURCES if s.package in given] + [d.name for d in SETS if d.package in given]
    names_source = next((s for s in SOURCES if s.style in sets), SOURCES[0])  # emoji-data: every set's names

    def tarball(source) -> Path:
        return given.get(source.package) or npm_pack(source, where)

    packages = [read_package(tarball(source), size) for source in SOURCES
                if source.style in sets or source is names_source]
    emoji = next(p.emoji for p in packages if p.source is names_source)
    packages_shown = [p for p in packages if p.source.style in sets]
    jobs = [(p, entry, image, tone, unified) for p in packages_shown for entry in p.emoji
            if entry.get(f"has_img_{p.source.image_set}", True) and entry.get("name")
            for image, tone, unified in emoji_images(entry) if image in p.images]
    more = [read_drawings(drawings, tarball(drawings))
            for drawings in map(drawing_set, [n for n in sets if n not in [s.style for s in SOURCES]])]
    by_name = [package for package in more if package.drawings.layout in ("fluent-svg", "iconify")]
    cldr = cldr_names(tarball(drawing_set("openmoji"))) if by_name else {}
    extra = [(package.drawings, *match) for package in more
             for match in matched(package.drawings, package.found, emoji, cldr)]
    if not jobs and not extra:
        raise UserError("the tarballs hold no emoji images: nothing to write")
    rows: dict[str, list[dict]] = {"train": [], "test": [], "test-extra": []}
    for split in rows:
        (out / split).mkdir(parents=True, exist_ok=True)

    pixels: dict[str, str] = {}  # file name: sha256 of its pixels

    def write(style: str, entry: dict, tone: str | None, unified: str, rgba: Image.Image, held_out: str,
              notes: dict | None = None) -> None:
        split = held_out if in_test_split(f"{style}/{entry['unified']}", test_fraction) else "train"
        file_name = f"{style}_{unified.lower()}.png"
        image = on_white(rgba, size)
        image.save(out / split / file_name)
        pixels[file_name] = hashlib.sha256(image.tobytes()).hexdigest()
        rows[split].append({"file_name": file_name,
                            "text": emoji_captions(entry, style.replace("-", " "), tone, colour_words(rgba), notes),
                            "emoji": entry["unified"], "unified": unified, "name": entry["name"].lower(),
                            "style": style, "skin_tone": skin_tone_text(tone) or None,
                            "category": entry.get("category"), "subcategory": entry.get("subcategory")})

    for package, entry, image, tone, unified in tqdm(jobs, desc="emoji", disable=not progress):
        try:
            rgba = read_rgba(package.images[image])
        except (UnidentifiedImageError, OSError) as error:
            raise UserError(f"{package.source.package}: image {image} is damaged ({error}): "
                            "download the package again") from None
        write(package.source.style, entry, tone, unified, rgba, "test")
    for drawings, entry, tone, unified, drawing in tqdm(extra, desc="more emoji", disable=not progress):
        write(drawings.name, entry, tone, unified, drawing.load(size), "test-extra", drawing.notes)
    rows["train"] = drop_held_out_copies(out, rows, pixels)
    for split, split_rows in rows.items():
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
        (out / split / "metadata.jsonl").write_text(lines, encoding="utf-8")
    counts = {split: len(split_rows) for split, split_rows in rows.items()}
    sources = [{"package": p.source.package, "version": p.version, "sha256": p.sha256, "style": p.source.style,
                "licence": p.source.licence, "attribution": p.source.attribution} for p in packages_shown]
    sources += [{"package": p.drawings.package, "version": p.version, "sha256": p.sha256, "style": p.drawings.name,
                 "licence": p.drawings.licence, "attribution": p.drawings.attribution} for p in more]
    write_notices(out, sources, next((p.licence_text for p in packages if p.source is names_source), ""),
                  {p.drawings.package: p.licence_text for p in more if p.licence_text})
    (out / "README.md").write_text(dataset_readme(sources, counts, size), encoding="utf-8")
    info = {"format": FORMAT, "image_size": size, "test_fraction": test_fraction, "counts": counts,
            "sources": [{key: value for key, value in source.items() if key != "attribution"} for source in sources]}
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    pins = [(p.source.package, p.source.version, p.version) for p in packages_shown]
    pins += [(p.drawings.package, p.drawings.version, p.version) for p in more]
    for package, pinned, version in pins:
        if version != pinned:
            warnings.warn(f"{package}@{version} is not the pinned {pinned}: its images were used without the "
                          "sha256 check, and dataset.json records its version and sha256", stacklevel=2)
    return counts
