"""Events of running jobs, from the worker thread to the requests that listen (server-sent events).

The worker publishes from its own thread; each listener is an asyncio queue on the server's event
loop, fed through `call_soon_threadsafe`, so the loop never blocks on the worker and no event a
listener subscribed to is lost or reordered.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

TERMINAL = ("done", "failed", "cancelled")


class EventHub:
    def __init__(self):
        self.listeners: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = defaultdict(set)
        self.lock = threading.Lock()

    def subscribe(self, job_id: str) -> asyncio.Queue:
        """A queue of (event, data) for `job_id`; call from the event loop, before reading the job's state."""
        queue: asyncio.Queue = asyncio.Queue()
        with self.lock:
            self.listeners[job_id].add((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        with self.lock:
            self.listeners[job_id] = {entry for entry in self.listeners[job_id] if entry[1] is not queue}
            if not self.listeners[job_id]:
                del self.listeners[job_id]

    def listening(self, job_id: str) -> bool:
        with self.lock:
            return bool(self.listeners.get(job_id))

    def publish(self, job_id: str, event: str, data: dict) -> None:
        """Send to every listener of `job_id`; from any thread."""
        with self.lock:
            listeners = list(self.listeners.get(job_id, ()))
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (event, data))
            except RuntimeError:  # that loop has closed: its listener is gone
                pass
