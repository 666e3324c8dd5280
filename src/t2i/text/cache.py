"""The condition of a frozen text encoder, computed once per distinct caption.

A frozen encoder gives every caption the same τ(y) at every step, so a training run
encodes each caption the first time it is drawn and keeps the result: the real tokens'
states (float16, or the precision a fine-tune or distillation computes in; unpadded: [L_i, D]) and the
pooled embedding. A batch is then padded to its longest caption, with the padding masked out
of cross-attention; since BERT's own attention masks padding, the states do not depend on how
far a caption is padded. Memory: 2·D bytes a token, about 12 kB for a 16-token caption at D = 384.
A run's whole caption set is also kept on disk (`encode_all`), named by a hash of the encoder's
weights and of the captions, so that a resumed run, a second process or a branch of the run reads
the same states in a second rather than encoding them again (minutes for the emoji sets' 100k).

A U-Net that reads the whole padded sequence, as Stable Diffusion's does (its cross-attention sees the
states of the padding too, and CLIP's causal attention makes them depend on the caption), is given
the cache's `padded` states: all `max_length` of them, unmasked, what generation gives it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..files import discard, durable_write, short_hash, tmp_path
from ..models.unet import UNetConfig
from .tokenizer import Tokenizer


class TextConditionCache:
    """`cache(captions)` -> the U-Net's condition {"context", "context_mask"[, "pooled"]}, float32
    (without "context_mask" when `padded`)."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Tokenizer, unet: UNetConfig, max_length: int,
                 dtype: torch.dtype = torch.float16, padded: bool = False):
        self.encoder, self.tokenizer, self.unet = encoder, tokenizer, unet
        self.max_length, self.dtype, self.padded = max_length, dtype, padded
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.states)

    @torch.no_grad()
    def encode_missing(self, captions: Sequence[str], chunk: int = 64, progress: bool = False) -> None:
        """Encode the captions not cached yet, `chunk` at a time, shortest first, each chunk padded only to its
        longest caption (the encoder masks padding, so a caption's states do not depend on it; `padded` states
        are all `max_length` of them). A fixed set gives every caption the same states whichever were encoded
        beside it: how a run's whole caption set is encoded before its first step, so that a resumed run and
        every process see the same numbers."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.states))
        if not missing:
            return
        device = next(self.encoder.parameters()).device
        ids = self.tokenizer(missing, self.max_length, truncate=True)
        lengths = torch.full((len(missing),), ids.shape[1]) if self.padded else self.encoder.padding_mask(ids).sum(1)
        order = sorted(range(len(missing)), key=lambda i: (lengths[i].item(), missing[i]))
        starts = range(0, len(order), chunk)
        for start in tqdm(starts, desc="encode captions", disable=not progress or len(starts) < 10):
            part = order[start:start + chunk]
            rows = lengths[part].tolist()
            part_ids = ids[part, :max(rows)].to(device)
            hidden = self.encoder(part_ids)
            pooled = self.encoder.pool(hidden, part_ids)
            # one block a chunk, the captions' states and pooled vectors views into it: two small tensors a
            # caption, kept for the whole run between the encoder's large transient ones, left glibc's heap
            # fragmented (a distillation's 37,731 captions held 6 GB of resident memory for ~0.5 GB of states)
            block = torch.cat([*(states[:n] for states, n in zip(hidden, rows)), pooled]).to("cpu", self.dtype)
            for i, states, vector in zip(part, block[:sum(rows)].split(rows), block[sum(rows):]):
                self.states[missing[i]] = (states, vector)

    def encode_all(self, captions: Sequence[str], folder: Path, progress: bool = False) -> None:
        """`encode_missing(captions)` through a file in `folder`: read if an earlier run or process wrote it for
        this encoder and these captions, else encoded and written. The file holds the very numbers that encoding
        gives (in the cache's dtype), so a run that reads it trains exactly as one that encoded."""
        captions = list(dict.fromkeys(captions))
        path = Path(folder) / f"captions-{self.file_key(captions)}.safetensors"
        if self.read(path, captions):
            return
        self.encode_missing(captions, progress=progress)
        rows = [self.states[c] for c in captions]
        tensors = {"states": torch.cat([states for states, _ in rows]),
                   "pooled": torch.stack([vector for _, vector in rows]),
                   "lengths": torch.tensor([len(states) for states, _ in rows], dtype=torch.int64)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            durable_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"captions": json.dumps(captions)}))
        except OSError as error:  # a full disk costs the next start its minutes, not this run its work
            discard(tmp_path(path))
            warnings.warn(f"the captions' states were not kept in {str(folder)!r} ({error.strerror or error}): "
                          "the next start encodes them again", stacklevel=2)

    def file_key(self, captions: list[str]) -> str:
        """A digest of what the states depend on: the encoder's weights, how captions are cut and kept, and them."""
        settings = json.dumps([self.max_length, str(self.dtype), self.padded])
        return short_hash(settings, self.encoder.state_dict(), json.dumps(captions))

    def read(self, path: Path, captions: list[str]) -> bool:
        """Take the states of `captions` from `path`; False (and nothing taken) if it is missing or unreadable."""
        try:
            with safe_open(str(path), "pt") as f:
                if json.loads(f.metadata()["captions"]) != captions:
                    return False
                states, pooled, lengths = (f.get_tensor(k) for k in ("states", "pooled", "lengths"))
        except (OSError, SafetensorError, KeyError, ValueError):
            return False  # missing, or left half-written by a crash before durable_write's rename: encode again
        for caption, row, vector in zip(captions, states.split(lengths.tolist()), pooled):
            self.states[caption] = (row, vector)
        return True

    def __call__(self, captions: Sequence[str], device="cpu") -> dict[str, torch.Tensor]:
        self.encode_missing(captions)
        rows = [self.states[c] for c in captions]
        longest = max(len(states) for states, _ in rows)
        context = torch.zeros(len(rows), longest, rows[0][0].shape[-1])
        mask = torch.zeros(len(rows), longest, dtype=torch.bool)
        for i, (states, _) in enumerate(rows):
            context[i, :len(states)] = states.float()
            mask[i, :len(states)] = True
        cond = {"context": context.to(device)}
        if not self.padded:
            cond["context_mask"] = mask.to(device)
        if self.unet.pooled_dim is not None:
            cond["pooled"] = torch.stack([vector.float() for _, vector in rows]).to(device)
        return cond
