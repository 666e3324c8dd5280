"""The one worker: it runs jobs in queue order, one at a time.

On a CPU one job already uses every core, so jobs run one after another and the queue absorbs load.
While a job samples, the worker publishes a progress event before each step, and stops at the next
step when the job is cancelled (or, interrupted as AUTOMATIC1111 interrupts, finishes it with the image
its latest step foresees, x̂_0). A preview of x̂_0 (decoded: as costly as a few U-Net steps on a small
model) is made at PREVIEWS points of the job, and only while someone watches: a listener to the
job's events, or a poll of AUTOMATIC1111's /progress in the last WATCHED seconds. Images are written
whole (`save_png`) before the job is marked done.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass

from ..errors import OUT_OF_MEMORY, UserError, out_of_memory
from ..images import PNG_PARAMETERS_KEY, read_image, save_png
from ..metadata import lora_tags
from ..sampling import StopSampling
from .events import EventHub
from .job_request import pipeline_arguments
from .limits import LimitError, Limits
from .shelf import ModelShelf
from .store import Job, JobStore

log = logging.getLogger("t2i.serve")
PREVIEWS = 8  # previews per job: enough to watch it form, few enough that decoding them costs little
WATCHED = 5.0


class Cancelled(Exception):
    """Raised at a step boundary to stop a job whose cancellation was asked for."""


@dataclass
class Live:
    """The running job as it is now: what AUTOMATIC1111's /progress and our job JSON report."""

    job_id: str
    step: int = 0
    steps: int = 0
    started: float = 0.0
    preview: str | None = None  # data: URL of the latest preview PNG
    interrupted: bool = False  # stopped early, keeping its x̂_0


class Worker:
    def __init__(self, store: JobStore, shelf: ModelShelf, hub: EventHub, limits: Limits):
        self.store, self.shelf, self.hub, self.limits = store, shelf, hub, limits
        self.live: Live | None = None
        self.polled = 0.0  # when AUTOMATIC1111's /progress last asked for the current image
        self.cancelling: dict[str, bool] = {}  # job id: whether it keeps its x̂_0 as images (an A1111 interrupt)
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.loop, name="t2i-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> bool:
        """Stop after the current step: the running job is left running, to run again at the next start.
        False if the worker is still busy after 30 s (a model loading): the store must then stay open for it."""
        self.stopping.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        return not self.thread.is_alive()

    def notify(self) -> None:
        self.wake.set()

    def cancel(self, job: Job, keep_images: bool = False) -> bool:
        """Cancel a queued job now, or ask the running one to stop at its next step (with `keep_images`,
        ending as cancelled but with the images of its x̂_0 then). False if finished."""
        if self.store.cancel_queued(job.id):
            self.hub.publish(job.id, "cancelled", {})
            return True
        if self.store.get(job.id).state == "running":  # maybe not yet live: then it stops at its first step
            self.cancelling[job.id] = keep_images
            if self.store.get(job.id).state != "running":  # it ended meanwhile, and its run let go of its id
                self.cancelling.pop(job.id, None)
                return False
            return True
        return False

    def loop(self) -> None:
        while not self.stopping.is_set():
            job = None
            try:
                job = self.store.take()
                if job is None:
                    self.wake.wait(timeout=1.0)
                    self.wake.clear()
                    continue
                self.run(job)
            except Exception as error:  # noqa: BLE001 - the store failed (a full disk): the worker goes on
                log.exception("the worker could not take or finish a job")
                self.live = None
                if job is not None:
                    self.give_up(job, error)
                self.stopping.wait(timeout=1.0)

    def give_up(self, job: Job, error: Exception) -> None:
        """Mark a job whose result could not be stored failed, if the store lets it (else a restart queues it)."""
        try:
            self.store.end(job.id, "failed", f"its result could not be stored ({error}); the server's log has more")
            self.hub.publish(job.id, "failed", {"error": "its result could not be stored"})
        except Exception:  # noqa: BLE001 - the store is still failing
            log.exception("job %s is left running until the next start", job.id)

    def run(self, job: Job) -> None:
        self.live = Live(job.id, started=time.time())
        self.hub.publish(job.id, "started", {})
        try:
            images = self.generate(job)
        except Cancelled:
            if self.stopping.is_set() and job.id not in self.cancelling:  # the server stops, not the job: it runs
                # first at the next start (one cancelled or interrupted meanwhile ends cancelled)
                self.store.requeue(job.id)
                return
            self.finish(job, "cancelled")
        except (UserError, LimitError) as error:
            self.finish(job, "failed", str(error), user_error=True)
        except Exception as error:  # noqa: BLE001 - a bug fails its job, not the server
            if out_of_memory(error):
                self.finish(job, "failed", OUT_OF_MEMORY)
                return
            log.exception("job %s failed", job.id)
            self.finish(job, "failed", f"internal error, a bug in t2i ({type(error).__name__}: {error}); the "
                        "server's log has the traceback")
        else:
            self.finish(job, "cancelled" if self.live.interrupted else "done", images=images)
        finally:
            self.cancelling.pop(job.id, None)

    def finish(self, job: Job, state: str, error: str | None = None, images: list[dict] | None = None,
               user_error: bool = False) -> None:
        self.store.end(job.id, state, error, images, user_error)
        self.live = None
        self.hub.publish(job.id, state, {"error": error} if error else {})

    def generate(self, job: Job) -> list[dict]:
        settings = job.settings
        uploads = {name: read_image(self.store.input_path(job.id, name), "L" if name == "mask" else "RGB")
                   for name in job.inputs}
        pipe = self.shelf.get(settings["model"], lora_tags(settings["prompt"])[1])
        if not uploads:  # a side left to a model that had not loaded at the request (`plan_job`)
            self.limits.check_size(settings["width"] or pipe.image_size, settings["height"] or pipe.image_size)
        every = max(1, (settings["steps"] or pipe.defaults["steps"]) // PREVIEWS)

        def on_step(i: int, steps: int, x0) -> None:
            if self.stopping.is_set() or self.cancelling.get(job.id) is False:
                raise Cancelled
            if self.cancelling.get(job.id):
                self.live.interrupted = True
                raise StopSampling
            self.live.step, self.live.steps = i, steps
            event = {"step": i, "steps": steps}
            watched = self.hub.listening(job.id) or time.time() - self.polled < WATCHED
            if i > 0 and i % every == 0 and watched:
                previews = x0()
                if previews:
                    self.live.preview = event["preview"] = data_url(previews[0])
            self.hub.publish(job.id, "progress", event)

        images = pipe(**pipeline_arguments(settings, uploads), progress=on_step)
        results = []
        for i, image in enumerate(images):
            save_png(image, self.store.image_path(job.id, i))
            parameters = image.info[PNG_PARAMETERS_KEY]
            results.append({"seed": parameters["seed"], "parameters": parameters})
        return results


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
