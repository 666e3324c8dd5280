"""AUTOMATIC1111's web-UI API (`/sdapi/v1/...`), so that scripts and clients written for it work here.

Its calls are synchronous: `txt2img` and `img2img` queue a job like any other and answer when it
ends, with the images as base64 PNGs, the request as `parameters`, and `info`, a JSON string of
what was made (seeds, infotexts). Its field names map onto ours (`cfg_scale` → cfg,
`denoising_strength` → strength, `batch_size × n_iter` → images, `sampler_name` "DPM++ 2M Karras"
→ dpmpp_2m on Karras σ). Fields it has and we do not (`restore_faces`, `tiling`, hires fix …) are
ignored, as its own API ignores unknown ones, and so is `eta` for a sampler without one, as it does
(clients send theirs with any sampler). As there, a call keeps nothing unless it sends `"save_images":
true` (its job is forgotten once answered; with it, the job stays in the history like the page's),
and `"send_images": false` answers without the images. One difference: where it defaults to 512×512,
50 steps and cfg 7, we default to the chosen model's own size and settings.
"""

from __future__ import annotations

import base64
import json
import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, JsonValue

from ..convert.embedding_files import read_embedding
from ..checks import whole_number
from ..errors import UserError
from ..metadata import a1111_sampler, from_a1111_sampler, infotext_fields, sampler_menu, to_infotext
from ..samplers import SAMPLERS
from .job_request import (MAX_CLIP_SKIP, JobRequest, decode_upload, image_sides, png_bytes, png_parameters,
                          sampler_that_runs, takes_eta)
from .store import Job


class A1111Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # 1e999, NaN: `parameters` could not echo them

    prompt: str | None = ""  # None, as clients that send every field write the unset ones, is the default too
    negative_prompt: str | None = ""
    steps: int | None = None
    cfg_scale: float | None = None
    seed: int | None = -1  # None, as clients that send every field write it, is -1 too
    width: int | None = None
    height: int | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older name of sampler_name
    scheduler: str | None = None  # "Karras", "Automatic", …: newer versions split it from the sampler's name
    batch_size: int | None = 1
    n_iter: int | None = 1
    eta: float | None = None
    override_settings: dict[str, JsonValue] | None = None
    save_images: bool | None = False  # kept in the server's history (AUTOMATIC1111: written to its outputs folder)
    send_images: bool | None = True

    @property
    def overrides(self) -> dict:
        """The override_settings that we take, checked (`our_options`)."""
        return our_options(self.override_settings or {})


class Img2ImgRequest(A1111Request):
    init_images: list[str] | None = None
    mask: str | None = None
    denoising_strength: float | None = 0.75
    inpainting_mask_invert: int | None = 0


def sampler_of(name: str | None, scheduler: str | None) -> tuple[str | None, str | None]:
    """(our sampler, spacing) of AUTOMATIC1111's sampler name ("Euler a", "DPM++ 2M Karras") or ours, and
    of its separate `scheduler` ("Karras")."""
    sampler, spacing = from_a1111_sampler(name) if name else (None, None)
    if sampler is not None and sampler not in SAMPLERS:
        labels = [entry["label"] for entry in sampler_menu(SAMPLERS)]
        raise UserError(f"unknown sampler_name {name!r}; choose one of: {', '.join(labels)}")
    return sampler, "karras" if (scheduler or "").lower() == "karras" else spacing


def our_options(options: dict) -> dict:
    """AUTOMATIC1111's options that we take, from /options or a request's override_settings, checked: the model
    (its title, as /sd-models lists them) and "CLIP_stop_at_last_layers"; null is not given, the others are ignored."""
    taken = {name: options[name] for name in ("sd_model_checkpoint", "CLIP_stop_at_last_layers")
             if options.get(name) is not None}
    if not isinstance(taken.get("sd_model_checkpoint", ""), str):
        raise UserError(f"sd_model_checkpoint must be a model's title, as GET /sdapi/v1/sd-models lists them, got "
                        f"{taken['sd_model_checkpoint']!r}")
    if "CLIP_stop_at_last_layers" in taken:
        taken["CLIP_stop_at_last_layers"] = whole_number("CLIP_stop_at_last_layers", taken["CLIP_stop_at_last_layers"],
                                                         1, MAX_CLIP_SKIP)
    return taken


