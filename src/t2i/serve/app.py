"""The HTTP app: the page, our JSON API (`/api`), AUTOMATIC1111's (`/sdapi/v1`, see `a1111`), the
OpenAPI docs (`/docs`, served from the package: it works offline).

`create_app(ServerSettings(...))` wires the pieces: a `JobStore` under the data folder, the
`ModelShelf` (with the LoRAs and embeddings, `extra_networks`), the `EventHub` and the one `Worker`,
started and stopped with the app. Routes only translate: a request is checked whole by
`job_request.plan_job` and queued; errors are one line of JSON, `{"detail": ..., "limit": ...}`,
with a 4xx status.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..errors import UserError
from ..metadata import sampler_menu
from ..samplers import SAMPLERS
from .a1111 import a1111_router
from .events import TERMINAL, EventHub
from .extra_networks import ExtraNetworks
from .job_request import JobRequest, png_parameters, plan_job, takes_eta
from .limits import LimitError, Limits
from .shelf import ModelShelf
from .store import Job, JobStore
from .worker import Worker

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServerSettings:
    data_dir: Path
    models: tuple[str, ...] = ()
    models_dir: Path | None = None
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    cors_origins: tuple[str, ...] = ()
    device: str = "auto"
    dtype: str | None = None
    model_memory: int | None = None  # bytes of weights kept loaded; None: no limit
    lora_dir: Path | None = None  # LoRA files that prompts name as <lora:name:scale>
    embeddings_dir: Path | None = None  # textual-inversion embeddings added to every model that takes them


class Server:
    """What the routes share."""

    def __init__(self, settings: ServerSettings):
        self.settings, self.limits = settings, settings.limits
        self.shelf = ModelShelf(list(settings.models), settings.models_dir, settings.model_memory, settings.device,
                                settings.dtype, ExtraNetworks(settings.lora_dir, settings.embeddings_dir))
        self.store = JobStore(settings.data_dir, settings.limits)
        self.hub = EventHub()
        self.worker = Worker(self.store, self.shelf, self.hub, self.limits)

    def submit(self, request: JobRequest) -> Job:
        settings, uploads = plan_job(request, self.shelf, self.limits)
        job = self.store.add(settings, uploads)
        self.worker.notify()
        return job

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def render(self, job: Job) -> dict:
        """A job as the API shows it."""
        live = self.worker.live
        running = live is not None and live.job_id == job.id
        return {"id": job.id, "state": job.state, "position": self.store.position(job), "created": job.created,
                "started": job.started, "finished": job.finished, "settings": job.settings,
                "progress": {"step": live.step, "steps": live.steps} if running else None,
                "images": [{"url": f"/api/jobs/{job.id}/images/{i}.png", **image}
                           for i, image in enumerate(job.images)],
                "error": job.error, "cancel_requested": job.id in self.worker.cancelling}

    async def finished(self, job: Job) -> Job:
        """Wait until a job ends (AUTOMATIC1111's calls answer with the images)."""
        queue = self.hub.subscribe(job.id, watching=False)  # no previews are made for a wait alone
        try:
            job = self.job(job.id)
            while not job.finished_state:
                try:
                    event, _ = await asyncio.wait_for(queue.get(), timeout=5.0)
                except asyncio.TimeoutError:
                    event = None
                job = self.job(job.id) if event in (*TERMINAL, None) else job
            return job
        finally:
            self.hub.unsubscribe(job.id, queue)


class BodyLimit:
    """Refuse a body past `Limits.max_body_bytes` from its Content-Length, before any of it is read
    (a chunked body, whose length is unknown until read, is refused too; no length and no chunks, as
    `curl -X POST` sends, is an empty body)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"" if b"transfer-encoding" in headers else b"0").decode()
            refusal = None
            if not length.isdigit():
                refusal = one_line(411, "send the body with its Content-Length (a chunked body is not read)")
            elif int(length) > self.limit:
                refusal = one_line(413, f"the request is {length} bytes, more than this server takes "
                                   f"({self.limit}: two uploads of max_upload_bytes)", "max_upload_bytes")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class PngInfoRequest(BaseModel):
    image: str  # base64 PNG


class NotFound(Exception):
    pass


class Unauthorized(Exception):
    pass


def one_line(status: int, message: str, limit: str | None = None) -> JSONResponse:
    return JSONResponse({"detail": message, **({"limit": limit} if limit else {})}, status_code=status)


def validation_message(error: RequestValidationError) -> str:
    """Pydantic's list of problems as one line: "steps: Input should be a valid integer; …"."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"] if part != "body")
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


def create_app(settings: ServerSettings) -> FastAPI:
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start()
        yield
        if server.worker.stop():  # else the worker still holds the store; the process's end closes both
            server.store.close()

    app = FastAPI(title="t2i", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Text-to-image diffusion: our job API (/api) and AUTOMATIC1111's (/sdapi/v1).")
    app.state.server = server
    app.add_middleware(BodyLimit, limit=settings.limits.max_body_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError):
        return one_line(422, str(error))

    @app.exception_handler(LimitError)
    async def limit_error(request: Request, error: LimitError):
        return one_line(error.status, str(error), error.limit)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound):
        return one_line(404, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return one_line(422, validation_message(error))

    def authorize(request: Request) -> None:
        """With a token, every API call carries it: `Authorization: Bearer T`, or `?token=T` where a
        browser cannot set headers (EventSource, <img>)."""
        if settings.token is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
            or request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), settings.token.encode()):
            raise Unauthorized()

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, error: Unauthorized):
        return JSONResponse({"detail": "this server needs its token: send 'Authorization: Bearer TOKEN' "
                             "(or ?token=TOKEN on the page's address)"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    api = APIRouter(prefix="/api", dependencies=[Depends(authorize)])

    @api.get("/models")
    def models():
        return {"default": server.shelf.default, "models": server.shelf.list()}

    @api.get("/samplers")
    def samplers():
        return {"samplers": [{**entry, "eta": takes_eta(entry["sampler"])} for entry in sampler_menu(SAMPLERS)]}

    @api.get("/loras")
    def loras():
        """The LoRA files a prompt can name as <lora:name:scale> (`--lora-dir`)."""
        return {"loras": list(server.shelf.extras.loras)}

    @api.get("/embeddings")
    def embeddings():
        """The embeddings (`--embeddings-dir`), and for each loaded model those it could not take, and why."""
        return {"embeddings": list(server.shelf.extras.embeddings),
                "skipped": {model: server.shelf.skipped[model] for model in list(server.shelf.loaded)}}

    @api.get("/limits")
    def limits():
        return server.limits.as_dict()

    @api.post("/jobs", status_code=202)
    def submit(request: JobRequest):
        return server.render(server.submit(request))

    @api.get("/jobs")
    def history(limit: int = 20, offset: int = 0):
        jobs, total = server.store.history(max(1, min(limit, 100)), max(0, min(offset, 2**62)))  # SQLite's int
        return {"jobs": [server.render(job) for job in jobs], "total": total}

    @api.get("/queue")
    def queue():
        return {"jobs": [server.render(job) for job in server.store.queue()]}

    @api.get("/jobs/{job_id}")
    def job(job_id: str):
        return server.render(server.job(job_id))

    @api.delete("/jobs/{job_id}")
    def cancel(job_id: str):
        job = server.job(job_id)
        if not server.worker.cancel(job):
            return one_line(409, f"job {job_id!r} has already {'finished' if job.state == 'done' else job.state}")
        return server.render(server.job(job_id))

    @api.get("/jobs/{job_id}/images/{index}.png")
    def image(job_id: str, index: int):
        job = server.job(job_id)
        if not 0 <= index < len(job.images):
            raise NotFound(f"job {job_id!r} has no image {index}")
        return FileResponse(server.store.image_path(job_id, index), media_type="image/png")

    @api.get("/jobs/{job_id}/events")
    async def events(job_id: str):
        server.job(job_id)  # 404 before the stream starts
        return StreamingResponse(event_stream(server, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.post("/png-info")
    def png_info(request: PngInfoRequest):
        parameters, infotext = png_parameters(request.image, server.limits)
        return {"parameters": parameters, "infotext": infotext}

    app.include_router(api)
    app.include_router(a1111_router(server, authorize))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="t2i API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/icon.svg")

    return app


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(server: Server, job_id: str):
    """queued → started → progress … → done | failed | cancelled, then the stream ends. The listener
    subscribes before the job's state is read, so no event between the two is missed."""
    queue = server.hub.subscribe(job_id)
    try:
        job = server.job(job_id)
        if job.finished_state:
            yield sse(job.state, server.render(job))
            return
        if job.state == "queued":
            yield sse("queued", {"position": server.store.position(job)})
        started = job.state == "running"
        if started:
            yield sse("started", {})
        while True:
            try:
                event, data = await asyncio.wait_for(queue.get(), timeout=15.0)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"  # a comment line: proxies and clients keep the stream open
                job = server.job(job_id)
                if job.finished_state:  # ended while no event could reach us (a restart of the worker)
                    yield sse(job.state, server.render(job))
                    return
                continue
            if event == "started":
                if started:
                    continue
                started = True
            elif event == "progress" and not started:
                started = True
                yield sse("started", {})
            if event in TERMINAL:
                yield sse(event, server.render(server.job(job_id)))
                return
            yield sse(event, data)
    finally:
        server.hub.unsubscribe(job_id, queue)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t2i")
    except PackageNotFoundError:
        return "unknown"
