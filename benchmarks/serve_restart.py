"""`t2i serve` killed with SIGKILL mid-job, then started again: how many jobs were queued, running
and done at the kill, how many are done after the restart, and whether any was lost or any image
file is unreadable.

`--jobs` jobs of `--images` images each are queued at once; when the `--kill-at`-th job (counting
from 1) is `--kill-step` steps into its sampling, the server gets SIGKILL. The jobs table is then read
straight from the SQLite file, the server started again on the same data folder, and every job
waited for.

Run:  python benchmarks/serve_restart.py [--jobs 10] [--images 2] [--kill-at 4] [--kill-step 10]
"""

from __future__ import annotations

import argparse
import collections
import json
import sqlite3
import tempfile
import time
from pathlib import Path

from PIL import Image

from t2i.serve.launch import ServerProcess


def states(data: Path) -> dict[str, str]:
    with sqlite3.connect(data / "jobs.sqlite") as db:
        return dict(db.execute("SELECT id, state FROM jobs").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--kill-at", type=int, default=4)
    parser.add_argument("--kill-step", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        server = ServerProcess(data, "--model", "emoji").start()
        try:
            ids = [server.post("/api/jobs", {"prompt": "red heart", "seed": i, "num_images": args.images})["id"]
                   for i in range(args.jobs)]
            target = ids[args.kill_at - 1]
            while (server.get(f"/api/jobs/{target}")["progress"] or {}).get("step", 0) < args.kill_step:
                time.sleep(0.02)
            server.kill()
        finally:
            server.kill()
        before = collections.Counter(states(data).values())
        started = time.perf_counter()
        with ServerProcess(data, "--model", "emoji") as server:
            while any(state in ("queued", "running") for state in states(data).values()):
                time.sleep(0.1)
            jobs = [server.get(f"/api/jobs/{job_id}") for job_id in ids]
        after = collections.Counter(job["state"] for job in jobs)
        files = list((data / "images").rglob("*.png"))
        unreadable = 0
        for path in files:
            try:
                Image.open(path).load()
            except OSError:
                unreadable += 1
        report = {"jobs": args.jobs, "images_per_job": args.images, "at_kill": dict(before),
                  "after_restart": dict(after), "restart_to_all_done_s": round(time.perf_counter() - started, 1),
                  "lost": args.jobs - sum(after.values()), "images_listed": sum(len(j["images"]) for j in jobs),
                  "png_files": len(files), "unreadable_png": unreadable}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
