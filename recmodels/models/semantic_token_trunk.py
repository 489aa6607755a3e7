"""The "tokens" trunk of a `SemanticPolicy`: a causal transformer over every code token, with a key/value cache.

The semantic policy before the "items" trunk (`recmodels.models.semantic_policy`); checkpoints written then
load as this class. Two details make incremental decoding exact:
- positions count real tokens from the left (padding is skipped), so appending a token never
  shifts the positions of the tokens before it and left padding does not change any output;
- the logits are the level-aware logits every `SemanticPolicy` shares.

Decoding: `prefill(tokens)` runs the history once and caches its keys/values; `step(last_tokens,
cache)` appends one token per row. Rows of a step may be several beams (or samples) per history:
the history's keys/values are stored once per history and shared by its beams, which attend to it
as extra queries, so beam search never copies the history per beam.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from recmodels.models.policy import Block as PolicyBlock
from recmodels.models.policy import CausalSelfAttention, init_weights
from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig


@dataclass
class KVCache:
    """Keys/values of each history (shared by its beams) and of each beam's generated tokens."""

    keys: list[torch.Tensor]  # per layer [B, H, S, dh], the history
    values: list[torch.Tensor]
    valid: torch.Tensor  # [B, S] bool, real (non-padding) history tokens
    n_real: torch.Tensor  # [B] real history tokens = position of the first generated token
    beam_keys: list[torch.Tensor]  # per layer [B, H, K, t, dh], the t generated tokens of K beams
    beam_values: list[torch.Tensor]
    logits: torch.Tensor  # [B * K, V] next-token logits after each beam's last token

    @property
    def n_beams(self) -> int:
        return self.beam_keys[0].shape[2]

    @property
    def n_generated(self) -> int:
        return self.beam_keys[0].shape[3]

    def expand(self, k: int) -> "KVCache":
        """Each of the B rows repeated as k beams (rows b*k .. b*k+k-1); needs one beam per row."""
        if self.n_beams != 1:
            raise ValueError(f"expand needs one beam per history, the cache holds {self.n_beams}")
        rep = lambda t: t.repeat_interleave(k, dim=2)  # noqa: E731
        return KVCache(self.keys, self.values, self.valid, self.n_real, [rep(t) for t in self.beam_keys],
                       [rep(t) for t in self.beam_values], self.logits.repeat_interleave(k, dim=0))

    def select(self, parents: torch.Tensor) -> "KVCache":
        """Keep beams `parents` [B, K'] (indices among each row's K beams), in that order."""
        B, K = self.valid.shape[0], self.n_beams
        if parents.dim() != 2 or parents.shape[0] != B:
            raise ValueError(f"parents must be [{B}, K'], got {tuple(parents.shape)}")
        def pick(t):  # [B, H, K, t, dh] -> [B, H, K', t, dh]
            idx = parents[:, None, :, None, None].expand(B, t.shape[1], parents.shape[1], t.shape[3], t.shape[4])
            return t.gather(2, idx)
        logits = self.logits.view(B, K, -1).gather(1, parents[..., None].expand(-1, -1, self.logits.shape[-1]))
        return KVCache(self.keys, self.values, self.valid, self.n_real, [pick(t) for t in self.beam_keys],
                       [pick(t) for t in self.beam_values], logits.reshape(-1, logits.shape[-1]))


class CachedSelfAttention(CausalSelfAttention):
    """The policy's self-attention, also returning keys/values and stepping one token per beam."""

    def heads(self, x: torch.Tensor):
        """x [B, T, D] -> q, k, v [B, H, T, dh]."""
        B, T, D = x.shape
        return (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(D, dim=2))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor):
        """Full sequence: x [B, T, D], allowed [B, 1, T, T] -> (out [B, T, D], k, v [B, H, T, dh])."""
        B, T, D = x.shape
        q, k, v = self.heads(x)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D))), k, v

    def step(self, x: torch.Tensor, keys, values, valid, beam_keys, beam_values):
        """One new token per beam: x [B, K, D] -> (out [B, K, D], beam keys/values [B, H, K, t+1, dh])."""
        B, K, D = x.shape
        q, k, v = self.heads(x)  # [B, H, K, dh]: the K beams of a row are K queries on its history
        beam_keys = torch.cat([beam_keys, k.unsqueeze(3)], dim=3)
        beam_values = torch.cat([beam_values, v.unsqueeze(3)], dim=3)
        scale = 1.0 / math.sqrt(q.shape[-1])
        s_hist = (q @ keys.transpose(-1, -2)) * scale  # [B, H, K, S]
        s_hist = s_hist.masked_fill(~valid[:, None, None, :], float("-inf"))
        s_beam = torch.einsum("bhkd,bhktd->bhkt", q, beam_keys) * scale  # [B, H, K, t+1]
        att = torch.cat([s_hist, s_beam], dim=-1).softmax(dim=-1)
        S = keys.shape[2]
        y = att[..., :S] @ values + torch.einsum("bhkt,bhktd->bhkd", att[..., S:], beam_values)
        return self.proj(y.transpose(1, 2).reshape(B, K, D)), beam_keys, beam_values


