"""The models a server offers, by id, loaded on first use and kept within a memory budget.

Requests name a model by its id in this list, never by a path: the list is fixed when the server
starts (shipped models, `--model` arguments, the models found in `--models-dir`). Loaded pipelines
stay in memory until the weights of those loaded would pass the budget; then the least recently
used go first (the one being loaded always stays, however large). A model is handed out with the LoRAs
its job names, and loads with the server's embeddings (`extra_networks`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from ..checkpoints import CONFIG_NAME, networks, read_config, resolve_model, shipped_models, student_folders
from ..convert.stable_diffusion import is_foreign
from ..convert.tensors import PICKLES, SAFETENSORS
from ..errors import UserError
from ..pipeline import DEFAULT_MODEL, INFERENCE_DEFAULTS, Pipeline
from ..text.clip import CLIPTextTransformer
from .extra_networks import ExtraNetworks


def model_id(name_or_path: str) -> str:
    """A shipped model's name, or a folder's or file's name without its suffix."""
    return name_or_path if name_or_path in shipped_models() else Path(name_or_path).stem


def models_in(folder: Path) -> list[Path]:
    """The model folders and Stable Diffusion files directly inside `folder`."""
    if not folder.is_dir():
        raise UserError(f"--models-dir {str(folder)!r} is not a folder")
    return sorted(entry for entry in folder.iterdir()
                  if (entry / CONFIG_NAME).is_file() and "unet" in read_config(entry) or is_foreign(entry))


