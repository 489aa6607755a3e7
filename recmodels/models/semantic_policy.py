"""The generative recommender over semantic-ID tokens: a causal transformer with a key/value cache.

Same nanoGPT style as `recmodels.models.policy` (pre-LN blocks, learned positions, tied embeddings), but an
item is L+1 code tokens (see `recmodels.tokenization.semantic_ids.TokenLayout`), so generating one
takes L+1 steps. Two details make incremental decoding exact:
- positions count real tokens from the left (padding is skipped), so appending a token never
  shifts the positions of the tokens before it and left padding does not change any output;
- logits are level-aware: after a token of level l only tokens of level l+1 (mod L+1) may follow
  (after padding: level 0), every other logit is -inf. The loss is therefore the NLL of each code
  given the codes before it, and log pi(item) is the sum of its L+1 code log-probs.

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
from recmodels.models.policy import CausalSelfAttention, PolicyConfig, init_weights
from recmodels.tokenization.semantic_ids import TokenLayout


@dataclass
class SemanticPolicyConfig:
    level_sizes: tuple[int, ...]  # codes per level, the last one the disambiguation codes
    max_len: int = 50  # history items; positions cover max_len + 1 items of L+1 tokens
    # the atomic policy's size, so that the two tokenizations are compared at one model size
    d_model: int = PolicyConfig.d_model
    n_layers: int = PolicyConfig.n_layers
    n_heads: int = PolicyConfig.n_heads
    dropout: float = PolicyConfig.dropout

    def __post_init__(self):
        self.level_sizes = tuple(int(s) for s in self.level_sizes)

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.level_sizes)

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def n_positions(self) -> int:
        return (self.max_len + 1) * len(self.level_sizes)


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


class SemanticPolicy(nn.Module):
    def __init__(self, cfg: SemanticPolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = cfg.layout
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        levels = self.layout.token_levels()  # [V], -1 = padding
        next_level = torch.where(levels < 0, 0, (levels + 1) % self.layout.n_levels)
        # level_allowed[l, v]: token v is of level l
        level_allowed = levels[None, :] == torch.arange(self.layout.n_levels)[:, None]
        self.register_buffer("token_level", levels, persistent=False)
        self.register_buffer("next_level", next_level, persistent=False)
        self.register_buffer("level_allowed", level_allowed, persistent=False)
        self.apply(init_weights)

    @property
    def max_history_tokens(self) -> int:
        return self.cfg.max_len * self.layout.n_levels

    def check_tokens(self, tokens: torch.Tensor, what: str = "tokens") -> None:
        """Raise unless `tokens` is [B, S] of ids inside the vocabulary."""
        if tokens.dim() != 2:
            raise ValueError(f"{what} must be [B, S] token ids, got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(f"{what} hold ids outside 0..{self.cfg.vocab_size - 1} "
                             f"(min {int(tokens.min())}, max {int(tokens.max())})")

    def hidden(self, tokens: torch.Tensor):
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

    def logits(self, hidden: torch.Tensor, last_tokens: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] after tokens `last_tokens` [...] -> logits [..., V], other levels at -inf."""
        logits = hidden @ self.tok_emb.weight.T
        return logits.masked_fill(~self.level_allowed[self.next_level[last_tokens]], float("-inf"))

    def target_logits(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] at the n positions of tokens [B, S] whose target [B, S] is not padding 0 (other
        levels at -inf): only those are projected onto the vocabulary (windows are often mostly padding)."""
        real = targets != 0
        return self.logits(self.hidden(tokens)[0][real], tokens[real])

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """tokens [B, S] -> logits [B, S, V]; with targets [B, S] (0 = ignore) also the mean code NLL."""
        self.check_tokens(tokens)
        logits = self.logits(self.hidden(tokens)[0], tokens)
        loss = None
        if targets is not None:
            if targets.shape != tokens.shape:
                raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, "
                                 f"got {tuple(targets.shape)}")
            self.check_tokens(targets, "targets")
            wrong = (targets != 0) & (self.token_level[targets] != self.next_level[tokens])
            if wrong.any():
                b, s = (int(i) for i in torch.nonzero(wrong)[0])
                raise ValueError(f"target token {int(targets[b, s])} at row {b}, position {s} is not of the "
                                 f"level that follows token {int(tokens[b, s])}")
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=0)
        return logits, loss

    def next_token_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] -> logits of the next token [B, V] (full forward, no cache)."""
        self.check_tokens(tokens)
        return self.logits(self.hidden(tokens)[0][:, -1], tokens[:, -1])

    def clip_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last max_len items of token histories [B, S], S a multiple of L+1."""
        if tokens.shape[1] % self.layout.n_levels:
            raise ValueError(f"a history of whole items has a multiple of {self.layout.n_levels} tokens, "
                             f"got {tokens.shape[1]}")
        return tokens[:, -self.max_history_tokens:]

    def prefill(self, tokens: torch.Tensor) -> KVCache:
        """Run histories [B, S] (whole items, left-padded) once; the cache holds one beam per row."""
        self.check_tokens(tokens)
        if tokens.shape[1] == 0:
            raise ValueError("histories have no token slots; left-pad an empty history with 0")
        tokens = self.clip_history(tokens)
        h, keys, values = self.hidden(tokens)
        B, H = tokens.shape[0], self.cfg.n_heads
        empty = [k.new_zeros(B, H, 1, 0, self.cfg.d_model // H) for k in keys]
        real = tokens != 0
        return KVCache(keys, values, real, real.sum(dim=1), empty, list(empty),
                       self.logits(h[:, -1], tokens[:, -1]))

    def step(self, last_tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """Append last_tokens [B * K] (K beams per history) -> (next-token logits [B * K, V], cache)."""
        B, K = cache.valid.shape[0], cache.n_beams
        if last_tokens.shape != (B * K,):
            raise ValueError(f"last_tokens must be [{B * K}] (B={B} histories x K={K} beams), "
                             f"got {tuple(last_tokens.shape)}")
        if int(last_tokens.min()) < 1 or int(last_tokens.max()) >= self.cfg.vocab_size:
            raise ValueError(f"last_tokens must be code tokens 1..{self.cfg.vocab_size - 1}")
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