class Block(PolicyBlock):
    """The policy's pre-LN block with cached attention: forward also returns keys/values."""

    def __init__(self, cfg: SemanticPolicyConfig):
        super().__init__(cfg, attention=CachedSelfAttention(cfg))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor):
        a, k, v = self.attn(self.ln1(x), allowed)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v

    def step(self, x, keys, values, valid, beam_keys, beam_values):
        a, beam_keys, beam_values = self.attn.step(self.ln1(x), keys, values, valid, beam_keys, beam_values)
        x = x + a
        return x + self.mlp(self.ln2(x)), beam_keys, beam_values


class TokenTrunkSemanticPolicy(SemanticPolicy):
    """Every code token is a transformer position; decoding steps each generated code through the blocks."""

    def __init__(self, cfg: SemanticPolicyConfig):
        super().__init__(cfg)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(init_weights)

    def encode(self, tokens: torch.Tensor):
        """tokens [B, S] (left-padded with 0) -> (hidden [B, S, d], per-layer keys, values [B, H, S, dh])."""
        B, S = tokens.shape
        real = tokens != 0
        n_real = real.sum(dim=1)
        if S and int(n_real.max()) > self.cfg.n_positions:
            raise ValueError(f"a row holds {int(n_real.max())} tokens, more than the "
                             f"{self.cfg.n_positions} positions of max_len={self.cfg.max_len} items")
        pos = (real.cumsum(dim=1) - 1).clamp(min=0)  # real tokens count from 0; padding sits at 0
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))
        # query t sees real keys s <= t, and itself (so that a padding row is never empty)
        eye = torch.eye(S, dtype=torch.bool, device=tokens.device)
        allowed = ((torch.tril(torch.ones(S, S, dtype=torch.bool, device=tokens.device)) & real[:, None, :])
                   | eye)[:, None]  # [B, 1, S, S]
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x, allowed)
            keys.append(k)
            values.append(v)
        return self.ln_f(x), keys, values

    def hidden(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(tokens)[0]
        return h if at is None else h[at]

    def prefill(self, tokens: torch.Tensor) -> KVCache:
        """Run histories [B, S] (whole items, left-padded) once; the cache holds one beam per row."""
        tokens = self.prefill_history(tokens)
        h, keys, values = self.encode(tokens)
        B, H = tokens.shape[0], self.cfg.n_heads
        empty = [k.new_zeros(B, H, 1, 0, self.cfg.d_model // H) for k in keys]
        real = tokens != 0
        return KVCache(keys, values, real, real.sum(dim=1), empty, list(empty),
                       self.logits(h[:, -1], tokens[:, -1]))

    def step(self, last_tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Append last_tokens [B * K] (K beams per history) -> (next-token logits [B * K, V], cache)."""
        B, K = cache.valid.shape[0], cache.n_beams
        self.check_step(last_tokens, B, K)
        pos = cache.n_real + cache.n_generated  # [B]
        if int(pos.max()) >= self.cfg.n_positions:
            raise ValueError(f"decoding past the {self.cfg.n_positions} positions of the policy")
        x = self.tok_emb(last_tokens.view(B, K)) + self.pos_emb(pos)[:, None, :]  # [B, K, d]
        beam_keys, beam_values = [], []
        for block, k, v, bk, bv in zip(self.blocks, cache.keys, cache.values, cache.beam_keys, cache.beam_values):
            x, bk, bv = block.step(x, k, v, cache.valid, bk, bv)
            beam_keys.append(bk)
            beam_values.append(bv)
        logits = self.logits(self.ln_f(x).reshape(B * K, -1), last_tokens)
        return logits, KVCache(cache.keys, cache.values, cache.valid, cache.n_real, beam_keys, beam_values, logits)
