"""Files on disk: JSON read with a one-line error, files written durably (a temporary name,
fsync, an atomic rename, the folder fsynced), and the short content hashes that caches
(latents, Inception features, compiled kernels) are kept under.

Every filesystem operation of a durable write calls `after_operation` once it is done, so
that a test can stop the process or fail the disk after any one of them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from .errors import UserError

TMP_SUFFIX = ".tmp"

# Called with what was just done ("write PATH", "rename A -> B", ...) after each operation of a
# durable write; None but in tests, which kill the process or raise OSError there.
after_operation: Callable[[str], None] | None = None


def _done(what: str) -> None:
    if after_operation is not None:
        after_operation(what)


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
    except (ValueError, RecursionError) as error:  # an integer of thousands of digits, nesting thousands deep
        raise UserError(f"{str(path)!r} is not a config t2i reads: {str(error).splitlines()[0][:120]}") from None
    except OSError as error:
        raise UserError(f"cannot read {str(path)!r}: {error.strerror or error}") from None


def read_json_lines(path: Path) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON-lines file; a line that is not JSON has the
    value None, for the caller to name the line in its own terms. An unreadable file is one UserError."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {str(path)!r}: {getattr(error, 'strerror', None) or error}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except (ValueError, RecursionError):  # JSONDecodeError, or an integer of thousands of digits
                rows.append((number, None))
    return rows


def check_writable(path: str | Path, what: str = "the output", suffix: str | None = None) -> Path:
    """Refuse, before any work, an output file that cannot be written: an empty name, a folder, a name without
    `suffix` (the format it is written in, if given), or a place where no file can be made (a missing parent is
    fine: it is created). Tries a file in its folder."""
    if str(path).strip() == "":
        raise UserError(f"{what} path is empty: give a file name")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder: give a file name inside it")
    if suffix is not None and path.suffix.lower() != suffix:
        raise UserError(f"{what} {str(path)!r} would hold a {suffix[1:].upper()} file under another name: give a "
                        f"name ending in {suffix}")
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


def tmp_path(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed into place."""
    return path.with_name(path.name + TMP_SUFFIX)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a file created, renamed or removed in it) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(src: Path, dst: Path) -> None:
    """Rename `src` onto `dst` in one step: a reader sees the old file or the new one, never neither."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    _done(f"rename {src} -> {dst}")


def durable_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` writes the file's content to the temporary name given it; the file is then
    fsynced and renamed onto `path`, so `path` is the old file or the whole new one."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write(tmp)
        fsync_file(tmp)
    except BaseException:  # a full disk, a stop: no half-written file (gigabytes, for a model) is left behind
        tmp.unlink(missing_ok=True)
        raise
    _done(f"write {tmp}")
    atomic_replace(tmp, path)


def durable_write_bytes(path: Path, data: bytes) -> None:
    durable_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, data: dict) -> None:
    """Write durably, so a reader never sees half a file."""
    durable_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` the file `src` is, replacing it atomically: a hard link (no bytes written),
    or a copy where the filesystem has no hard links."""
    tmp = tmp_path(Path(dst))
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        shutil.copyfile(src, tmp)
        fsync_file(tmp)
    _done(f"link {src} -> {tmp}")
    atomic_replace(tmp, Path(dst))


def make_dir(path: Path) -> None:
    """A new folder (or an existing one), its entry fsynced in its parent."""
    path.mkdir(parents=True, exist_ok=True)
    fsync_dir(path.parent)
    _done(f"mkdir {path}")


def remove_file(path: Path) -> None:
    os.unlink(path)
    _done(f"remove {path}")


def remove_tree(path: Path, first: str | None = None) -> None:
    """Remove a folder file by file, the file named `first` before the others (the one whose
    presence says the folder is complete, so that a half-removed folder never looks complete)."""
    path = Path(path)
    entries = sorted(path.iterdir(), key=lambda entry: entry.name != first)
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            remove_file(entry)
    os.rmdir(path)
    fsync_dir(path.parent)
    _done(f"remove {path}")


def discard(path: Path) -> None:
    """Remove a leftover file or folder if it is there, ignoring errors: cleaning up after a
    failure must not hide the failure."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def short_hash(*parts: bytes | str | Mapping) -> str:
    """16 hex digits of the SHA-256 of the parts in order: the name a cache entry computed from
    them is kept under, so that changed inputs never read a stale entry. A mapping part is a network's
    state dict: each tensor's name and float32 bytes, in the names' order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Mapping):
            for name, tensor in sorted(part.items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        else:
            digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:16]
