"""The job store: every job and its results under the server's data folder, kept across restarts.

A job is a row of an SQLite database (`jobs.sqlite`, the standard library's, in WAL mode with full
syncs) and its images are PNG files beside it (`images/<id>/<i>.png`, written whole by
`files.durable_write` before the row that names them is committed), so that a server killed at any
instant leaves each job queued, running, or finished with every file it lists. At start the jobs
that were running when the server stopped go back to the front of the queue; one interrupted twice
is marked failed with the reason, not run a third time. A job can be forgotten (AUTOMATIC1111's calls
that do not ask to save their images): its row goes first, then its files; files that a stop left
without a row are removed at the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import discard, durable_write_bytes
from .limits import LimitError, Limits

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 2  # a job that was running at two stops is more likely the cause than the victim

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- queue order
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,                  -- JSON: what to make, its seed resolved
    inputs TEXT NOT NULL DEFAULT '[]',       -- JSON: names of the uploaded images kept in inputs/<id>/
    images TEXT NOT NULL DEFAULT '[]',       -- JSON: [{"seed", "parameters"}] of images/<id>/<i>.png
    error TEXT,
    user_error INTEGER NOT NULL DEFAULT 0,   -- 1: it failed for the request's mistake, not the server's
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
"""


@dataclass
class Job:
    id: str
    seq: int
    state: str
    settings: dict
    created: float
    inputs: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    error: str | None = None
    user_error: bool = False  # failed for a mistake in the request (a UserError or LimitError), not a bug
    attempts: int = 0
    started: float | None = None
    finished: float | None = None

    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED


