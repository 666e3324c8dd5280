"""Generation parameters as the PNG text chunk AUTOMATIC1111 writes (`parameters`), both ways.

Its "infotext" is the prompt, a "Negative prompt: …" line, and one line of `Key: value` pairs
(`Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: emoji`).
Writing it beside our own JSON chunk lets the tools people use read how an image was made, and
reading it lets an image made by them be made again here. The LoRAs applied are written into the
prompt as AUTOMATIC1111 writes them, `<lora:name:scale>`, and `lora_tags` reads them back out.
"""

from __future__ import annotations

import math
import re

from .errors import UserError

INFOTEXT_KEY = "parameters"
# our sampler names and AUTOMATIC1111's; "Karras" after a name means σ spaced by Karras et al.
A1111_SAMPLERS = {"ddim": "DDIM", "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "lms": "LMS",
                  "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE"}
KARRAS = " Karras"
KARRAS_MENU = ("dpmpp_2m", "dpmpp_2m_sde")

LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>")
MAX_LORA_SCALE = 10.0  # |scale|: people use up to about 2; past 10 an image is noise


def lora_tags(prompt: str) -> tuple[str, dict[str, float]]:
    """(the prompt without its `<lora:name[:scale]>` tags, {name: scale} in the order written). A name
    given twice, an empty name or a scale that is not a number within ±10 is a UserError."""
    loras: dict[str, float] = {}
    for match in LORA_TAG.finditer(prompt):
        name, scale_text = match.group(1).strip(), match.group(2)
        if not name:
            raise UserError(f"{match.group(0)!r} names no LoRA: write <lora:NAME> or <lora:NAME:SCALE>")
        try:
            scale = 1.0 if scale_text is None else float(scale_text)
        except ValueError:
            scale = math.nan
        if not math.isfinite(scale) or abs(scale) > MAX_LORA_SCALE:
            raise UserError(f"{match.group(0)!r}: the scale must be a number from {-MAX_LORA_SCALE:g} to "
                            f"{MAX_LORA_SCALE:g}, such as <lora:{name}:0.8>")
        if name in loras:
            raise UserError(f"the prompt names LoRA {name!r} twice: give it once, with one scale")
        loras[name] = scale
    text = LORA_TAG.sub(" ", prompt)
    return re.sub(r"[ \t]{2,}", " ", text).strip(), loras


def a1111_sampler(sampler: str, spacing: str | None) -> str:
    """AUTOMATIC1111's name for one of our samplers on a spacing (ours where it has none)."""
    return A1111_SAMPLERS.get(sampler, sampler) + (KARRAS if spacing == "karras" else "")


def from_a1111_sampler(name: str) -> tuple[str, str | None]:
    """(our sampler, "karras" or None) of AUTOMATIC1111's name for it; a name it does not know is kept."""
    karras = name.endswith(KARRAS)
    name = name[:-len(KARRAS)] if karras else name
    return {theirs: ours for ours, theirs in A1111_SAMPLERS.items()}.get(name, name), "karras" if karras else None


def sampler_menu(samplers) -> list[dict]:
    """Each of `samplers` under AUTOMATIC1111's name, and the "… Karras" entries its menu has."""
    menu = [{"label": a1111_sampler(name, None), "sampler": name, "spacing": None} for name in samplers]
    return menu + [{"label": A1111_SAMPLERS[name] + KARRAS, "sampler": name, "spacing": "karras"}
                   for name in KARRAS_MENU if name in samplers]


def is_one_image(parameters: dict) -> bool:
    """Whether `parameters` are one generated image's (not a grid's or a figure's)."""
    return isinstance(parameters.get("prompt"), str) and "seed" in parameters


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# what each field `to_infotext` writes must be, in parameters read back from a file (None: not given)
FIELD_CHECKS = {"prompt": lambda v: isinstance(v, str), "negative_prompt": lambda v: isinstance(v, str),
                "seed": lambda v: isinstance(v, int), "steps": lambda v: isinstance(v, int),
                "clip_skip": lambda v: isinstance(v, int), "cfg": is_number, "strength": is_number, "eta": is_number,
                "sampler": lambda v: isinstance(v, str), "spacing": lambda v: isinstance(v, str),
                "model": lambda v: isinstance(v, str),
                "size": lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) for n in v),
                "loras": lambda v: isinstance(v, dict) and all(is_number(scale) for scale in v.values())}


