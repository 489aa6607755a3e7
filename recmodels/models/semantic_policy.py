"""The generative recommender over semantic-ID tokens: an item is L+1 code tokens.

Same nanoGPT style as `recmodels.models.policy` (pre-LN blocks, learned positions, tied embeddings). A
sequence of tokens is whole items, left-padded with 0, then possibly the first codes of one more item,
so the token at position t is of level t mod (L+1) (see `recmodels.tokenization.semantic_ids.TokenLayout`).
Logits are level-aware: after a token of level l only tokens of level l+1 (mod L+1) may follow (after
padding: level 0), every other logit is -inf. The loss is therefore the NLL of each code given the codes
before it, and log pi(item) is the sum of its L+1 code log-probs.

`SemanticPolicy(cfg)` builds the trunk `cfg.trunk` names:
- "items" (the default): the transformer reads one position per item, the sum of its code embeddings,
  as the atomic policy does; a small code head turns the context before an item and the item's codes so
  far into the next code's logits (`ItemTrunkSemanticPolicy`, below). Training and decoding cost about
  what the atomic policy costs: the trunk is as long as the item history, not L+1 times longer, and a
  generated code never goes through the transformer.
- "tokens": the transformer reads every code token, with a key/value cache for decoding
  (`semantic_token_trunk.TokenTrunkSemanticPolicy`, the policy before "items"; checkpoints written then
  have no `trunk` field and load as it).

Decoding: `prefill(tokens)` reads the history once; `step(last_tokens, cache)` appends one token per row;
rows of a step may be several beams (or samples) per history (`cache.expand(k)`, `cache.select(parents)`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from recmodels.models.policy import SEEN_BIAS_SCALE, Block, PolicyConfig, init_weights
from recmodels.tokenization.semantic_ids import TokenLayout

TRUNKS = ("items", "tokens")


@dataclass
class SemanticPolicyConfig:
    level_sizes: tuple[int, ...]  # codes per level, the last one the disambiguation codes
    max_len: int = 50  # history items
    # the atomic policy's size, so that the two tokenizations are compared at one model size
    d_model: int = PolicyConfig.d_model
    n_layers: int = PolicyConfig.n_layers
    n_heads: int = PolicyConfig.n_heads
    dropout: float = PolicyConfig.dropout
    trunk: str = "items"  # what the transformer reads: one position per item, or every code token
    # "items" trunk: rows per code level >= 1 of a table of prefix embeddings (0: none); a code then also adds the
    # embedding of the prefix it completes, hashed into this many rows where a level has more prefixes
    prefix_buckets: int = 0
    # "items" trunk with prefix embeddings (item_prefixes or prefix_buckets): a code's logit of level >= 1 also scores
    # the prefix it would complete, state . prefix_emb[that prefix] (tied, as the code's own logit is
    # state . tok_emb[code]): a code shared by unrelated prefixes gets a logit of its own under each, and the last
    # level one per item (on by default with item_prefixes: docs/results-semantic-ids.md "Closing the gap")
    prefix_logits: bool = True
    # "items" trunk: the prefix embeddings have one row per prefix of a real item instead of prefix_buckets hashed
    # rows, so no two real prefixes share a row and any other prefix adds nothing (to the input or, with
    # prefix_logits, to the logits: only real items' prefixes are scored); the policy holds the n_items code tuples
    # (`set_items`, done by the semantic tokenization when it builds the policy)
    item_prefixes: bool = True
    # item_prefixes with prefix_logits: a code of level >= 1 that completes no real item's prefix scores
    # state . (the level's row 0, learned) instead of nothing, so that training pushes every such code down at once
    # and the policy learns which codes lead to no item (unconstrained hallucination; ignored without both)
    other_prefix_logit: bool = True
    # "items" trunk: per level l, one learned logit added to a code once for each item in the input whose codes
    # 0..l the code would repeat (the atomic policy's seen_bias, over code prefixes; at the last level an item's
    # earlier occurrences), so that the policy can learn not to re-recommend what the user has consumed
    seen_bias: bool = True
    n_items: int = 0  # the items the codes cover (the tokenization's vocabulary fills it; item_prefixes needs it)

    # what a saved config without a field means: checkpoints written before `trunk` existed read every token, and
    # before `prefix_logits` / `item_prefixes` / `other_prefix_logit` / `seen_bias` existed had none of them
    SAVED_WITHOUT: ClassVar[dict] = {"trunk": "tokens", "prefix_logits": False, "item_prefixes": False,
                                     "other_prefix_logit": False, "seen_bias": False}

    def __post_init__(self):
        self.level_sizes = tuple(int(s) for s in self.level_sizes)
        if self.trunk not in TRUNKS:
            raise ValueError(f"SemanticPolicyConfig.trunk must be one of {TRUNKS}, got {self.trunk!r}")
        if self.prefix_buckets < 0 or (self.prefix_buckets and self.trunk != "items"):
            raise ValueError(f"SemanticPolicyConfig.prefix_buckets must be >= 0 and needs trunk='items', got "
                             f"{self.prefix_buckets} with trunk={self.trunk!r}")
        if self.item_prefixes and (self.trunk != "items" or self.prefix_buckets or self.n_items < 1):
            raise ValueError(f"SemanticPolicyConfig.item_prefixes (on by default) needs trunk='items', "
                             f"prefix_buckets=0 and n_items >= 1, got trunk={self.trunk!r}, "
                             f"prefix_buckets={self.prefix_buckets}, n_items={self.n_items}: pass n_items, or "
                             f"item_prefixes=False (and prefix_logits=False without prefix_buckets)")
        if self.prefix_logits and not (self.prefix_buckets or self.item_prefixes):
            raise ValueError("SemanticPolicyConfig.prefix_logits needs prefix embeddings: set prefix_buckets > 0 "
                             "or item_prefixes")

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.level_sizes)

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def n_positions(self) -> int:
        """Token positions of the "tokens" trunk: max_len + 1 items of L+1 tokens."""
        return (self.max_len + 1) * len(self.level_sizes)


class SemanticPolicy(nn.Module):
    """What both trunks share: the code layout, level-aware logits, the loss and the input checks.

    A trunk implements `hidden(tokens, at)` (the state that predicts the token after each position),
    `prefill(tokens)` and `step(last_tokens, cache)`; `tok_emb` is its token embedding (tied output).
    """

    def __new__(cls, cfg: SemanticPolicyConfig | None = None, *args, **kwargs):
        if cls is SemanticPolicy and cfg is not None:  # the trunk the config names
            if cfg.trunk == "tokens":
                from recmodels.models.semantic_token_trunk import TokenTrunkSemanticPolicy as cls
            else:
                cls = ItemTrunkSemanticPolicy
        return super().__new__(cls)

    def __init__(self, cfg: SemanticPolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = cfg.layout
        levels = self.layout.token_levels()  # [V], -1 = padding
        next_level = torch.where(levels < 0, 0, (levels + 1) % self.layout.n_levels)
        # level_allowed[l, v]: token v is of level l
        level_allowed = levels[None, :] == torch.arange(self.layout.n_levels)[:, None]
        self.register_buffer("token_level", levels, persistent=False)
        self.register_buffer("next_level", next_level, persistent=False)
        self.register_buffer("level_allowed", level_allowed, persistent=False)

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

    def clip_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last max_len items of token histories [B, S], S a multiple of L+1."""
        if tokens.shape[1] % self.layout.n_levels:
            raise ValueError(f"a history of whole items has a multiple of {self.layout.n_levels} tokens, "
                             f"got {tokens.shape[1]}")
        return tokens[:, -self.max_history_tokens:]

    def prefill_history(self, tokens: torch.Tensor) -> torch.Tensor:
        """The histories [B, S] a `prefill` reads: checked, non-empty, clipped to the last max_len items."""
        self.check_tokens(tokens)
        if tokens.shape[1] == 0:
            raise ValueError("histories have no token slots; left-pad an empty history with 0")
        return self.clip_history(tokens)

    def check_step(self, last_tokens: torch.Tensor, B: int, K: int) -> None:
        """Raise unless `last_tokens` holds one code token per beam: [B * K] for B histories x K beams."""
        if last_tokens.shape != (B * K,):
            raise ValueError(f"last_tokens must be [{B * K}] (B={B} histories x K={K} beams), "
                             f"got {tuple(last_tokens.shape)}")
        if int(last_tokens.min()) < 1 or int(last_tokens.max()) >= self.cfg.vocab_size:
            raise ValueError(f"last_tokens must be code tokens 1..{self.cfg.vocab_size - 1}")

    def hidden(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, S] -> the state [B, S, d] that predicts the token after each position (only the
        positions where the bool mask `at` [B, S] is True: [n, d])."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor, last_tokens: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] after tokens `last_tokens` [...] -> logits [..., V], other levels at -inf."""
        logits = hidden @ self.tok_emb.weight.T
        return logits.masked_fill(~self.level_allowed[self.next_level[last_tokens]], float("-inf"))

    def position_logits(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, S] -> the next token's logits after each position [B, S, V] (only where the bool mask
        `at` [B, S] is True: [n, V]), other levels at -inf."""
        return self.logits(self.hidden(tokens, at=at), tokens if at is None else tokens[at])

    def target_logits(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] at the n positions of tokens [B, S] whose target [B, S] is not padding 0 (other
        levels at -inf): only those are decoded (windows are often mostly padding)."""
        return self.position_logits(tokens, at=targets != 0)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """tokens [B, S] -> logits [B, S, V]; with targets [B, S] (0 = ignore) also the mean code NLL."""
        self.check_tokens(tokens)
        logits = self.position_logits(tokens)
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
        last = torch.zeros_like(tokens, dtype=torch.bool)
        last[:, -1] = True
        return self.position_logits(tokens, at=last)