def job_request(body: A1111Request, model: dict, image: str | None = None, mask: str | None = None,
                strength: float | None = None, clip_skip: int = 1) -> JobRequest:
    """Our job for an AUTOMATIC1111 request to `model` (what `ModelShelf.info` knows of it); `clip_skip` is the server's
    "CLIP_stop_at_last_layers" option, which the request's override_settings may change (1, the last layer, is
    every model's own)."""
    sampler, spacing = sampler_of(body.sampler_name or body.sampler_index, body.scheduler)
    # the server's option is every CLIP model's (clients set it once); a request's own override is the request's
    clip_skip = body.overrides.get("CLIP_stop_at_last_layers", 1 if model.get("clip") is False else clip_skip)
    batch_size, n_iter = (whole_number(name, 1 if getattr(body, name) is None else getattr(body, name), 1)
                          for name in ("batch_size", "n_iter"))
    eta = body.eta if body.eta is not None and takes_eta(sampler_that_runs(sampler, model)) else None
    return JobRequest(prompt=body.prompt or "", negative_prompt=body.negative_prompt or "", model=model["id"],
                      sampler=sampler,
                      spacing=spacing, steps=body.steps, cfg=body.cfg_scale, seed=body.seed,
                      width=None if image else body.width, height=None if image else body.height,
                      num_images=batch_size * n_iter, image=image, mask=mask, strength=strength,
                      eta=eta, clip_skip=None if clip_skip == 1 else clip_skip)


def a1111_router(server, authorize) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(authorize)], tags=["AUTOMATIC1111"])
    options_set = {"CLIP_stop_at_last_layers": 1}  # what POST /options may set besides the model, for every job

    def model_info(body: A1111Request) -> dict:
        """What the shelf knows of the model a request runs: its override's, else the server's default."""
        return server.shelf.info(server.shelf.resolve(body.overrides.get("sd_model_checkpoint")))

    async def answer(body: A1111Request, job: Job) -> JSONResponse:
        job = await server.finished(job)  # a wait cut short (the client gone) keeps the job: nothing is lost
        try:
            if job.state == "failed":  # the request's mistake that only its run could find (clip skip on a model
                # without CLIP) is a 4xx like any other; only a failure of the server's is a 500
                return JSONResponse({"error": "GenerationError", "detail": job.error},
                                    status_code=422 if job.user_error else 500)
            images = await run_in_threadpool(
                lambda: [base64.b64encode(server.store.image_path(job.id, i).read_bytes()).decode()
                         for i in range(len(job.images))] if body.send_images is not False else [])
            return JSONResponse({"images": images, "parameters": body.model_dump(exclude={"init_images", "mask"}),
                                 "info": json.dumps(info(job))})
        finally:
            if not body.save_images:
                await run_in_threadpool(server.store.forget, job.id)

    # The calls wait for their job on the event loop; what comes before (decoding, resizing and writing uploads, the
    # store's fsync) runs in the thread pool, so that other requests (progress polls, streams) are not held up.
    @router.post("/txt2img")
    async def txt2img(body: A1111Request):
        clip_skip = options_set["CLIP_stop_at_last_layers"]
        return await answer(body, await run_in_threadpool(
            lambda: server.submit(job_request(body, model_info(body), clip_skip=clip_skip))))

    @router.post("/img2img")
    async def img2img(body: Img2ImgRequest):
        return await answer(body, await run_in_threadpool(submit_img2img, body))

    def submit_img2img(body: Img2ImgRequest) -> Job:
        if not body.init_images:
            raise UserError("init_images is empty: send the image to edit as base64")
        image = decode_upload("init_images[0]", body.init_images[0], server.limits)
        mask = decode_upload("mask", body.mask, server.limits, "L") if body.mask else None
        # AUTOMATIC1111 resizes the image to the size asked for, and takes any size: the sides go down to
        # the nearest the model can halve evenly, checked against the limits before the resize allocates them
        model = model_info(body)
        multiple = model["size_multiple"]
        size = tuple(max(multiple, side // multiple * multiple)
                     for side in image_sides(body.width or image.width, body.height or image.height))
        server.limits.check_size(*size)
        if image.size != size:
            image = image.resize(size)
        if mask is not None:
            mask = mask.resize(size)
            if body.inpainting_mask_invert:
                mask = mask.point(lambda level: 255 - level)
        request = job_request(body, model, base64.b64encode(png_bytes(image)).decode(),
                              None if mask is None else base64.b64encode(png_bytes(mask)).decode(),
                              0.75 if body.denoising_strength is None else body.denoising_strength,
                              options_set["CLIP_stop_at_last_layers"])
        return server.submit(request)

    @router.get("/progress")
    def progress(skip_current_image: bool = False):
        live, queued = server.worker.live, len(server.store.queue())
        if not skip_current_image:
            server.worker.polled = time.time()
        if live is None:
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None, "textinfo": None,
                    "state": state(queued, 0, 0, False)}
        done = live.step / live.steps if live.steps else 0.0
        elapsed = time.time() - live.started
        return {"progress": done, "eta_relative": elapsed / done - elapsed if done else 0.0,
                "current_image": None if skip_current_image or live.preview is None
                else live.preview.partition(",")[2],
                "textinfo": None,
                "state": state(queued, live.step, live.steps, live.job_id in server.worker.cancelling)}

    @router.post("/interrupt")
    def interrupt():
        """The running job stops at its next step and, as in AUTOMATIC1111, answers with the images its x̂_0
        then makes (marked interrupted); its caller gets them."""
        live = server.worker.live
        if live is not None:
            server.worker.cancel(server.job(live.job_id), keep_images=True)
        return {}

    @router.post("/skip")
    def skip():
        """AUTOMATIC1111 skips to its job's next batch; a job here runs as one batch, so it stops, as at /interrupt."""
        return interrupt()

    @router.get("/samplers")
    def samplers():
        return [{"name": entry["label"], "aliases": [entry["sampler"]], "options": {}}
                for entry in sampler_menu(SAMPLERS)]

    @router.get("/sd-models")
    def sd_models():
        return [{"title": model["id"], "model_name": model["id"], "hash": None, "sha256": None,
                 "filename": model["id"], "config": None} for model in server.shelf.list()]

    @router.get("/loras")
    def loras():
        extras = server.shelf.extras
        return [{"name": name, "alias": name, "path": str(path.relative_to(extras.lora_dir)), "metadata": {}}
                for name, path in extras.loras.items()]

    @router.post("/refresh-loras")
    def refresh_loras():
        server.shelf.extras.refresh()

    @router.get("/embeddings")
    def embeddings():
        """The embeddings as the default model takes them (once it has loaded; until then, every readable one)."""
        skipped = dict(server.shelf.skipped.get(server.shelf.default, {}))
        answer: dict[str, dict] = {"loaded": {}, "skipped": {}}
        for name, path in server.shelf.extras.embeddings.items():
            try:
                vectors = read_embedding(path)[1]
            except UserError as error:
                skipped.setdefault(name, str(error))
            entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                     "shape": None if name in skipped else vectors.shape[-1],
                     "vectors": None if name in skipped else len(vectors)}
            answer["skipped" if name in skipped else "loaded"][name] = entry
        return answer

    @router.post("/refresh-embeddings")
    def refresh_embeddings():
        server.shelf.extras.refresh()  # a loaded model takes the new ones before its next job

    @router.get("/options")
    def options():
        return {"sd_model_checkpoint": server.shelf.default, **options_set}

    @router.post("/options")
    def set_options(body: dict):
        """The default model, and clip skip for the jobs after; other options are AUTOMATIC1111's own, ignored."""
        options = our_options(body)
        if "CLIP_stop_at_last_layers" in options:
            options_set["CLIP_stop_at_last_layers"] = options["CLIP_stop_at_last_layers"]
        if "sd_model_checkpoint" in options:
            server.shelf.default = server.shelf.resolve(options["sd_model_checkpoint"])
        return {}

    @router.post("/png-info")
    def png_info(body: dict):
        if not isinstance(body.get("image"), str):
            raise UserError("send {\"image\": base64 PNG}")
        infotext = png_parameters(body["image"], server.limits)[1]
        return {"info": infotext or "", "items": {}, "parameters": infotext_fields(infotext) if infotext else {}}

    return router


