"""A `t2i serve` process killed with SIGKILL while one job runs and others wait: at the next start the
waiting jobs run, the interrupted one runs again, the finished one is untouched, and no result file
is partial."""

from __future__ import annotations

import sqlite3
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from t2i.serve.launch import ServerProcess  # noqa: E402


def states(data_dir) -> dict[str, str]:
    with sqlite3.connect(data_dir / "jobs.sqlite") as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


def test_jobs_survive_a_sigkill_of_the_server(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, "--model", "emoji", threads=1).start()
    try:
        short = {"prompt": "red heart", "steps": 3, "seed": 1, "num_images": 2}
        first = server.post("/api/jobs", short)["id"]
        long = server.post("/api/jobs", {**short, "steps": 150})["id"]
        waiting = [server.post("/api/jobs", {**short, "seed": seed})["id"] for seed in (2, 3)]
        deadline = time.monotonic() + 120
        while (server.get(f"/api/jobs/{long}")["progress"] or {}).get("step", 0) < 5:
            assert time.monotonic() < deadline, "the long job never ran"
            time.sleep(0.05)
        server.kill()
    finally:
        server.kill()
    before = states(data)
    assert before == {first: "done", long: "running", **{job: "queued" for job in waiting}}
    done_bytes = [path.read_bytes() for path in sorted((data / "images" / first).iterdir())]
    for path in (data / "images").rglob("*.png"):
        Image.open(path).load()  # every file under its final name is whole

    with ServerProcess(data, "--model", "emoji", threads=1) as server:
        deadline = time.monotonic() + 300
        while any(state != "done" for state in states(data).values()):
            assert time.monotonic() < deadline, states(data)
            time.sleep(0.2)
        jobs = {job_id: server.get(f"/api/jobs/{job_id}") for job_id in before}
    assert all(len(job["images"]) == 2 for job in jobs.values())
    assert [path.read_bytes() for path in sorted((data / "images" / first).iterdir())] == done_bytes
    for path in (data / "images").rglob("*.png"):
        Image.open(path).load()
