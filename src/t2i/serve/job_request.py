"""What a client asks for, checked whole before it is queued: `JobRequest` (our JSON API's body) to
the settings a job stores and the uploaded images it keeps.

Every check that needs no network runs here, at the request, so that a mistake is a 4xx answer
naming it rather than a failed job minutes later: the server's `Limits`, the sampler and spacing,
guidance and strength, eta and whether the sampler takes one, the sides the model can take, the
uploads (decoded under limits), and only finite numbers. What the networks alone can tell (a prompt
of unknown words, memory) is checked when the job runs.
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image
from pydantic import BaseModel, ConfigDict

from ..checks import MAX_SIDE, whole_number
from ..errors import UserError
from ..guards import MAX_SEED, random_seed
from ..images import INFOTEXT_KEY, image_parameters, read_image
from ..metadata import lora_tags, to_infotext
from ..models.config import check_divisible
from ..samplers import SAMPLERS, get_sampler
from ..sampling import check_guidance, check_option, check_strength
from ..schedules import SPACINGS
from .limits import LimitError, Limits
from .shelf import ModelShelf

MAX_CLIP_SKIP = 255  # past any text encoder's depth; the model's own limit is checked when the job runs

KINDS = ("txt2img", "img2img", "inpaint")


class JobRequest(BaseModel):
    """POST /api/jobs. None takes the model's default; a seed of None or -1 is drawn at random (and shown)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON's 1e999 and NaN: no answer could show them

    prompt: str = ""
    negative_prompt: str = ""
    model: str | None = None
    sampler: str | None = None
    spacing: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    image: str | None = None  # base64 PNG or JPEG (a data: URL too): img2img, or inpainting with a mask
    mask: str | None = None  # white = redraw, black = keep; the image's size
    strength: float | None = None
    eta: float | None = None
    clip_skip: int | None = None  # AUTOMATIC1111's "Clip skip": CLIP's state N - 1 blocks before its last


def decode_upload(name: str, data: str, limits: Limits, mode: str = "RGB") -> Image.Image:
    """A base64 image from a request, refused past the upload limits before its pixels are decoded."""
    data = data.partition(",")[2] if data.startswith("data:") else data
    if len(data) * 3 // 4 > limits.max_upload_bytes:
        raise LimitError("max_upload_bytes", f"{name} is {len(data) * 3 // 4} bytes, more than this server's "
                         f"max_upload_bytes of {limits.max_upload_bytes}", status=413)
    try:
        raw = base64.b64decode(data)
    except (binascii.Error, ValueError):
        raise UserError(f"{name} is not base64: send the PNG or JPEG file's bytes in base64") from None
    try:
        with Image.open(io.BytesIO(raw)) as header:  # reads the declared size only
            limits.check_count("max_upload_pixels", f"{name}'s declared pixels ({header.width}×{header.height})",
                               header.width * header.height, status=413)
    except LimitError:
        raise
    except Exception:  # noqa: BLE001 - anything unreadable is reported by read_image below, in one line
        pass
    return read_image(io.BytesIO(raw), mode, name=name)


def sampler_that_runs(sampler: str | None, info: dict) -> str:
    """The sampler a job runs: the one asked for, else its model's default (`ModelShelf.info`)."""
    return sampler or info["inference"]["sampler"]


def takes_eta(sampler: str) -> bool:
    """Whether a sampler has an η, the noise it adds along the way (DDIM's, Euler ancestral's)."""
    return "eta" in get_sampler(sampler).options


def image_sides(width, height) -> tuple[int | None, int | None]:
    """The sides asked for, whole and at most MAX_SIDE (None: left to the model or the image)."""
    return tuple(None if value is None else whole_number(side, value, 1, MAX_SIDE)
                 for side, value in (("width", width), ("height", height)))


