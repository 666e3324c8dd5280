"""The text encoder τ_θ(y): CLIP's text transformer (Radford et al. 2021, §2.4).

Token ids [B, L] become per-token features [B, L, D], the context that the U-Net's
cross-attention reads (Rombach et al. 2022, eq. 3). The network is GPT-2's decoder
(Radford et al. 2019): learned token and position embeddings, pre-LayerNorm residual
blocks of causal self-attention and an MLP, a final LayerNorm. Stable Diffusion v1
conditions on the last hidden state of CLIP ViT-L/14's text tower; the pooled feature
(the hidden state at the end-of-text token) is CLIP's text embedding, kept for later use.

Parameter names are ours; `t2i.convert.clip_names` gives transformers' `CLIPTextModel`
names for them, which diffusers folders and SD's original files use too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..models.config import ModelConfig
from ..models.layers import Attention, uninitialised_embedding

ACTIVATIONS = ("quick_gelu", "gelu")
POOLINGS = ("eos", "mean")
CLIP_VOCAB_SIZE = 49408  # CLIP BPE: 256 bytes, their 256 word-final </w> forms, 48,894 merges, 2 specials
CLIP_EOS_TOKEN_ID = 49407  # <|endoftext|>, the highest id of CLIP's vocabulary


@dataclass
class TextEncoderConfig(ModelConfig):
    """Every constructor argument of `CLIPTextTransformer`; saved whole as its config.

    The defaults are a small encoder for our own models over CLIP's vocabulary: width 128,
    4 blocks, 7.1M parameters, of which 6.3M are the token table (a lookup, no compute).
    `sd_v1()` is Stable Diffusion v1's encoder, CLIP ViT-L/14's text tower.

    `eos_token_id` picks the token whose hidden state is the pooled output: the first
    position holding that id. With `None`, the position of the highest id in each row
    is taken instead — OpenAI CLIP's `text.argmax(-1)`, which finds <|endoftext|>
    because it is the highest id of CLIP's vocabulary (as transformers does for the old
    configs, SD v1's among them, that say `eos_token_id: 2`). Both agree on CLIP tokens.

    `skip_layers` > 0 makes the output the final norm of the hidden state that many blocks
    before the last: SD 2 reads OpenCLIP's penultimate layer (1) from its original files,
    whose last block is stored but unused (diffusers' folders leave it out instead).
    """

    vocab_size: int = CLIP_VOCAB_SIZE
    max_length: int = 77
    width: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 512
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int | None = CLIP_EOS_TOKEN_ID
    pooling: str = "eos"
    token_init_std: float = 0.02
    skip_layers: int = 0

    RANGES = {"vocab_size": (1, 1_000_000), "max_length": (1, 4096), "width": (1, 16384), "layers": (1, 256),
              "heads": (1, 1024), "intermediate_size": (1, 65536), "layer_norm_eps": (0.0, 1.0, "above"),
              "token_init_std": (0.0, 100.0, "above"), "skip_layers": (0, 255)}

    def __post_init__(self):
        super().__post_init__()
        if self.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise UserError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if self.width % self.heads:
            raise UserError(f"text encoder width {self.width} is not divisible by its {self.heads} heads")
        if self.skip_layers >= self.layers:
            raise UserError(f"skip_layers {self.skip_layers} leaves none of the text encoder's {self.layers} blocks")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise UserError(f"eos_token_id {self.eos_token_id} is outside the vocabulary of {self.vocab_size} tokens")

    @classmethod
    def sd_v1(cls) -> "TextEncoderConfig":
        """CLIP ViT-L/14's text transformer, Stable Diffusion v1's τ_θ: 123,060,480 parameters."""
        return cls(width=768, layers=12, heads=12, intermediate_size=3072)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x·σ(1.702x), CLIP's sigmoid approximation of GELU (Hendrycks & Gimpel 2016, §2)."""
    return x * torch.sigmoid(1.702 * x)


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)), then x + fc2(act(fc1(LN(x)))): the pre-LN block of GPT-2 and CLIP."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.attention = Attention(c.width, c.heads, c.width // c.heads, bias=True)
        self.norm2 = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(c.width, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.width)
        self.activation = quick_gelu if c.activation == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), causal=True)
        return x + self.fc2(self.activation(self.fc1(self.norm2(x))))