def check_parameters(parameters: dict, source: str) -> dict:
    """Generation parameters read from `source` (a PNG's chunk), refused in one line where a field has
    a type no image's parameters have: the chunk was damaged or written by something else. A grid's
    or a figure's parameters (no `to_infotext` of them) are not checked."""
    if not is_one_image(parameters):
        return parameters
    for name, check in FIELD_CHECKS.items():
        if parameters.get(name) is not None and not check(parameters[name]):
            raise UserError(f"{source}'s {name!r} is {parameters[name]!r}, which no image's parameters hold: "
                            "it was written by something else, or damaged")
    return parameters


def to_infotext(parameters: dict) -> str | None:
    """The infotext of one image's generation parameters (as `Pipeline` leaves them in
    `image.info["t2i"]`), or None for parameters that are not one image's (a grid, a figure)."""
    if not is_one_image(parameters):
        return None
    fields = {"Steps": parameters.get("steps"),
              "Sampler": a1111_sampler(parameters["sampler"], parameters.get("spacing"))
              if parameters.get("sampler") else None,
              "CFG scale": parameters.get("cfg"), "Seed": parameters["seed"],
              "Size": "{1}x{0}".format(*parameters["size"]) if parameters.get("size") else None,
              "Model": parameters.get("model") or None, "Denoising strength": parameters.get("strength"),
              "Eta": parameters.get("eta"), "Clip skip": parameters.get("clip_skip")}
    # AUTOMATIC1111 writes the LoRAs applied as <lora:name:scale> in the prompt, where its user put them
    loras = "".join(f" <lora:{name}:{scale:g}>" for name, scale in (parameters.get("loras") or {}).items())
    lines = [parameters["prompt"] + loras]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def infotext_fields(text: str) -> dict[str, str]:
    """An infotext read as AUTOMATIC1111's /png-info gives it: "Prompt", "Negative prompt" and each
    "Key: value" of the settings line, as text, with "Size" also as "Size-1" (width) and "Size-2" (height)."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and re.match(r"^\s*Steps: ", lines[-1]) else ""
    negative = [i for i, line in enumerate(lines) if line.startswith("Negative prompt:")]
    cut = negative[0] if negative else len(lines)
    fields = {"Prompt": "\n".join(lines[:cut]).strip(),
              "Negative prompt": "\n".join(lines[cut:])[len("Negative prompt:"):].strip() if negative else ""}
    for key, value in re.findall(r'\s*([\w ]+?): ("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)', settings_line):
        fields[key] = value.strip().strip('"')
    if re.fullmatch(r"\d+x\d+", fields.get("Size", "")):
        fields["Size-1"], fields["Size-2"] = fields["Size"].split("x")
    return fields


def from_infotext(text: str) -> dict:
    """Our generation parameters from an infotext: prompt, negative_prompt, and of steps, sampler,
    spacing, cfg, seed, size ([H, W]), model, strength, eta and clip skip those it names."""
    fields = infotext_fields(text)
    out: dict = {"prompt": fields["Prompt"], "negative_prompt": fields["Negative prompt"]}
    readers = {"Steps": ("steps", int), "CFG scale": ("cfg", float), "Seed": ("seed", int), "Model": ("model", str),
               "Denoising strength": ("strength", float), "Eta": ("eta", float), "Clip skip": ("clip_skip", int)}
    for key, (name, kind) in readers.items():
        if key in fields:
            try:
                value = kind(fields[key])
            except ValueError:  # a field we cannot read is left out, as AUTOMATIC1111 does; so is a NaN
                continue
            if kind is not float or math.isfinite(value):
                out[name] = value
    try:
        if "Size-1" in fields:
            out["size"] = [int(fields["Size-2"]), int(fields["Size-1"])]
    except ValueError:  # more digits than Python reads into an int
        pass
    if "Sampler" in fields:
        out["sampler"], spacing = from_a1111_sampler(fields["Sampler"])
        # AUTOMATIC1111 1.9 and later name the σ spacing apart: "Sampler: DPM++ 2M, Schedule type: Karras"
        if spacing or fields.get("Schedule type", "").lower() == "karras":
            out["spacing"] = "karras"
    return out
