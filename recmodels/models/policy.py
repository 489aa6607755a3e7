"""The generative recommender: a decoder-only causal transformer over item tokens.

nanoGPT-style: pre-LN blocks, learned positions (or rotary ones, `positions="rotary"`), input and output
embeddings tied. `block="hstu"` swaps the transformer blocks for HSTU's (module `HSTUBlock`). With the
atomic tokenization each item is one token (item_idx 1..n_items, 0 = padding), so the next-item
distribution is a softmax over the whole catalog and no generated id can be a non-item.

`seen_bias`: one learned logit, added to an item's logit once for each time the item occurs in the input
window (at position t: positions <= t). Where users do not consume an item twice (MovieLens ratings),
training drives it negative and the policy stops re-recommending what the user has just consumed; where
they do, it may turn positive. It is part of the policy, so every ranking, rollout and post-training loss
sees it; items consumed before the window are not in the input and get no bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_weights(m: nn.Module) -> None:
    """GPT-2 style init shared by both policies: N(0, 0.02) weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


SEEN_BIAS_SCALE = 10.0
POSITIONS = ("learned", "rotary")
BLOCKS = ("transformer", "hstu")
ROTARY_BASE = 10_000.0  # RoFormer's


def rotary_angles(T: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim / 2] of the rotary position embedding (RoFormer) at positions 0..T-1."""
    inv_freq = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq  # [T, head_dim / 2]
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, dh] -> x with channel pairs (i, i + dh/2) rotated by their position's angle, so that a query at
    position m and a key at n meet through m - n alone."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@dataclass
class PolicyConfig:
    vocab_size: int  # n_items + 1 (token 0 is padding)
    max_len: int = 50
    d_model: int = 128  # 128 beat 64 on MovieLens-100k, two seeds (docs/experiments-pretraining.md)
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    seen_bias: bool = True  # learn one logit added to the items already in the window (module doc)
    positions: str = "learned"  # "learned": an embedding per window position; "rotary": q, k rotated (RoFormer)
    block: str = "transformer"  # "transformer": attention + MLP (SASRec's); "hstu": HSTU's gated SiLU attention

    # what a saved config without a field means: checkpoints written before `seen_bias` existed have no bias
    SAVED_WITHOUT: ClassVar[dict] = {"seen_bias": False}

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"PolicyConfig.positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"PolicyConfig.block must be one of {BLOCKS}, got {self.block!r}")
        if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"rotary positions need an even head width, got d_model={self.d_model} / "
                             f"n_heads={self.n_heads}")


def check_heads(cfg) -> None:
    """Raise ValueError unless d_model splits into n_heads heads (every attention of both policies needs it)."""
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask (True = may attend)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        check_heads(cfg)
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`rotary`: (cos, sin) of `rotary_angles` to rotate queries and keys by, or None (learned positions)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # [B, H, T, d]
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: PolicyConfig, attention: nn.Module | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = attention if attention is not None else CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed, rotary)
        return x + self.mlp(self.ln2(x))


class HSTUBlock(nn.Module):
    """One HSTU layer (Zhai et al., 2024, "Actions speak louder than words"), dense form: from ln(x), one
    projection to u, v, q, k (SiLU); attention weights SiLU(q.k + relative position bias) / max_len, not a
    softmax, zero where a key may not be seen; the output ln(attention @ v) gated by u, projected, added to x.
    No MLP."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        check_heads(cfg)
        self.n_heads = cfg.n_heads
        self.ln = nn.LayerNorm(cfg.d_model)
        self.uvqk = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.distance_bias = nn.Parameter(torch.zeros(cfg.max_len))  # by how far back the key is (0 = itself)
        self.scale = 1.0 / cfg.max_len  # HSTU's 1 / n: the same for every window length, so left padding is neutral

    def forward(self, x: torch.Tensor, allowed: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, D = x.shape
        u, v, q, k = F.silu(self.uvqk(self.ln(x))).split(D, dim=2)
        v, q, k = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (v, q, k))  # [B, H, T, d]
        if rotary is not None:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        pos = torch.arange(T, device=x.device)
        distance = (pos[:, None] - pos[None, :]).clamp(min=0)  # [T, T]; keys after the query are masked anyway
        weights = F.silu(q @ k.transpose(-2, -1) + self.distance_bias[distance]) * self.scale  # [B, H, T, T]
        y = (weights * allowed) @ v  # [B, H, T, d]
        y = self.ln_attn(y.transpose(1, 2).reshape(B, T, D)) * u
        return x + self.proj(self.drop(y))


class GenerativePolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        block = HSTUBlock if cfg.block == "hstu" else Block
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(init_weights)
        if cfg.seen_bias:  # SEEN_BIAS_SCALE * seen_logit is the logit added; scaled so that AdamW moves it
            self.seen_logit = nn.Parameter(torch.zeros(()))  # at a logit's pace, not 1e-3 per step
        # added by the output projection: -inf for padding 0, never a next item (not saved with the weights)
        padding_bias = torch.zeros(cfg.vocab_size)
        padding_bias[0] = float("-inf")
        self.register_buffer("padding_bias", padding_bias, persistent=False)

    @property
    def seen_bias_logit(self) -> float | None:
        """The logit the seen bias adds per earlier occurrence (None without a seen bias)."""
        return SEEN_BIAS_SCALE * self.seen_logit.item() if self.cfg.seen_bias else None

    def hidden(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, T] (left-padded with 0) -> hidden states [B, T, d]."""
        B, T = items.shape
        x = self.tok_emb(items)
        rotary = None
        if self.cfg.positions == "learned":  # right-aligned: the last position always has embedding max_len - 1
            x = x + self.pos_emb(torch.arange(T, device=items.device) + self.cfg.max_len - T)
        else:
            rotary = rotary_angles(T, self.cfg.d_model // self.cfg.n_heads, items.device)
        x = self.drop(x)
        # query t may see real keys s <= t; every query also sees itself, so that a padded
        # position never has an empty row (which would turn attention into NaN)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=items.device))
        allowed = causal & (items != 0)[:, None, :]  # [B, T, T]
        allowed = (allowed | torch.eye(T, dtype=torch.bool, device=items.device))[:, None]  # [B, 1, T, T]
        for block in self.blocks:
            x = block(x, allowed, rotary)
        return self.ln_f(x)

    def logits(self, hidden: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., d] -> item logits [..., V] through the tied embedding; padding is never a next item.
        `seen` [..., S] (item ids, 0 = none): the items already consumed at each row, given the seen bias."""
        # padding's -inf comes in through the projection's bias: the same logits and gradients as setting
        # column 0 afterwards, without that assignment's copy of the [..., V] gradient in backward
        logits = F.linear(hidden, self.tok_emb.weight, self.padding_bias).float()  # fp32 under bf16 autocast too
        if seen is not None and self.cfg.seen_bias:  # the bias once per earlier consumption of the item
            logits.scatter_add_(-1, seen, (SEEN_BIAS_SCALE * self.seen_logit).expand(seen.shape))
        return logits

    def target_logits(self, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] at the n positions of items [B, T] whose target [B, T] is not padding 0: only those
        are projected onto the catalog (training windows are often mostly padding)."""
        at = targets != 0
        return self.logits(self.hidden(items)[at], self._seen_so_far(items)[at] if self.cfg.seen_bias else None)

    @staticmethod
    def _seen_so_far(items: torch.Tensor) -> torch.Tensor:
        """items [B, T] -> [B, T, T]: row t holds the items at positions <= t (0 after t)."""
        T = items.shape[1]
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=items.device))
        return items[:, None, :] * causal  # [B, T, T]

    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None):
        """items [B, T] -> logits [B, T, V]; with targets [B, T] (0 = ignore) also the mean NLL."""
        logits = self.logits(self.hidden(items), self._seen_so_far(items) if self.cfg.seen_bias else None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=0)
        return logits, loss

    def next_item_logits(self, history: torch.Tensor) -> torch.Tensor:
        """history [B, T] -> logits of the next item [B, V] (read at the last position)."""
        window = history[:, -self.cfg.max_len:]
        return self.logits(self.hidden(window)[:, -1, :], window if self.cfg.seen_bias else None)
