"""Every tokenizer by its config `type`, and `load_tokenizer`, which builds the one a model folder records."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .clip_bpe import CLIPTokenizer
from .tokenizer import Tokenizer
from .wordpiece import WordPieceTokenizer
from .words import WordTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {cls.type: cls for cls in (CLIPTokenizer, WordTokenizer, WordPieceTokenizer)}


def load_tokenizer(config: dict, folder: str | Path | None = None) -> Tokenizer:
    """The tokenizer a model's config records: `{"type": "clip_bpe", ...}` reads its files
    from `folder`; `{"type": "word", "vocab": [...]}` carries its vocabulary;
    `{"type": "wordpiece", "pretrained": name}` reads a pretrained encoder's."""
    kind = config.get("type")
    if kind not in TOKENIZERS:
        raise UserError(f"unknown tokenizer type {kind!r}; choose one of: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_config(config, None if folder is None else Path(folder))

