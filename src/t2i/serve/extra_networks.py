"""AUTOMATIC1111's "extra networks" on the server: LoRA files that a prompt names as `<lora:name:scale>`,
and textual-inversion embeddings that a prompt calls by their word.

A server started with `--lora-dir` offers the LoRA files under that folder by their names (the file's name
without its suffix, as AUTOMATIC1111 shows them); a prompt's tags choose which apply to its job and at what
scale (1 when left out), and come out of the prompt before it is encoded, as in AUTOMATIC1111. Requests
name a LoRA, never a path. A model is given exactly its job's LoRAs on the fly (`Pipeline.load_lora`),
so a job without tags draws as if none were ever loaded. With `--embeddings-dir`, every embedding there
that fits a model's text encoder is added to it when the model loads; those that do not fit are listed as
skipped, with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..convert.tensors import PICKLES, SAFETENSORS
from ..errors import UserError
from ..metadata import LORA_TAG, lora_tags

log = logging.getLogger("t2i.serve")


def files_in(folder: Path | None, suffixes: tuple[str, ...], flag: str) -> dict[str, Path]:
    """{name: file} of the files with one of `suffixes` anywhere under `folder`, named by their file name
    without the suffix; where two share a name, the first in path order."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise UserError(f"{flag} {str(folder)!r} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file()):
        if path.stem in found:
            log.warning("%s: %s has the name of %s and is left out", flag, path, found[path.stem])
            continue
        found[path.stem] = path
    return found


class ExtraNetworks:
    """The LoRA files and embeddings a server offers, by name; `refresh` reads the folders again."""

    def __init__(self, lora_dir: Path | None = None, embeddings_dir: Path | None = None):
        self.lora_dir, self.embeddings_dir = lora_dir, embeddings_dir
        self.refresh()

    def refresh(self) -> None:
        self.loras = files_in(self.lora_dir, (*SAFETENSORS, *PICKLES), "--lora-dir")
        self.embeddings = files_in(self.embeddings_dir, (*SAFETENSORS, *PICKLES), "--embeddings-dir")

    def check(self, prompt: str, negative_prompt: str = "") -> None:
        """Refuse a job whose prompts name LoRAs this server does not have, or put one in the negative prompt."""
        if LORA_TAG.search(negative_prompt):
            raise UserError("a <lora:…> tag goes in the prompt, not the negative prompt")
        missing = [name for name in lora_tags(prompt)[1] if name not in self.loras]
        if missing:
            if self.lora_dir is None:
                raise UserError(f"the prompt names LoRA {missing[0]!r}, but this server offers none: start it "
                                "with --lora-dir DIR, or take the <lora:…> tag out")
            shown = ", ".join(list(self.loras)[:20]) or "none"
            raise UserError(f"no LoRA {missing[0]!r} in this server's --lora-dir: choose one of {shown}")

    def apply(self, pipe, loras: dict[str, float], own: set[str]) -> None:
        """Give `pipe` exactly `loras` ({name: scale}) of these files, on the fly; `own` are the LoRAs its
        model came with (a LoRA run folder's), which stay."""
        for name in [name for name in pipe.loras.loras if name not in own and name not in loras]:
            pipe.unload_lora(name)
        for name, scale in loras.items():
            if name in own:
                raise UserError(f"LoRA {name!r} has the name of one that model {pipe.name!r} comes with: rename "
                                "the file")
            if name in pipe.loras:
                pipe.set_lora_scale(name, scale)
            elif name in self.loras:
                pipe.load_lora(self.loras[name], scale, name=name)
            else:  # gone at a refresh since the job was queued
                raise UserError(f"LoRA {name!r} is no longer in this server's --lora-dir")

    def add_embeddings(self, pipe, embeddings: dict[str, Path]) -> dict[str, str]:
        """Add each of `embeddings` ({name: file}) that fits `pipe`'s text encoder, called by its name (a
        diffusers file's own word too is its file name here, as in AUTOMATIC1111); {name: why} of the rest."""
        skipped = {}
        for name, path in embeddings.items():
            try:
                pipe.load_embedding(path, name)
            except UserError as error:
                skipped[name] = str(error)
        return skipped
