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
        # per job: (loop, queue, watching); a listener not watching waits for the end only (no previews for it)
        self.listeners: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue, bool]]] = defaultdict(set)
        self.lock = threading.Lock()

    def subscribe(self, job_id: str, watching: bool = True) -> asyncio.Queue:
        """A queue of (event, data) for `job_id`; call from the event loop, before reading the job's state.
        `watching`: someone looks at its progress (the worker makes previews while anyone does)."""
        queue: asyncio.Queue = asyncio.Queue()
        with self.lock:
            self.listeners[job_id].add((asyncio.get_running_loop(), queue, watching))
        return queue

    def unsubscribe(self, job_id: str, queue: asyncio.Queue) -> None:
        with self.lock:
            self.listeners[job_id] = {entry for entry in self.listeners[job_id] if entry[1] is not queue}
            if not self.listeners[job_id]:
                del self.listeners[job_id]

    def listening(self, job_id: str) -> bool:
        """Whether anyone watches the job's progress."""
        with self.lock:
            return any(watching for _, _, watching in self.listeners.get(job_id, ()))

    def publish(self, job_id: str, event: str, data: dict) -> None:
        """Send to every listener of `job_id`; from any thread."""
        with self.lock:
            listeners = list(self.listeners.get(job_id, ()))
        for loop, queue, _ in listeners:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (event, data))
            except RuntimeError:  # that loop has closed: its listener is gone
                pass