@dataclass
class ItemCache:
    """What decoding carries for the "items" trunk: per beam, the context of the item it is generating and
    the sum of that item's code embeddings so far (no keys/values: a code step never enters the trunk)."""

    history: torch.Tensor  # [B, S] the histories' tokens (whole items), read again only if an item completes
    generated: torch.Tensor  # [B, K, t] the tokens each beam generated
    context: torch.Tensor  # [B, K, d] the trunk's state before the item each beam is generating
    prefix: torch.Tensor  # [B, K, d] the sum of that item's code embeddings so far
    logits: torch.Tensor  # [B * K, V] next-token logits after each beam's last token

    @property
    def n_beams(self) -> int:
        return self.generated.shape[1]

    def expand(self, k: int) -> "ItemCache":
        """Each of the B rows repeated as k beams (rows b*k .. b*k+k-1); needs one beam per row."""
        if self.n_beams != 1:
            raise ValueError(f"expand needs one beam per history, the cache holds {self.n_beams}")
        rep = lambda t: t.repeat_interleave(k, dim=1)  # noqa: E731
        return ItemCache(self.history, rep(self.generated), rep(self.context), rep(self.prefix),
                         self.logits.repeat_interleave(k, dim=0))

    def select(self, parents: torch.Tensor) -> "ItemCache":
        """Keep beams `parents` [B, K'] (indices among each row's K beams), in that order."""
        B, K = self.history.shape[0], self.n_beams
        if parents.dim() != 2 or parents.shape[0] != B:
            raise ValueError(f"parents must be [{B}, K'], got {tuple(parents.shape)}")
        pick = lambda t: t.gather(1, parents[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        logits = pick(self.logits.view(B, K, -1))
        return ItemCache(self.history, pick(self.generated), pick(self.context), pick(self.prefix),
                         logits.reshape(-1, logits.shape[-1]))


class ItemTrunkSemanticPolicy(SemanticPolicy):
    """One trunk position per item (the sum of its code embeddings); a code head decodes the next item.

    The state that predicts code l of item j is head(context_j + level_emb[l] + sum of item j's codes < l),
    where context_j is the trunk's output after item j-1 (a learned start state when nothing real precedes),
    and head is a residual MLP; logits go through the tied token embedding.

    With `prefix_buckets`, a code of level l >= 1 adds, to its own embedding, the embedding of the prefix
    (codes 0..l) it completes: items that share a prefix share those rows, and the deepest prefixes give an
    item nearly its own embedding (prefix n-gram embeddings). A level with at most `prefix_buckets` prefixes
    indexes its rows by the prefix itself; a larger one hashes it. With `item_prefixes` instead, a level's rows
    are the distinct prefixes of the items the policy holds (`set_items`), in order after a row 0 for every
    other prefix, which adds nothing to the input. With `prefix_logits` as well, the logit of a code of level
    l >= 1 adds state . (the row of the prefix it would complete), so that the output, like the input, tells apart
    one code under unrelated prefixes; a code that completes no real prefix adds state . (row 0) with
    `other_prefix_logit` (learned, so training can push such codes down), nothing without. With `seen_bias`, a
    code of level l adds a learned logit per level once for each input item whose codes 0..l it would repeat
    (`seen_logits`), as the atomic policy's seen bias does per item.
    """

    def __init__(self, cfg: SemanticPolicyConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.start = nn.Parameter(torch.zeros(d))  # the context before a user's first item
        self.level_emb = nn.Embedding(self.layout.n_levels, d)  # the level of the code to predict
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                  nn.Dropout(cfg.dropout))
        self.ln_head = nn.LayerNorm(d)
        buckets, L1 = cfg.prefix_buckets, self.layout.n_levels
        # rows per level >= 1; with item_prefixes, row 0 of a level stands for every prefix of no real item
        self.level_rows = cfg.n_items + 1 if cfg.item_prefixes else buckets
        self.prefix_emb = nn.Embedding((L1 - 1) * self.level_rows, d) if self.level_rows else None
        # item_prefixes: the real items' code tuples [n_items, L+1] (codes, not tokens), saved with the weights
        self.register_buffer("item_codes", torch.zeros(cfg.n_items, L1, dtype=torch.long) if cfg.item_prefixes
                             else None)
        if cfg.item_prefixes:  # their prefixes' sorted keys per level, kept in step with item_codes
            for level in range(1, L1):
                self.register_buffer(f"prefix_keys_{level}", torch.zeros(0, dtype=torch.long), persistent=False)
            self.index_item_prefixes()
            self.register_load_state_dict_post_hook(lambda module, _: module.index_item_prefixes())
        self.register_buffer("offsets", torch.tensor(self.layout.offsets), persistent=False)
        sizes = self.layout.level_sizes
        # a level whose prefixes fit the rows indexes them as they are, a larger one hashes them
        self.register_buffer("exact", torch.tensor([math.prod(sizes[:l + 1]) <= buckets for l in range(L1)]),
                             persistent=False)
        self.apply(init_weights)
        nn.init.normal_(self.start, std=0.02)
        if cfg.seen_bias:  # SEEN_BIAS_SCALE * seen_logit[l]: the logit of level l's codes per seen item they repeat
            self.seen_logit = nn.Parameter(torch.zeros(L1))

    def code_embeddings(self, items: torch.Tensor) -> torch.Tensor:
        """Whole or partial items [..., L+1] of tokens (0 = none yet) -> what each code adds [..., L+1, d]: its
        token embedding, plus with `prefix_buckets` the embedding of the prefix it completes (levels >= 1)."""
        emb = self.tok_emb(items)
        if self.prefix_emb is None:
            return emb
        keys = self.layout.prefix_keys((items - self.offsets).clamp(min=0))  # [..., L+2]
        rows, real = [], []
        for level in range(1, self.layout.n_levels):
            row, has_row = self.prefix_rows(level, keys[..., level + 1].contiguous())  # the prefix of codes 0..level
            rows.append(row)
            real.append(has_row)
        keep = (items[..., 1:] != 0) & torch.stack(real, dim=-1)  # [..., L]
        prefix = self.prefix_emb(torch.stack(rows, dim=-1)) * keep[..., None]  # [..., L, d]
        return emb + F.pad(prefix, (0, 0, 1, 0))

    def set_items(self, codes: torch.Tensor) -> None:
        """Hold the code tuples [n_items, L+1] (item_idx 1..n_items in order; codes, not tokens) of the real items
        whose prefixes get rows (`item_prefixes`)."""
        if self.item_codes is None:
            raise ValueError("set_items needs SemanticPolicyConfig.item_prefixes")
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.shape != self.item_codes.shape:
            raise ValueError(f"set_items expects codes of shape {tuple(self.item_codes.shape)} "
                             f"(n_items x levels), got {tuple(codes.shape)}")
        self.item_codes.copy_(codes)
        self.index_item_prefixes()

    def index_item_prefixes(self) -> None:
        """Sort the keys of the held items' prefixes once per level (after `set_items` and loading weights)."""
        keys = self.layout.prefix_keys(self.item_codes)  # [n_items, L+2]
        for level in range(1, self.layout.n_levels):
            setattr(self, f"prefix_keys_{level}", torch.unique(keys[:, level + 1]))

    def item_prefix_keys(self, level: int) -> torch.Tensor:
        """The sorted distinct mixed-radix numbers of the real items' prefixes of codes 0..level."""
        return getattr(self, f"prefix_keys_{level}")

    def prefix_rows(self, level: int, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The `prefix_emb` rows of the prefixes of codes 0..level (level >= 1) whose mixed-radix numbers are `key`,
        and whether each has a row of its own (always with hashed rows; with item_prefixes, a real item's prefix)."""
        first = (level - 1) * self.level_rows
        if self.item_codes is None:
            hashed = (key * 2654435761) % self.level_rows  # Knuth's multiplicative hash
            return torch.where(self.exact[level], key, hashed) + first, torch.ones_like(key, dtype=torch.bool)
        real = self.item_prefix_keys(level)
        at = torch.searchsorted(real, key).clamp(max=len(real) - 1)
        found = real[at] == key
        return torch.where(found, at + 1, 0) + first, found

    def prefix_code_logits(self, h: torch.Tensor, partial: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """States h [n, d] that predict a code of level `level` [n] of an item whose codes so far are the tokens
        `partial` [n, L+1] (0 from `level` on) -> what `prefix_logits` adds to their logits [n, V]: for each code
        c of that level, h . prefix_emb[row of (codes so far, c)] (nothing at level 0)."""
        before = self.layout.prefix_keys((partial - self.offsets).clamp(min=0))  # [n, L+2]: at l, codes 0..l-1
        out = h.new_zeros(h.shape[0], self.cfg.vocab_size)
        for l, (offset, size) in enumerate(zip(self.layout.offsets, self.layout.level_sizes)):
            if l == 0:
                continue
            at = level == l
            keys = before[at, l, None] * size + torch.arange(size, device=h.device)  # [m, size] the prefixes scored
            if self.item_codes is not None:  # only real items' prefixes have rows of their own
                rows, real = self.prefix_rows(l, keys)
                base = (l - 1) * self.level_rows  # row 0 of the level: every other prefix
                other = self.cfg.other_prefix_logit
                if l == 1:  # most level-1 codes complete a real prefix: one matmul over the level's rows
                    every = self.prefix_emb.weight[base:base + 1 + len(self.item_prefix_keys(l))]
                    scores = (h[at] @ every.T).gather(1, rows - base)
                    scores = scores if other else scores * real
                else:  # a deeper prefix has a real child or two: score (state, real child) pairs
                    i, c = real.nonzero(as_tuple=True)
                    fill = (h[at] @ self.prefix_emb.weight[base]).to(h.dtype) if other else h.new_zeros(len(keys))
                    scores = fill[:, None].expand(keys.shape).clone().index_put(
                        (i, c), (h[at][i] * self.prefix_emb(rows[i, c])).sum(-1))
            elif self.exact[l]:  # the level's rows are its prefixes in key order: one matmul, then each its own
                first = (l - 1) * self.level_rows
                every = self.prefix_emb.weight[first:first + math.prod(self.layout.level_sizes[:l + 1])]
                scores = (h[at] @ every.T).gather(1, keys)
            else:
                scores = torch.einsum("md,mcd->mc", h[at], self.prefix_emb(self.prefix_rows(l, keys)[0]))
            out[at, offset:offset + size] = scores.to(out.dtype)  # under autocast the matmul gives bf16
        return out

    def contexts(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] -> contexts [B, n+1, d] of its n = S // (L+1) whole items: row j is the trunk's state
        before item j (row n: before the item after them), the start state where no real item precedes."""
        B, S = tokens.shape
        L1 = self.layout.n_levels
        n = S // L1
        if n > self.cfg.max_len:
            raise ValueError(f"a row holds {n} whole items, more than max_len={self.cfg.max_len}")
        items = tokens[:, :n * L1].reshape(B, n, L1)
        real = items[..., 0] != 0  # [B, n]
        # real items count from 0 at the left, so appending an item never moves the ones before it
        pos = (real.cumsum(dim=1) - 1).clamp(min=0)
        x = self.drop(self.code_embeddings(items).sum(dim=2) + self.pos_emb(pos))  # [B, n, d]
        # item j sees real items <= j, and itself (so that a padding row is never empty)
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=tokens.device))
        allowed = ((causal & real[:, None, :]) | torch.eye(n, dtype=torch.bool, device=tokens.device))[:, None]
        for block in self.blocks:
            x = block(x, allowed)
        after = torch.cat([self.start.expand(B, 1, -1), self.ln_f(x)], dim=1)  # [B, n+1, d]: after item j-1
        preceded = torch.cat([real.new_zeros(B, 1), real], dim=1)  # [B, n+1]: item j-1 is real
        return torch.where(preceded[..., None], after, self.start)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The code head: [..., d] -> [..., d]."""
        return self.ln_head(z + self.head(z))

    def hidden(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        z, _ = self.code_states(tokens)
        return self.decode(z if at is None else z[at])

    def position_logits(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        if not (self.cfg.prefix_logits or self.cfg.seen_bias):
            return super().position_logits(tokens, at)
        z, partial = self.code_states(tokens)
        every = at is None
        at = torch.ones_like(tokens, dtype=torch.bool) if every else at
        h, last = self.decode(z[at]), tokens[at]  # [n, d], [n]
        logits = self.logits(h, last)
        if self.cfg.prefix_logits:
            logits = logits + self.prefix_code_logits(h, partial[at], self.next_level[last])
        if self.cfg.seen_bias:  # the state at position t predicts item t // (L+1) (+1 where t ends an item)
            S, L1 = tokens.shape[1], self.layout.n_levels
            items = F.pad(tokens, (0, -S % L1)).view(tokens.shape[0], -1, L1)  # [B, n, L+1] the input's items
            t = torch.arange(S, device=tokens.device)
            before = torch.arange(items.shape[1], device=tokens.device) < (t // L1 + (t % L1 == L1 - 1))[:, None]
            rows, s = at.nonzero(as_tuple=True)  # the decoded states, in the order of tokens[at]
            logits = logits + self.seen_logits(items, rows, partial[at], self.next_level[last], before[s])
        return logits.view(*tokens.shape, -1) if every else logits

    def seen_logits(self, items: torch.Tensor, rows: torch.Tensor, partial: torch.Tensor, level: torch.Tensor,
                    before: torch.Tensor | None = None) -> torch.Tensor:
        """What `seen_bias` adds to the logits of N states that read the input items of rows `rows` [N] of `items`
        [B, n, L+1] (tokens, 0 = padding), of which a state sees those where `before` [N, n] (all without it),
        and predict a code of level `level` [N] of an item whose tokens so far are `partial` [N, L+1] (0 from the
        level on): at each code c of the level, SEEN_BIAS_SCALE * seen_logit[level] times the number of seen
        items whose codes up to the level are (codes so far, c). -> [N, V]"""
        j = torch.arange(items.shape[1], device=items.device)
        keys = self.layout.prefix_keys((items - self.offsets).clamp(min=0))  # [B, n, L+2]: one number per prefix
        so_far = self.layout.prefix_keys((partial - self.offsets).clamp(min=0)).gather(1, level[:, None])  # [N, 1]
        seen = (keys[rows[:, None], j, level[:, None]] == so_far) & (items[rows, :, 0] != 0)  # [N, n]
        seen = seen if before is None else seen & before
        code = items[rows[:, None], j, level[:, None]]  # [N, n] each item's token at the level
        counts = torch.zeros(len(rows), self.cfg.vocab_size, device=items.device)
        counts.scatter_add_(1, code, seen.float())
        return counts * (SEEN_BIAS_SCALE * self.seen_logit)[level][:, None]

    def code_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, S] -> (z [B, S, d], the code head's input that predicts the token after each position;
        partial [B, S, L+1], the tokens of that token's item before it, 0 from its level on)."""
        B, S = tokens.shape
        L1 = self.layout.n_levels
        level = torch.arange(S, device=tokens.device) % L1
        misplaced = (tokens != 0) & (self.token_level[tokens] != level)
        if misplaced.any():
            b, s = (int(i) for i in torch.nonzero(misplaced)[0])
            raise ValueError(f"token {int(tokens[b, s])} at row {b}, position {s} is not of level {int(s % L1)}: "
                             f"a sequence is whole items of {L1} tokens, then the first codes of one more")
        ctx = self.contexts(tokens)  # [B, n+1, d]
        last = level == L1 - 1  # the token after position t starts item t // (L+1) + 1
        item = torch.arange(S, device=tokens.device) // L1 + last.long()
        # the codes of the predicted token's item so far: its tokens up to t (none when t ends an item)
        n1 = ctx.shape[1]
        items = F.pad(tokens, (0, n1 * L1 - S)).view(B, n1, L1)
        emb = self.code_embeddings(items)  # [B, n+1, L+1, d]
        prefix = emb.cumsum(dim=2).view(B, n1 * L1, -1)[:, :S].masked_fill(last[None, :, None], 0.0)
        z = ctx[:, item] + self.level_emb((level + 1) % L1) + prefix  # [B, S, d]
        so_far = (torch.arange(L1, device=tokens.device) <= level[:, None]) & ~last[:, None]  # [S, L+1]
        return z, items[:, item] * so_far

    def step_seen_logits(self, history: torch.Tensor, generated: torch.Tensor, partial: torch.Tensor,
                         level: torch.Tensor) -> torch.Tensor:
        """`seen_logits` of K beams per history [B, S] that generated `generated` [B, K, t] and predict a code of
        level `level` [B * K] after `partial` [B * K, L+1]: each beam sees the history and the items it completed
        (in the last max_len items, as the trunk reads them). -> [B * K, V]"""
        B, K, t = generated.shape
        L1 = self.layout.n_levels
        done = t - t % L1  # the generated tokens of completed items
        if done == 0:  # every beam sees its history alone
            rows = torch.arange(B, device=history.device).repeat_interleave(K)
            return self.seen_logits(history.view(B, -1, L1), rows, partial, level)
        full = torch.cat([history.repeat_interleave(K, dim=0), generated[..., :done].reshape(B * K, -1)], dim=1)
        items = self.clip_history(full).view(B * K, -1, L1)
        return self.seen_logits(items, torch.arange(B * K, device=history.device), partial, level)

    def prefill(self, tokens: torch.Tensor) -> ItemCache:
        """Read histories [B, S] (whole items, left-padded) once; the cache holds one beam per row."""
        tokens = self.prefill_history(tokens)
        context = self.contexts(tokens)[:, -1:]  # [B, 1, d]
        z = context + self.level_emb.weight[0]
        logits = self.logits(self.decode(z)[:, 0], tokens[:, -1])
        if self.cfg.seen_bias:
            items = tokens.view(tokens.shape[0], -1, self.layout.n_levels)
            rows = torch.arange(tokens.shape[0], device=tokens.device)  # each history's first code
            logits = logits + self.seen_logits(items, rows, torch.zeros_like(items[:, 0]), torch.zeros_like(rows))
        return ItemCache(tokens, tokens.new_zeros(tokens.shape[0], 1, 0), context, torch.zeros_like(context), logits)

    def step(self, last_tokens: torch.Tensor, cache: ItemCache) -> tuple[torch.Tensor, ItemCache]:
        """Append last_tokens [B * K] (K beams per history) -> (next-token logits [B * K, V], cache)."""
        B, K = cache.history.shape[0], cache.n_beams
        self.check_step(last_tokens, B, K)
        tokens = last_tokens.view(B, K)
        generated = torch.cat([cache.generated, tokens[..., None]], dim=2)
        level = (generated.shape[2] - 1) % self.layout.n_levels  # the cache starts at an item's first code
        if (self.token_level[tokens] != level).any():
            raise ValueError(f"step {generated.shape[2]} after the history appends codes of level {level}; "
                             f"last_tokens hold tokens of another level")
        item = F.pad(generated[..., generated.shape[2] - 1 - level:], (0, self.layout.n_levels - 1 - level))
        context, prefix = cache.context, cache.prefix + self.code_embeddings(item)[..., level, :]
        if level == self.layout.n_levels - 1:  # every beam completed an item: the trunk reads it
            # (beam search and rollouts stop before this)
            full = torch.cat([cache.history.repeat_interleave(K, dim=0), generated.reshape(B * K, -1)], dim=1)
            context = self.contexts(self.clip_history(full))[:, -1].view(B, K, -1)
            prefix = torch.zeros_like(prefix)
        z = context + self.level_emb(self.next_level[tokens]) + prefix
        h = self.decode(z).reshape(B * K, -1)
        logits = self.logits(h, last_tokens)
        partial = item.reshape(B * K, -1) * (level < self.layout.n_levels - 1)  # none once an item completes
        if self.cfg.prefix_logits:
            logits = logits + self.prefix_code_logits(h, partial, self.next_level[last_tokens])
        if self.cfg.seen_bias:
            logits = logits + self.step_seen_logits(cache.history, generated, partial, self.next_level[last_tokens])
        return logits, ItemCache(cache.history, generated, context, prefix, logits)
