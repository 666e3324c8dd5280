"""AUTOMATIC1111's prompt syntax for CLIP text encoders: emphasis and prompts longer than CLIP reads.

Emphasis: "(word)" multiplies the attention a word gets by 1.1, "[word]" divides it by 1.1, "(word:1.5)"
sets 1.5; they nest and multiply; "\\(" is a literal bracket; a bracket left open runs to the prompt's end.
A prompt of more than CLIP's 75 tokens is encoded in chunks of 75, each with its own start and end
tokens, the chunks' states joined along the sequence (a chunk ends early at "BREAK", or at the last
comma when that is at most 20 tokens back, so a phrase is not cut in two). A chunk's states are
multiplied token by token by their weights and then rescaled to keep the chunk's mean, as AUTOMATIC1111
does, so that emphasis shifts attention without changing the states' overall scale.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import torch

from ..errors import UserError

CHUNK = 75  # tokens a chunk holds between its start and end tokens: CLIP reads 77
COMMA_BACKTRACK = 20  # AUTOMATIC1111's default: a chunk ends at a comma this close to its end
EMPHASIS = 1.1
BREAK = "BREAK"

TOKENS = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
BREAKS = re.compile(r"\s*\bBREAK\b\s*", re.S)


def emphasis_weight(text: str) -> float:
    """The number of a "(text:weight)", refused unless finite (a NaN or inf weight would poison the image)."""
    try:
        weight = float(text)
    except ValueError:
        weight = float("nan")
    if not math.isfinite(weight):
        raise UserError(f"emphasis weight {text!r} is not a number: write (text:1.2), or \\( for a literal bracket")
    return weight


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """The prompt as (text, weight) runs, neighbours of equal weight joined; a BREAK is (BREAK, -1)."""
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            runs.append([token[1], 1.0])  # an escaped bracket or backslash, literally
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            multiply(round_open.pop(), emphasis_weight(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), EMPHASIS)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / EMPHASIS)
        else:  # text, or a bracket or ":" with nothing to close: literal
            for i, part in enumerate(BREAKS.split(token)):
                if i:
                    runs.append([BREAK, -1.0])
                runs.append([part, 1.0])
    for start in round_open:  # brackets left open close at the end
        multiply(start, EMPHASIS)
    for start in square_open:
        multiply(start, 1 / EMPHASIS)
    joined: list[list] = []
    for run in runs or [["", 1.0]]:
        if joined and joined[-1][1] == run[1] and run[0] != BREAK and joined[-1][0] != BREAK:
            joined[-1][0] += run[0]
        else:
            joined.append(run)
    return [(text, weight) for text, weight in joined]


def weighted_chunks(tokenizer, text: str) -> list[tuple[list[int], list[float]]]:
    """The prompt's chunks for a CLIP tokenizer: (ids, weights) of CLIP's full length each, the start token,
    up to CHUNK tokens, the end token and padding (weight 1 but for the prompt's own tokens)."""
    chunks: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1
    comma = tokenizer.vocab.get(",</w>")

    def close() -> None:
        nonlocal ids, weights, last_comma
        pad = CHUNK - len(ids)  # the start token, the tokens, the end token, padding: CHUNK + 2 in all
        chunks.append(([tokenizer.bos_id, *ids, tokenizer.eos_id, *[tokenizer.pad_id] * pad],
                       [1.0, *weights, 1.0, *[1.0] * pad]))
        ids, weights, last_comma = [], [], -1

    for text_run, weight in parse_emphasis(text):
        if weight == -1.0 and text_run == BREAK:
            close()
            continue
        for token in tokenizer.text_to_ids(text_run):
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == CHUNK and last_comma >= 0 and CHUNK - last_comma <= COMMA_BACKTRACK:
                carried = ids[last_comma + 1:], weights[last_comma + 1:]  # the phrase after the comma moves on
                ids, weights = ids[:last_comma + 1], weights[:last_comma + 1]
                close()
                ids, weights = list(carried[0]), list(carried[1])
            if len(ids) == CHUNK:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def emphasised_context(encode: Callable[[torch.Tensor], torch.Tensor], tokenizer, prompts: Sequence[str],
                       device) -> torch.Tensor | None:
    """The context [B, 77·k, D] of prompts read in AUTOMATIC1111's syntax, k the most chunks a prompt takes (the
    others padded with the empty prompt's chunk, as AUTOMATIC1111 pads them); None when every prompt is one chunk
    of weight 1, which CLIP reads as it always does."""
    chunked = {prompt: weighted_chunks(tokenizer, prompt) for prompt in prompts}  # each distinct prompt once
    if all(len(chunks) == 1 and set(chunks[0][1]) == {1.0} for chunks in chunked.values()):
        return None
    count, empty = max(map(len, chunked.values())), weighted_chunks(tokenizer, "")[0]
    contexts = {}
    for prompt, chunks in chunked.items():
        chunks = chunks + [empty] * (count - len(chunks))
        z = encode(torch.tensor([ids for ids, _ in chunks], device=device))  # [k, 77, D], a chunk a row
        weights = torch.tensor([w for _, w in chunks], device=device, dtype=torch.float32)[..., None]
        if (weights != 1).any():  # each chunk's states weighted token by token, then brought back to its mean
            z32 = z.float()
            mean = z32.mean(dim=(1, 2), keepdim=True)
            weighted = z32 * weights
            z = (weighted * (mean / weighted.mean(dim=(1, 2), keepdim=True))).to(z.dtype)
        contexts[prompt] = z.reshape(1, -1, z.shape[-1])
    return torch.cat([contexts[prompt] for prompt in prompts])


def same_length(context: torch.Tensor, other: torch.Tensor, empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two contexts [B, L, D] of chunked prompts (a prompt and its negative) made the same length, the shorter
    extended by the empty prompt's chunk [1, 77, D], so that guidance can batch them."""
    def extend(c: torch.Tensor, length: int) -> torch.Tensor:
        repeats = (length - c.shape[1]) // empty.shape[1]
        return torch.cat([c, empty.expand(c.shape[0], -1, -1).repeat(1, repeats, 1)], dim=1) if repeats else c

    length = max(context.shape[1], other.shape[1])
    return extend(context, length), extend(other, length)
