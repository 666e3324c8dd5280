"""`t2i serve` under load: many clients at once over loopback, against the same images made in one process.

A server (`t2i serve`, a child process on a free port, with a fresh data folder) gets `--clients`
concurrent clients, each sending `--requests` AUTOMATIC1111 `txt2img` calls one after another
(prompt i, seed i, the model's default sampler and steps). Reported: requests lost (no answer, or
an answer without its image), server errors (5xx), the latency of a call from sending to the image
(p50/p95: mostly time in the queue, since one worker runs the jobs one at a time), and images/s
over the whole load. The same images are then made in this process by the library, as `t2i
generate` makes them, one after another; the ratio of the two rates is the server's overhead (HTTP,
the queue's SQLite, writing each PNG durably, base64, previews), and every served image is compared
with its in-process twin. The two alternate for `--rounds` rounds (the server stays up), so that a
change in the machine's speed falls on both; the overhead reported is the median round's.

Run:  python benchmarks/serve_load.py [--model emoji] [--clients 50] [--requests 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
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


def served_round(server: ServerProcess, clients: int, requests: int) -> dict:
    """One burst of `clients` threads, each making `requests` calls one after another."""
    results: list = []
    threads = [threading.Thread(target=client, args=(server, c * requests, requests, results)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    lost = sum(1 for _, _, status, images in results if status is None or (status == 200 and len(images) != 1))
    errors = sum(1 for _, _, status, _ in results if status is not None and status >= 500)
    latencies = sorted(seconds for _, seconds, status, _ in results if status == 200)
    served = {i: images[0] for i, _, status, images in results if status == 200 and images}
    return {"seconds": seconds, "answered": len(results), "lost": lost, "errors": errors, "latencies": latencies,
            "served": served}


def in_process_round(pipe: Pipeline, total: int) -> tuple[float, dict]:
    """The same images made here, one after another, as `t2i generate` makes them."""
    started = time.perf_counter()
    images = {i: pipe(request_body(i)["prompt"], seed=request_body(i)["seed"], progress=False)[0]
              for i in range(total)}
    return time.perf_counter() - started, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="emoji")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2, help="calls per client")
    parser.add_argument("--rounds", type=int, default=3, help="served and in-process bursts, taking turns")
    args = parser.parse_args()
    total = args.clients * args.requests

    rounds = []
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(Path(tmp) / "data", "--model", args.model,
                                                             "--max-queue", str(total)) as server:
        server.post("/sdapi/v1/txt2img", {"prompt": "warm up", "seed": 0})  # loads the model
        pipe = Pipeline.load(args.model)
        pipe(PROMPTS[0], seed=0, progress=False)  # warm up, as the server was
        for _ in range(args.rounds):
            served = served_round(server, args.clients, args.requests)
            direct_seconds, direct = in_process_round(pipe, total)
            same = sum(np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(image))).convert("RGB")),
                                      np.asarray(direct[i])) for i, image in served["served"].items())
            served_rate, direct_rate = len(served["served"]) / served["seconds"], total / direct_seconds
            rounds.append({**served, "served_rate": served_rate, "direct_rate": direct_rate, "same": same,
                           "overhead": 1 - served_rate / direct_rate})
        stored = server.get("/api/jobs?limit=1")["total"] - 1  # less the warm-up

    middle = sorted(rounds, key=lambda r: r["overhead"])[len(rounds) // 2]
    latencies = middle["latencies"]
    report = {"model": args.model, "clients": args.clients, "requests_per_client": args.requests,
              "rounds": args.rounds, "requests": total * args.rounds,
              "answered": sum(r["answered"] for r in rounds), "jobs_stored": stored,
              "lost": sum(r["lost"] for r in rounds), "server_errors": sum(r["errors"] for r in rounds),
              "p50_latency_s": round(statistics.median(latencies), 2),
              "p95_latency_s": round(latencies[math.ceil(0.95 * len(latencies)) - 1], 2),  # nearest rank
              "served_images_per_s": round(middle["served_rate"], 3),
              "in_process_images_per_s": round(middle["direct_rate"], 3),
              "server_overhead": f"{100 * middle['overhead']:.1f}%",
              "server_overhead_by_round": [f"{100 * r['overhead']:.1f}%" for r in rounds],
              "identical_to_in_process": f"{sum(r['same'] for r in rounds)}/{sum(len(r['served']) for r in rounds)}",
              "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
