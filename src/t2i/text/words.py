"""A word-level tokenizer for our own small models: its vocabulary lives in the model's config.json."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError
from .tokenizer import Tokenizer


class WordTokenizer(Tokenizer):
    """A word-level tokenizer for our own small models; its vocabulary is stored in the
    model's config.json, so it needs no file from anywhere.

    Words are the lower-cased runs of letters and digits; everything else separates
    them. Ids are positions in `vocab`, which starts with <pad>, <bos>, <eos>, <unk>;
    a word not in the vocabulary becomes <unk>.
    """

    type = "word"
    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    WORD = re.compile(r"[^\W_]+")

    def __init__(self, vocab: Sequence[str], max_length: int | None = None):
        vocab = list(vocab)
        if tuple(vocab[:len(self.SPECIALS)]) != self.SPECIALS:
            raise UserError(f"a word vocabulary must start with {', '.join(self.SPECIALS)}: rebuild it with "
                            "WordTokenizer.build")
        self.vocab = vocab
        self.ids = {word: i for i, word in enumerate(vocab)}
        if len(self.ids) != len(vocab):
            repeated = sorted(word for word, n in Counter(vocab).items() if n > 1)
            raise UserError(f"the word vocabulary lists {repeated} more than once: rebuild it with WordTokenizer.build")
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(self.SPECIALS))
        self.max_length = max_length

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls.WORD.findall(text.lower())

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_words: int | None = None,
              max_length: int | None = None) -> "WordTokenizer":
        """The vocabulary of `captions`: words seen at least `min_count` times, most frequent
        first (ties alphabetical), at most `max_words` of them besides the specials."""
        counts = Counter(word for caption in captions for word in cls.split(caption))
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([*cls.SPECIALS, *words[:max_words]], max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def text_to_ids(self, text: str) -> list[int]:
        return [self.ids.get(word, self.unk_id) for word in self.split(text)]

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(word for word in self.split(text) if word not in self.ids))

    def ids_to_text(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict:
        return {"type": self.type, "vocab": list(self.vocab), "max_length": self.max_length}

    @classmethod
    def from_dict(cls, config: dict) -> "WordTokenizer":
        options = cls._options(config, {"vocab", "max_length"})
        if "vocab" not in options:
            raise UserError("the 'word' tokenizer config has no 'vocab' list: the model's config.json is incomplete")
        return cls(options["vocab"], options.get("max_length"))

    @classmethod
    def from_config(cls, config: dict, folder: Path | None) -> "WordTokenizer":
        return cls.from_dict(config)
