"""`t2i serve` under load: many clients at once over loopback, against the same images made in one process.

A server (`t2i serve`, a child process on a free port, with a fresh data folder) gets `--clients`
concurrent clients, each sending `--requests` AUTOMATIC1111 `txt2img` calls one after another
(prompt i, seed i, the model's default sampler and steps). Reported: requests lost (no answer, or
an answer without its image), server errors (5xx), the latency of a call from sending to the image
(p50/p95: mostly time in the queue, since one worker runs the jobs one at a time), and images/s
over the whole load. The same images are then made in this process by the library, as `t2i
generate` makes them, one after another; the ratio of the two rates is the server's overhead (HTTP,
the queue's SQLite, writing each PNG durably, base64, previews), and every served image is compared
with its in-process twin.

Run:  python benchmarks/serve_load.py [--model emoji] [--clients 50] [--requests 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i import Pipeline
from t2i.serve.launch import ServerProcess

PROMPTS = ["red heart", "grinning face", "blue fish", "pizza", "rocket", "sun", "snowman", "dog face"]


def request_body(i: int) -> dict:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "seed": 1000 + i, "batch_size": 1}


def client(server: ServerProcess, first: int, count: int, results: list) -> None:
    for i in range(first, first + count):
        started = time.perf_counter()
        try:
            answer = server.post("/sdapi/v1/txt2img", request_body(i))
            results.append((i, time.perf_counter() - started, 200, answer["images"]))
        except urllib.error.HTTPError as error:
            results.append((i, time.perf_counter() - started, error.code, []))
        except OSError as error:  # no answer at all: lost
            results.append((i, time.perf_counter() - started, None, [str(error)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2, help="calls per client")
    args = parser.parse_args()
    total = args.clients * args.requests

    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "data", "--model", args.model,
                                                             "--max-queue", str(total)) as server:
        server.post("/sdapi/v1/txt2img", {"prompt": "warm up", "seed": 0})  # loads the model
        results: list = []
        threads = [threading.Thread(target=client, args=(server, c * args.requests, args.requests, results))
                   for c in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        served_seconds = time.perf_counter() - started
        stored = server.get("/api/jobs?limit=1")["total"] - 1  # less the warm-up

    lost = sum(1 for _, _, status, images in results if status is None or (status == 200 and len(images) != 1))
    errors = sum(1 for _, _, status, _ in results if status is not None and status >= 500)
    latencies = sorted(seconds for _, seconds, status, _ in results if status == 200)
    served = {i: images[0] for i, _, status, images in results if status == 200 and images}

    pipe = Pipeline.load(args.model)
    pipe(PROMPTS[0], seed=0, progress=False)  # warm up, as the server was
    started = time.perf_counter()
    direct = {i: pipe(request_body(i)["prompt"], seed=request_body(i)["seed"], progress=False)[0]
              for i in range(total)}
    direct_seconds = time.perf_counter() - started
    same = sum(np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(served[i]))).convert("RGB")),
                              np.asarray(direct[i])) for i in served)

    served_rate, direct_rate = len(served) / served_seconds, total / direct_seconds
    report = {"model": args.model, "clients": args.clients, "requests_per_client": args.requests,
              "requests": total, "answered": len(results), "jobs_stored": stored, "lost": lost,
              "server_errors": errors, "p50_latency_s": round(statistics.median(latencies), 2),
              "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
              "served_images_per_s": round(served_rate, 3), "in_process_images_per_s": round(direct_rate, 3),
              "server_overhead": f"{100 * (1 - served_rate / direct_rate):.1f}%",
              "identical_to_in_process": f"{same}/{len(served)}", "torch_threads": torch.get_num_threads(),
              "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