def png_parameters(data: str, limits: Limits) -> tuple[dict, str | None]:
    """(our parameters, AUTOMATIC1111's infotext) of a base64 PNG: what `t2i info` prints."""
    image = decode_upload("image", data, limits)
    parameters = image_parameters(image)
    return parameters, image.info.get(INFOTEXT_KEY) or (to_infotext(parameters) if parameters else None)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def plan_job(request: JobRequest, shelf: ModelShelf, limits: Limits) -> tuple[dict, dict[str, bytes]]:
    """(the settings a job stores, its uploads as PNG bytes by name), or a UserError/LimitError."""
    model = shelf.resolve(request.model)
    info = shelf.info(model)
    for name in ("prompt", "negative_prompt"):
        limits.check_prompt(name, getattr(request, name))
    if not info["conditional"] and (request.prompt or request.negative_prompt):
        raise UserError(f"model {model!r} is unconditional: it takes no prompt (leave the prompts empty)")
    shelf.extras.check(request.prompt, request.negative_prompt)
    if request.sampler is not None:
        get_sampler(request.sampler)
    if request.spacing is not None and request.spacing not in SPACINGS:
        raise UserError(f"unknown spacing {request.spacing!r}; choose one of: {', '.join(SPACINGS)}")
    if request.steps is not None:
        limits.check_count("max_steps", "steps", whole_number("steps", request.steps, 1))
    if request.cfg is not None:
        check_guidance(request.cfg)
    if request.eta is not None:
        sampler = sampler_that_runs(request.sampler, info)
        if not takes_eta(sampler):
            whose = "" if request.sampler else f", model {model!r}'s default,"
            raise UserError(f"sampler {sampler!r}{whose} takes no eta: leave eta out, or choose a sampler that takes "
                            f"one: {', '.join(name for name in SAMPLERS if takes_eta(name))}")
        check_option("eta", request.eta, get_sampler(sampler).options["eta"])
    if request.clip_skip is not None:
        whole_number("clip_skip", request.clip_skip, 1, MAX_CLIP_SKIP)
    num = whole_number("num_images", request.num_images, 1)
    limits.check_count("max_images", "num_images", num)
    image = decode_upload("image", request.image, limits) if request.image else None
    mask = decode_upload("mask", request.mask, limits, "L") if request.mask else None
    if mask is not None and (image is None or mask.size != image.size):
        raise UserError("a mask needs the image it masks, of the same size: send both" if image is None else
                        f"the mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}: "
                        "they must be the same size")
    if request.strength is not None:
        if image is None:
            raise UserError("strength is how far to noise an image to edit: send the image too, or leave it out")
        check_strength(request.strength)
    if image is not None:
        if (request.width or image.width, request.height or image.height) != image.size:
            raise UserError(f"an edited image keeps its size, {image.width}×{image.height}: leave out width and "
                            "height, or resize the image")
        width, height = image.size
    else:
        width, height = (request.width or info["image_size"], request.height or info["image_size"])
    width, height = image_sides(width, height)
    if width is not None and height is not None:
        check_divisible(width, height, info["size_multiple"], "the size asked for" if image is None else "the image",
                        f"model {model!r} needs", "choose such sides" if image is None else "resize it")
        limits.check_size(width, height)
    # else a side is left to a Stable Diffusion model not loaded yet, known when it loads: the worker checks
    # the size then (`check_size`)
    seed = random_seed() if request.seed in (None, -1) else whole_number("seed", request.seed, 0, MAX_SEED - num)
    kind = "txt2img" if image is None else "img2img" if mask is None else "inpaint"
    settings = {**request.model_dump(exclude={"image", "mask"}), "kind": kind, "model": model, "seed": seed,
                "width": width, "height": height, "num_images": num}
    uploads = {name: png_bytes(picture) for name, picture in (("image", image), ("mask", mask)) if picture}
    return settings, uploads


def pipeline_arguments(settings: dict, uploads: dict[str, Image.Image]) -> dict:
    """The keyword arguments of `Pipeline.__call__` that make a job's images (the prompt without its
    <lora:…> tags, which choose the LoRAs the worker applies)."""
    edit = "image" in uploads
    return {"prompt": lora_tags(settings["prompt"])[0], "negative_prompt": settings["negative_prompt"] or None,
            "sampler": settings["sampler"], "spacing": settings["spacing"], "steps": settings["steps"],
            "cfg": settings["cfg"], "seed": settings["seed"], "num_images": settings["num_images"],
            "width": None if edit else settings["width"], "height": None if edit else settings["height"],
            "image": uploads.get("image"), "mask": uploads.get("mask"), "strength": settings["strength"],
            "eta": settings["eta"], "clip_skip": settings.get("clip_skip")}
