"""What every tokenizer shares: prompts become the token ids [B, L] that a text encoder reads.

Three kinds share this call API: CLIP's byte-level BPE (`clip_bpe`), BERT's WordPiece
(`wordpiece`) and a word-level vocabulary for our own small models (`words`);
`tokenizers.load_tokenizer` builds any of them from the config entry a model folder records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import UserError


class Tokenizer:
    """What every tokenizer shares: special ids, the call that pads and truncates, decode.

    A sequence is `[bos] + text_to_ids(text) + [eos]`, padded after the end with
    `pad_id`. Subclasses set `bos_id`, `eos_id`, `pad_id`, `max_length` (the default
    padded length, or None) and implement `text_to_ids`, `ids_to_text`, `vocab_size`,
    `to_dict` and `from_config`.
    """

    type: str
    bos_id: int
    eos_id: int
    pad_id: int
    max_length: int | None = None

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None,
                 truncate: bool = False) -> torch.Tensor:
        """Token ids [B, L] of a batch of prompts, each padded to L with `pad_id`.

        L is `max_length`, else the tokenizer's own `max_length`, else the longest
        sequence of the batch. A sequence longer than L raises `UserError`, or with
        `truncate` keeps its first L-1 tokens and ends with eos, as transformers'
        `truncation=True` does for Stable Diffusion's pipelines.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.encode(text) for text in texts]
        length = max_length if max_length is not None else self.max_length
        if length is None:
            length = max((len(row) for row in rows), default=2)
        if length < 2:
            raise UserError(f"max_length {length} leaves no room for the start and end tokens: use at least 2")
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > length:
                if not truncate:
                    raise UserError(f"the prompt is {len(row)} tokens; the text encoder takes at most {length}"
                                    " — shorten it")
                row = row[:length - 1] + [self.eos_id]
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of one prompt between the start and end tokens, unpadded."""
        return [self.bos_id, *self.text_to_ids(text), self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of one row of ids: a leading start token is dropped, and reading stops
        at the first end token, since what follows it is padding."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise UserError(f"token id {i} is outside the vocabulary of {self.vocab_size} tokens")
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        return self.ids_to_text(ids)

    def save(self, folder: str | Path) -> dict:
        """Write the files the tokenizer needs into `folder` (none by default); its config entry."""
        return self.to_dict()

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` the vocabulary cannot spell (none for a byte-level BPE)."""
        return []

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def text_to_ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def ids_to_text(self, ids: list[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict, folder: Path | None) -> "Tokenizer":
        raise NotImplementedError

    @classmethod
    def _options(cls, config: dict, known: set[str]) -> dict:
        """The entries of a tokenizer config other than `type`, checked against `known`."""
        options = {key: value for key, value in config.items() if key != "type"}
        unknown = set(options) - known
        if unknown:
            raise UserError(f"unknown {cls.type!r} tokenizer config keys {sorted(unknown)}: "
                            "the model was saved by a newer t2i?")
        return options