class CLIPTextTransformer(nn.Module):
    """τ_θ(y): token ids [B, L] (L ≤ max_length) -> last hidden state [B, L, width].

    Padding is not masked: as in CLIP and Stable Diffusion, the causal mask already keeps
    every token from seeing the padding that follows it.
    """

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = uninitialised_embedding(c.vocab_size, c.width)  # set by _init_weights
        self.position_embedding = nn.Parameter(torch.empty(c.max_length, c.width))
        self.blocks = nn.ModuleList(TransformerBlock(c) for _ in range(c.layers))
        self.final_norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        if not self.position_embedding.is_meta:  # on meta it is built to be loaded: nothing to initialise
            self._init_weights()

    def _init_weights(self):
        """CLIP's initialisation (its released `model.py`): N(0, s²) weights, zero biases.

        s is 0.02 for tokens (`token_init_std`), 0.01 for positions, width^-1/2 for Q, K, V, (2·width)^-1/2
        for fc1, and width^-1/2·(2·layers)^-1/2 for the two projections that end a residual
        branch, so the residual stream's variance does not grow with depth.
        """
        c = self.config
        branch_end_std = c.width**-0.5 * (2 * c.layers) ** -0.5
        nn.init.normal_(self.token_embedding.weight, std=c.token_init_std)
        nn.init.normal_(self.position_embedding, std=0.01)
        for block in self.blocks:
            attention = block.attention
            stds = [(attention.to_q, c.width**-0.5), (attention.to_k, c.width**-0.5), (attention.to_v, c.width**-0.5),
                    (attention.to_out, branch_end_std), (block.fc1, (2 * c.width) ** -0.5), (block.fc2, branch_end_std)]
            for linear, std in stds:
                nn.init.normal_(linear.weight, std=std)
                nn.init.zeros_(linear.bias)

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """The final norm of the last used block's hidden state; `clip_skip` N > 1 stops N - 1 blocks
        earlier still (AUTOMATIC1111's "Clip skip", 1 = off)."""
        length, limit = input_ids.shape[-1], self.config.max_length
        if length > limit:
            raise UserError(f"the prompt is {length} tokens long; this text encoder reads at most {limit}")
        used = len(self.blocks) - self.config.skip_layers - (clip_skip - 1)
        if not 1 <= used <= len(self.blocks) - self.config.skip_layers:
            raise UserError(f"clip skip {clip_skip} must be from 1 to {len(self.blocks) - self.config.skip_layers} "
                            "for this text encoder")
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        for block in self.blocks[:used]:
            x = block(x)
        return self.final_norm(x)

    def end_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B]: each row's end-of-text position, the first of `config.eos_token_id`, or of the
        row's highest id when that is None (see `TextEncoderConfig`)."""
        eos = self.config.eos_token_id
        if eos is None:
            return input_ids.argmax(dim=-1)  # the first of equal maxima
        is_eos = input_ids == eos
        if not is_eos.any(dim=-1).all():
            raise UserError(f"a row of token ids has no end-of-text token ({eos}) to pool at")
        return is_eos.int().argmax(dim=-1)

    def pool(self, last_hidden_state: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The pooled output [B, width]: each row's hidden state at its end-of-text token, or
        with `pooling="mean"` the mean of its states up to and including that token."""
        if self.config.pooling == "mean":
            mask = self.padding_mask(input_ids).to(last_hidden_state.dtype)[..., None]
            return (last_hidden_state * mask).sum(1) / mask.sum(1)
        positions = self.end_positions(input_ids)
        return last_hidden_state[torch.arange(len(positions), device=positions.device), positions]

    def padding_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L], True up to and including each row's end-of-text token, False on the padding after it."""
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return positions[None, :] <= self.end_positions(input_ids)[:, None]

