"""Every tokenizer by its config `type`, and `load_tokenizer`, which builds the one a model folder records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models.config import ModelConfig
from .clip_bpe import CLIPTokenizer
from .tokenizer import Tokenizer
from .wordpiece import WordPieceTokenizer
from .words import WordTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {cls.type: cls for cls in (CLIPTokenizer, WordTokenizer, WordPieceTokenizer)}


@dataclass
class TokenizerSettings(ModelConfig):
    """The `tokenizer` section of a model's config.json: every key some tokenizer type reads, each
    checked for its kind and range (which keys a type takes, its `from_config` checks)."""

    type: str
    max_length: int | None = None  # the padded length; at least 2, for the start and end tokens
    pad_token: str | None = None  # clip_bpe
    vocab: tuple[str, ...] | None = None  # word: the vocabulary itself
    pretrained: str | None = None  # wordpiece: an installed encoder whose vocabulary it is
    vocab_file: str | None = None  # wordpiece: the vocabulary's file in the model folder

    RANGES = {"max_length": (2, 65536)}

    def __post_init__(self):
        super().__post_init__()
        if self.type not in TOKENIZERS:
            raise UserError(f"unknown tokenizer type {self.type!r}; choose one of: {', '.join(TOKENIZERS)}")
        if self.vocab_file is not None and (Path(self.vocab_file).name != self.vocab_file
                                            or self.vocab_file in ("", ".", "..")):
            raise UserError(f"vocab_file must name a file in the model folder, got {self.vocab_file!r}")


def load_tokenizer(config: dict, folder: str | Path | None = None, source: str = "section tokenizer") -> Tokenizer:
    """The tokenizer a model's config records: `{"type": "clip_bpe", ...}` reads its files
    from `folder`; `{"type": "word", "vocab": [...]}` carries its vocabulary;
    `{"type": "wordpiece", "pretrained": name}` reads a pretrained encoder's. The section is
    checked first (`TokenizerSettings`); `source` names it in the errors."""
    TokenizerSettings.from_dict(config, source)
    return TOKENIZERS[config["type"]].from_config(config, None if folder is None else Path(folder))
