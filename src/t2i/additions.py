"""LoRAs (Hu et al. 2021) and textual-inversion words (Gal et al. 2022) on a pipeline's networks.

`Additions` is a part of `pipeline.Pipeline` (as diffusers' loader mixins are of its pipelines): it reads
the host's `unet`, `text_encoder`, `tokenizer` and `name`, and changes nothing else of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self, Sequence

from .checks import real_number
from .errors import UserError
from .models.lora import LoRA, LoRAStack
from .text.embeddings import add_word


class Additions:
    """What a pipeline applies on top of its model's weights: LoRA files and embedding words."""

    @property
    def loras(self) -> LoRAStack:
        """The LoRAs applied to the U-Net and the text encoder, by name (`load_lora`)."""
        if "_loras" not in self.__dict__:
            networks = {"unet": self.unet, "text_encoder": self.text_encoder}  # a compiled U-Net's own layers
            self._loras = LoRAStack({name: getattr(net, "_orig_mod", net) for name, net in networks.items()})
        return self._loras

    def load_lora(self, path: str | Path, scale: float = 1.0, fuse: bool = False, name: str | None = None) -> str:
        """Apply a LoRA file (kohya-ss's and AUTOMATIC1111's layout, or diffusers' and PEFT's:
        `convert.lora_names`) to the U-Net and the text encoder, weighted by `scale`: W + scale·(α/r)·B·A.
        Applied on the fly (the default), the weights stay as they are and `set_lora_scale` and
        `unload_lora` act at once; `fuse` writes it into the weights instead (`fuse_loras`). Returns its
        name: `name`, else the file's name without its extension."""
        from .convert.lora_names import read_lora

        scale = real_number("scale", scale)
        name = Path(path).stem if name is None else str(name)
        if name in self.loras:
            raise UserError(f"a LoRA named {name!r} is already loaded: unload it first, or give another name")
        self.loras.add(LoRA(name, read_lora(path, self.loras.networks), scale), fuse)
        return name

    def set_lora_scale(self, name: str, scale: float) -> None:
        """Weigh the loaded LoRA `name` by `scale` from the next call on (0 turns it off)."""
        self.loras.set_scale(name, real_number("scale", scale))

    def unload_lora(self, name: str) -> None:
        """Remove the LoRA `name`: the layers it changed are as they were before it (bit for bit if fused)."""
        self.loras.remove(name)

    def fuse_loras(self, names: Sequence[str] | None = None) -> None:
        """Write the LoRAs named (all by default) into the weights at their scales: no cost per call. The
        weights they change are kept (on the CPU), so that `unfuse_loras` restores them exactly."""
        self.loras.fuse(names)

    def unfuse_loras(self, names: Sequence[str] | None = None) -> None:
        """Restore the weights the LoRAs named (all by default) were fused into; they apply on the fly again."""
        self.loras.unfuse(names)

    def load_embedding(self, path: str | Path, token: str | None = None) -> str:
        """Add a textual-inversion embedding (AUTOMATIC1111's .pt/.safetensors or diffusers'
        learned_embeds: `convert.embedding_files`): the word `token` (default: the file's name for
        AUTOMATIC1111's files, its own word for diffusers') in a prompt then reads its learned vectors.
        Returns the word, lower-cased as prompts are matched."""
        from .convert.embedding_files import read_embedding

        if self.text_encoder is None:
            raise UserError(f"model {self.name!r} is unconditional: it has no text encoder to add words to")
        word, vectors = read_embedding(path, token)
        return add_word(self.text_encoder, self.tokenizer, word, vectors, repr(str(path)))

    def additions(self) -> dict:
        """What an image's parameters record of the LoRAs applied ({name: scale}), if any."""
        applied = self.__dict__.get("_loras")
        return {"loras": {name: lora.scale for name, lora in applied.loras.items()}} if applied else {}

    def load_additions(self, loras: Sequence = (), embeddings: Sequence = ()) -> Self:
        """`load_lora` for each of `loras` (a path, or (path, scale)) and `load_embedding` for each of
        `embeddings` (a path, or (path, word)). Returns self."""
        for entry in loras:
            path, scale = (entry, 1.0) if isinstance(entry, (str, Path)) else entry
            self.load_lora(path, scale)
        for entry in embeddings:
            path, word = (entry, None) if isinstance(entry, (str, Path)) else entry
            self.load_embedding(path, word)
        return self