def state(job_count: int, step: int, steps: int, interrupted: bool) -> dict:
    return {"skipped": False, "interrupted": interrupted, "job": "", "job_count": job_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0, "sampling_step": step,
            "sampling_steps": steps}


def info(job: Job) -> dict:
    """AUTOMATIC1111's `info` of a finished job (its keys, our values)."""
    settings, parameters = job.settings, [image["parameters"] for image in job.images]
    first = parameters[0] if parameters else {}
    height, width = first.get("size") or (settings["height"], settings["width"])  # the size that ran
    return {"prompt": settings["prompt"], "all_prompts": [p["prompt"] for p in parameters],
            "negative_prompt": settings["negative_prompt"],
            "all_negative_prompts": [p["negative_prompt"] for p in parameters],
            "seed": settings["seed"], "all_seeds": [p["seed"] for p in parameters], "subseed": -1,
            "all_subseeds": [-1] * len(parameters), "width": width, "height": height,
            "sampler_name": a1111_sampler(first["sampler"], first.get("spacing")) if first else None,
            "cfg_scale": first.get("cfg"), "steps": first.get("steps"), "batch_size": settings["num_images"],
            "sd_model_name": settings["model"], "denoising_strength": settings["strength"],
            "infotexts": [to_infotext(p) for p in parameters], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "interrupted": job.state == "cancelled", "index_of_first_image": 0}  # no grid comes first
