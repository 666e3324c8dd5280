"""Files on disk: JSON read with a one-line error and written atomically, and the short content
hashes that caches (latents, Inception features, compiled kernels) are kept under."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import UserError


def read_json(path: Path, missing: str):
    """The JSON value in `path`; a missing file is an error that ends with `missing` (what it means
    and what to do), an unreadable one an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{str(path)!r} is not valid JSON: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read {str(path)!r}: {error.strerror or error}") from None


def check_writable(path: str | Path, what: str = "the output") -> Path:
    """Refuse, before any work, an output file that cannot be written: an empty name, a folder, or a place
    where no file can be made (a missing parent is fine: it is created). Tries a file in its folder."""
    if str(path).strip() == "":
        raise UserError(f"{what} path is empty: give a file name")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder: give a file name inside it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{str(folder)!r} is a file")
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".t2i-write-test-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write {what} {str(path)!r}: {error.strerror or error}; choose another place") \
            from None
    return path


def write_json(path: Path, data: dict) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def short_hash(*parts: bytes | str) -> str:
    """16 hex digits of the SHA-256 of the parts in order: the name a cache entry computed from
    them is kept under, so that changed inputs never read a stale entry."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:16]
