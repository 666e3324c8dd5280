"""`t2i serve` in a child process on a free loopback port: what the browser test, the restart test and
the load benchmark drive, as a user's client would, over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`with ServerProcess(data_dir, "--model", "emoji") as server:` a running server at `server.url`,
    stopped at the end; `kill()` stops it as SIGKILL would (nothing gets to clean up)."""

    def __init__(self, data_dir: str | Path, *arguments: str, port: int | None = None, threads: int | None = None,
                 log: str | Path | None = None):
        self.data_dir, self.arguments = Path(data_dir), arguments
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else self.data_dir.with_name(self.data_dir.name + "-server.log")
        self.env = {key: value for key, value in os.environ.items() if key != "T2I_TOKEN"}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "ServerProcess":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "t2i", "serve", "--port", str(self.port),
                                             "--data-dir", str(self.data_dir), *self.arguments],
                                            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"t2i serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.get("/api/models", timeout=2)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"t2i serve did not answer in {timeout} s: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)

    def get(self, path: str, timeout: float = 10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.load(response)

    def post(self, path: str, body: dict, timeout: float = 600):
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