class JobStore:
    """Jobs in `data_dir`: add, take the next, finish, cancel, list. Safe to call from any thread."""

    def __init__(self, data_dir: str | Path, limits: Limits = Limits()):
        self.root, self.limits = Path(data_dir), limits
        self.root.mkdir(parents=True, exist_ok=True)
        self.owner = own_folder(self.root)  # a second server here would run the first one's jobs again
        self.lock = threading.Lock()
        path = self.root / "jobs.sqlite"
        try:
            self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut, not just a kill
            self.db.executescript(SCHEMA)
            if "user_error" not in {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}:  # older
                self.db.execute("ALTER TABLE jobs ADD COLUMN user_error INTEGER NOT NULL DEFAULT 0")
            self.recovered = self.recover()
            self.sweep()
        except sqlite3.DatabaseError as error:  # a damaged file, or a folder of that name
            if hasattr(self, "db"):
                self.db.close()
            os.close(self.owner)
            raise UserError(f"{str(path)!r} is not a job store this server can read ({error}): move it aside to "
                            "start with an empty queue and history, or give another --data-dir") from None

    # -- files --------------------------------------------------------------------------------
    def image_path(self, job_id: str, index: int) -> Path:
        return self.root / "images" / job_id / f"{index}.png"

    def input_path(self, job_id: str, name: str) -> Path:
        return self.root / "inputs" / job_id / f"{name}.png"

    # -- the life of a job --------------------------------------------------------------------
    def add(self, settings: dict, inputs: dict[str, bytes]) -> Job:
        """Queue a job; its uploads (PNG bytes by name) are on disk before the job is."""
        job_id = secrets.token_hex(6)
        with self.lock:  # the count and the insert together, so the queue never passes its limit
            waiting = self.db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
            if waiting >= self.limits.max_queue:
                raise LimitError("max_queue", f"{waiting} jobs are waiting, this server's max_queue: "
                                 "try again when some have run", status=429)
            for name, data in inputs.items():
                self.input_path(job_id, name).parent.mkdir(parents=True, exist_ok=True)
                durable_write_bytes(self.input_path(job_id, name), data)
            self.db.execute("INSERT INTO jobs (id, state, settings, inputs, created) VALUES (?, 'queued', ?, ?, ?)",
                            (job_id, json.dumps(settings), json.dumps(list(inputs)), time.time()))
        return self.get(job_id)

    def take(self) -> Job | None:
        """The next queued job, now marked running; None if none waits."""
        with self.lock:
            row = self.db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 WHERE id = ?",
                            (time.time(), row["id"]))
        return self.get(row["id"])

    def end(self, job_id: str, state: str, error: str | None = None, images: list[dict] | None = None,
            user_error: bool = False) -> None:
        """Finish a job: done (the files of `images` written already), failed with `error` (the request's
        mistake if `user_error`), or cancelled."""
        with self.lock:
            self.db.execute("UPDATE jobs SET state = ?, error = ?, user_error = ?, images = ?, finished = ? "
                            "WHERE id = ?", (state, error, user_error, json.dumps(images or []), time.time(), job_id))

    def requeue(self, job_id: str) -> None:
        """Put a running job back at the front of the queue, not counting the attempt (a server stopping)."""
        with self.lock:
            self.db.execute("UPDATE jobs SET state = 'queued', started = NULL, attempts = attempts - 1 "
                            "WHERE id = ? AND state = 'running'", (job_id,))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job if it is still queued (atomically: the worker cannot take it meanwhile)."""
        with self.lock:
            cursor = self.db.execute("UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? "
                                     "AND state = 'queued'", (time.time(), job_id))
        return cursor.rowcount == 1

    def forget(self, job_id: str) -> None:
        """Remove a finished job, its images and its uploads: the row first, so no reader finds it without them."""
        with self.lock:
            self.db.execute("DELETE FROM jobs WHERE id = ? AND state IN ('done', 'failed', 'cancelled')", (job_id,))
        for folder in ("images", "inputs"):
            discard(self.root / folder / job_id)

    def sweep(self) -> None:
        """Remove the image and upload folders of no job: a forget or an `add` cut short by a stop left them."""
        with self.lock:
            kept = {row["id"] for row in self.db.execute("SELECT id FROM jobs")}
        for folder in ("images", "inputs"):
            for path in (self.root / folder).glob("*"):
                if path.name not in kept:
                    discard(path)

    def recover(self) -> list[str]:
        """Put back the jobs a stopped server was running (or fail those interrupted MAX_ATTEMPTS times)."""
        rows = self.db.execute("SELECT id, attempts FROM jobs WHERE state = 'running'").fetchall()
        for row in rows:
            if row["attempts"] >= MAX_ATTEMPTS:
                self.end(row["id"], "failed", f"the server stopped {row['attempts']} times while this job ran "
                         "(killed, or out of memory?): it is not run again")
            else:
                self.db.execute("UPDATE jobs SET state = 'queued', started = NULL WHERE id = ?", (row["id"],))
        return [row["id"] for row in rows]

    # -- reading ------------------------------------------------------------------------------
    # Reads take the lock too: threads share one connection, whose cached statements' parameters two threads
    # could otherwise bind over each other's.
    def get(self, job_id: str) -> Job | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_of(row)

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, and so on; None for a job not queued."""
        if job.state != "queued":
            return None
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= ?",
                                   (job.seq,)).fetchone()[0]

    def history(self, limit: int, offset: int) -> tuple[list[Job], int]:
        """Jobs newest first, and how many there are."""
        with self.lock:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            total = self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        return [job_of(row) for row in rows], total

    def queue(self) -> list[Job]:
        """The running job, then the queued ones in the order they will run."""
        with self.lock:
            rows = self.db.execute("SELECT * FROM jobs WHERE state IN ('running', 'queued') "
                                   "ORDER BY state = 'queued', seq").fetchall()
        return [job_of(row) for row in rows]

    def close(self) -> None:
        self.db.close()
        os.close(self.owner)  # the folder's lock goes with it


def own_folder(root: Path) -> int:
    """Hold the data folder's lock (`root/lock`, released when the process ends, however it ends), or refuse in
    one line naming the server that holds it."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"the data folder {str(root)!r} is in use by another t2i serve (process {holder}): stop it, "
                        "or give this one its own --data-dir") from None
    pid = f"{os.getpid()}\n".encode()
    os.pwrite(fd, pid, 0)
    os.ftruncate(fd, len(pid))
    return fd


def job_of(row: sqlite3.Row) -> Job:
    return Job(row["id"], row["seq"], row["state"], json.loads(row["settings"]), row["created"],
               json.loads(row["inputs"]), json.loads(row["images"]), row["error"], bool(row["user_error"]),
               row["attempts"], row["started"], row["finished"])