class ModelShelf:
    def __init__(self, models: list[str], models_dir: Path | None = None, budget_bytes: int | None = None,
                 device: str = "auto", dtype: str | None = None, extras: ExtraNetworks | None = None):
        sources = list(models) or list(shipped_models())
        sources += [str(path) for path in (models_in(models_dir) if models_dir else [])]
        self.paths: dict[str, str] = {}
        for source in sources:
            resolve_model(source)  # a missing path is refused at start, not at the first request
            known = self.paths.setdefault(model_id(source), source)
            if Path(known).resolve() != Path(source).resolve():
                raise UserError(f"{known!r} and {source!r} would both be model {model_id(source)!r}: rename one, "
                                "or serve one of them")
        if not self.paths:
            raise UserError("no models to serve: give --model or --models-dir")
        self.default = model_id(models[0]) if models else (DEFAULT_MODEL if DEFAULT_MODEL in self.paths
                                                             else next(iter(self.paths)))
        self.budget, self.device, self.dtype = budget_bytes, device, dtype
        self.extras = extras or ExtraNetworks()
        self.loaded: OrderedDict[str, tuple[Pipeline, int]] = OrderedDict()
        self.own_loras: dict[str, set[str]] = {}  # the LoRAs a model came with (a LoRA run folder's), by model
        self.offered: dict[str, set[str]] = {}  # the embeddings a loaded model was given or refused, by model
        self.skipped: dict[str, dict[str, str]] = {}  # the embeddings a model could not take, and why
        self.infos: dict[str, dict] = {}
        self.lock = threading.Lock()

    def resolve(self, model: str | None) -> str:
        """The id of a requested model (None: the default); AUTOMATIC1111's titles too: "name [hash]",
        "sub/name.safetensors"."""
        if model is None or model == "":
            return self.default
        name = model.split(" [")[0].strip()
        if name not in self.paths:
            file_name = Path(name).name
            name = Path(file_name).stem if Path(file_name).suffix in SAFETENSORS + PICKLES else file_name
        if name not in self.paths:
            raise UserError(f"no model {model!r} on this server: choose one of {', '.join(self.paths)}")
        return name

    def info(self, model_id: str) -> dict:
        """What a client needs to fill a form: image size, whether it takes a prompt, the multiple
        its sides must be, its sampling defaults, the steps of its distilled students (a call for that
        many steps at the default sampler and cfg runs one), whether its text encoder is CLIP's (so
        AUTOMATIC1111's clip skip applies: an SD file's always is). Read from the config; None where unknown
        until loaded."""
        loaded = self.loaded.get(model_id)  # one read: the worker may unload it meanwhile
        if loaded is not None:
            return self.loaded_info(model_id, loaded[0])
        if model_id not in self.infos:
            folder = resolve_model(self.paths[model_id])
            if is_foreign(folder):
                self.infos[model_id] = {"id": model_id, "image_size": None, "conditional": True, "clip": True,
                                        "size_multiple": 8,
                                        "inference": dict(INFERENCE_DEFAULTS), "students": []}
            else:
                config = read_config(folder)
                with torch.device("meta"):
                    nets = networks(config)
                multiple = nets["unet"].config.downsample_factor * (nets["vae"].config.downsample_factor
                                                                    if "vae" in nets else 1)
                self.infos[model_id] = {"id": model_id, "image_size": config["image_size"],
                                        "conditional": "text_encoder" in config or "tokenizer" in config,
                                        "clip": isinstance(nets["text_encoder"] if "text_encoder" in nets else None,
                                                           CLIPTextTransformer),
                                        "size_multiple": multiple,
                                        "inference": {**INFERENCE_DEFAULTS, **config.get("inference", {})},
                                        "students": sorted(student_folders(folder))}
        return {**self.infos[model_id], "loaded": False}

    @staticmethod
    def loaded_info(model_id: str, pipe: Pipeline) -> dict:
        return {"id": model_id, "image_size": pipe.image_size, "conditional": pipe.text_encoder is not None,
                "clip": isinstance(pipe.text_encoder, CLIPTextTransformer),
                "size_multiple": pipe.unet.config.downsample_factor * pipe.downsample_factor,
                "inference": dict(pipe.defaults), "students": sorted(pipe.students), "loaded": True}

    def list(self) -> list[dict]:
        return [self.info(model_id) for model_id in self.paths]

    def get(self, model_id: str, loras: dict[str, float] | None = None) -> Pipeline:
        """The loaded pipeline of a model, loading it (and unloading others past the budget) if need be; given
        `loras` ({name: scale}, the worker's job's), with exactly those of the server's applied besides its own."""
        if model_id not in self.paths:  # a job queued before a restart that serves other models
            raise UserError(f"model {model_id!r} is no longer on this server: choose one of {', '.join(self.paths)}")
        with self.lock:
            if model_id in self.loaded:
                self.loaded.move_to_end(model_id)
            else:
                self.load(model_id)
            pipe = self.loaded[model_id][0]
        if loras is not None:  # only the worker, which alone generates, changes a model's LoRAs and words
            self.extras.apply(pipe, loras, self.own_loras[model_id])
            self.add_embeddings(model_id, pipe)
        return pipe

    def add_embeddings(self, model_id: str, pipe: Pipeline) -> None:
        """Give a model the server's embeddings it has not been offered yet (all at its load; after a refresh,
        the new ones), noting those it cannot take."""
        offered = self.offered.setdefault(model_id, set())
        new = {name: path for name, path in self.extras.embeddings.items() if name not in offered}
        self.skipped.setdefault(model_id, {}).update(self.extras.add_embeddings(pipe, new))
        offered.update(new)

    def load(self, model_id: str) -> None:
        """Load a model, with the server's embeddings, and unload the least recently used past the budget."""
        pipe = Pipeline.load(self.paths[model_id], self.device, self.dtype)
        pipe.name = model_id
        self.own_loras[model_id] = set(pipe.additions().get("loras", {}))
        self.offered[model_id], self.skipped[model_id] = set(), {}
        self.add_embeddings(model_id, pipe)
        size = sum(t.numel() * t.element_size() for net in (pipe.unet, pipe.text_encoder, pipe.vae)
                   if net is not None for t in (*net.parameters(), *net.buffers()))
        self.loaded[model_id] = (pipe, size)
        while self.budget is not None and len(self.loaded) > 1 and \
                sum(size for _, size in self.loaded.values()) > self.budget:
            self.loaded.popitem(last=False)
