"""Textual inversion (Gal et al. 2022): a new word whose token embeddings were learned.

Gal et al. find, for a concept shown in a few images, vectors v* in the token-embedding space of
a frozen text encoder (§3: a pseudo-word S* whose embedding is optimised by the diffusion loss,
eq. 2), one vector or several ("Using multiple vectors", §4.4). Using it needs no change to
the network: the tokenizer gives the word n new ids after its vocabulary, and the encoder's
token table gains the n vectors as its rows for those ids, so a prompt containing the word
reads v*₁ … v*ₙ where the word stands. The files people share are read by
`convert.embedding_files`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .clip import CLIPTextTransformer
from .tokenizer import Tokenizer

FAMILIES = {768: "an SD 1.x", 1024: "an SD 2.x", 1280: "an SDXL"}  # a text encoder's width tells its model


def add_word(text_encoder: CLIPTextTransformer, tokenizer: Tokenizer, word: str, vectors: torch.Tensor,
             source: str = "the embedding") -> str:
    """Make `word` in prompts read `vectors` [n, width]: n new ids in `tokenizer`, and n new rows of
    `text_encoder`'s token table (replaced by a larger one, in its dtype and on its device). Returns
    the word as prompts match it (lower case)."""
    table = text_encoder.token_embedding
    width = table.embedding_dim
    if vectors.ndim != 2 or vectors.shape[-1] != width:
        family = FAMILIES.get(vectors.shape[-1], "a") if vectors.ndim == 2 else "a"
        raise UserError(f"{source}: {family} embedding ({vectors.shape[-1]} wide) does not fit this model's "
                        f"{width}-wide text encoder")
    if not hasattr(tokenizer, "add_word"):
        raise UserError(f"{source}: this model's tokenizer ({tokenizer.type}) cannot take new words; textual "
                        "inversion needs CLIP's")
    first = max(tokenizer.vocab_size, table.num_embeddings)
    word = tokenizer.add_word(word, range(first, first + len(vectors)))
    weight = torch.zeros(first + len(vectors), width, dtype=table.weight.dtype, device=table.weight.device)
    with torch.no_grad():
        weight[:table.num_embeddings] = table.weight
        weight[first:] = vectors.to(weight)
    grown = nn.Embedding(len(weight), width, _weight=weight)
    grown.weight.requires_grad_(table.weight.requires_grad)
    text_encoder.token_embedding = grown
    text_encoder.config.vocab_size = len(weight)
    if text_encoder.config.eos_token_id is None:
        # pooling found <|endoftext|> as the highest id of a row; the new ids are higher, so name it
        text_encoder.config.eos_token_id = tokenizer.eos_id
    return word
