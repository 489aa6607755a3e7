"""Generating items as code tuples from a `SemanticPolicy`: beam search, sampling, tuple log-probs.

Every generator decodes the L+1 codes of an item level by level from one distribution per step:
the policy's level-l codes, restricted to
- the prefix trie of real items when a `trie` is given (constrained: every result is an item;
  without it, unconstrained decoding may produce tuples that are no item, i.e. hallucinations);
- tuples not in `exclude` (per history row, an array [n, L+1] of code tuples, e.g. the codes of the
  user's already-seen items `semantic_ids.codes[seen]`). A code is masked at any level once every
  tuple under the resulting prefix is excluded (for constrained decoding: every *item* under it),
  so beams never walk into a dead end and the top-K holds K admissible tuples.

Samples and `tuple_log_probs` renormalize each level over what is left: log pi(tuple) = sum of the L+1
masked, renormalized code log-probs, a distribution to sample from. Beam search by default ranks by the
policy's own log-probs instead (each level's softmax over all its codes, the masked ones dropped): renormalizing
would hand an excluded item's probability to the codes left under its prefix, which in unconstrained decoding
are tuples of no item (docs/results-semantic-ids.md, "Ranking by the policy's own probabilities").

With `use_cache` the history is prefilled once and each level is one cached step for all beams of
a row; without it every step re-runs the full forward over history + prefix (same results).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from recmodels.runtime import eval_mode
from recmodels.tokenization.semantic_ids import TokenLayout
from recmodels.tokenization.trie import ItemTrie


@dataclass
class Exclusion:
    tuples: torch.Tensor  # [B, E, L+1] excluded code tuples, rows padded with -1
    valid: torch.Tensor  # [B, E] bool, real entries
    keys: torch.Tensor  # [B, E, L+2] TokenLayout.prefix_keys of the tuples: at l, one number for codes 0..l-1


def build_exclusion(exclude: Sequence | None, n_rows: int, level_sizes: tuple[int, ...],
                    trie: ItemTrie | None, device) -> Exclusion | None:
    """Deduplicated per-row tuples to exclude (for constrained decoding: only those that are items).

    Every row's tuples are deduplicated by one sort over (row, tuple) and checked by one trie lookup."""
    if exclude is None:
        return None
    if len(exclude) != n_rows:
        raise ValueError(f"exclude has {len(exclude)} rows but the histories have {n_rows}")
    n_levels, arrays = len(level_sizes), []
    for b, tuples in enumerate(exclude):
        t = np.asarray(tuples.cpu() if isinstance(tuples, torch.Tensor) else tuples, dtype=np.int64)
        if t.size == 0:
            t = np.zeros((0, n_levels), np.int64)
        if t.ndim != 2 or t.shape[1] != n_levels:
            raise ValueError(f"exclude row {b} must be [n, {n_levels}] code tuples, got shape {t.shape}")
        outside = (t < 0) | (t >= np.asarray(level_sizes))
        if outside.any():
            j, level = np.argwhere(outside)[0]
            raise ValueError(f"exclude row {b}, tuple {j} has code {t[j, level]} outside level {level}'s "
                             f"0..{level_sizes[level] - 1}")
        arrays.append(t)
    rows = np.repeat(np.arange(n_rows), [len(t) for t in arrays])
    # one key per (row, tuple): sorted unique keys are the rows in order, each row's tuples deduplicated
    shape = (n_rows, *level_sizes)
    flat = np.concatenate(arrays) if arrays else np.zeros((0, n_levels), np.int64)
    keys = np.unique(np.ravel_multi_index((rows, *flat.T), shape))
    rows, *codes = np.unravel_index(keys, shape)
    tuples = np.stack(codes, axis=1)
    if trie is not None and len(tuples):
        is_item = trie.lookup(torch.as_tensor(tuples, device=trie.device)).cpu().numpy() > 0
        rows, tuples = rows[is_item], tuples[is_item]
    counts = np.bincount(rows, minlength=n_rows)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # place within its row
    padded = np.full((n_rows, max(1, int(counts.max(initial=0))), n_levels), -1, np.int64)
    padded[rows, slot] = tuples
    padded = torch.as_tensor(padded, device=device)
    return Exclusion(tuples=padded, valid=padded[..., 0] >= 0,
                     keys=TokenLayout(level_sizes).prefix_keys(padded.clamp(min=0)))


def admissible_codes(level: int, level_sizes: tuple[int, ...], prefixes: torch.Tensor, nodes: torch.Tensor | None,
                     trie: ItemTrie | None, exclusion: Exclusion | None) -> torch.Tensor | None:
    """[B, K, V_level] bool codes that may follow each prefix [B, K, level]; None = all of them."""
    if trie is None and exclusion is None:
        return None
    B, K = prefixes.shape[:2]
    size = level_sizes[level]
    if trie is not None:
        allowed, completions = trie.allowed(level, nodes), trie.completions(level, nodes)
    else:
        allowed = torch.ones(B, K, size, dtype=torch.bool, device=prefixes.device)
        completions = torch.full((B, K, size), math.prod(level_sizes[level + 1:]), device=prefixes.device)
    if exclusion is not None:
        ex = exclusion.tuples
        key = TokenLayout(level_sizes).prefix_keys(prefixes)[..., level]  # [B, K] one number per beam's prefix
        match = exclusion.valid[:, None, :] & (exclusion.keys[:, None, :, level] == key[..., None])  # [B, K, E]
        codes = ex[:, None, :, level].clamp(min=0).expand(B, K, ex.shape[1])
        excluded = torch.zeros(B, K, size, dtype=torch.long, device=prefixes.device)
        excluded.scatter_add_(2, codes, match.long())  # [B, K, V_level] excluded tuples under prefix + code
        allowed = allowed & (excluded < completions)
    return allowed


def level_log_probs(logits: torch.Tensor, offset: int, size: int, allowed: torch.Tensor | None,
                    renormalize: bool = True) -> torch.Tensor:
    """Log-probs [..., size] of one level's codes from token logits [..., V], renormalized over `allowed`
    (without `renormalize`: the policy's own log-probs over the level, -inf where not allowed).

    A row with nothing allowed is all -inf (never NaN).
    """
    x = logits[..., offset:offset + size].float()
    lse = None if renormalize else torch.logsumexp(x, dim=-1, keepdim=True)
    if allowed is not None:
        x = x.masked_fill(~allowed, float("-inf"))
    if lse is None:
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
    return x - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _history(policy, history_tokens: torch.Tensor) -> torch.Tensor:
    """Validated, clipped histories: whole items, left-padded, each token at its level."""
    if history_tokens.dim() != 2:
        raise ValueError(f"history_tokens must be [B, S], got shape {tuple(history_tokens.shape)}")
    history = policy.clip_history(history_tokens)
    policy.check_tokens(history, "history_tokens")
    expected = torch.arange(history.shape[1], device=history.device) % policy.layout.n_levels
    misplaced = (history != 0) & (policy.token_level[history] != expected)
    if misplaced.any():
        b, s = (int(i) for i in torch.nonzero(misplaced)[0])
        raise ValueError(f"history row {b}: token {int(history[b, s])} at position {s} is not of level "
                         f"{int(expected[s])}; histories must be whole items of {policy.layout.n_levels} tokens")
    return history


def _gumbel(shape, generator: torch.Generator, device) -> torch.Tensor:
    noise = torch.empty(shape, device=generator.device).exponential_(generator=generator)
    return -noise.log().to(device)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, stable."""
    return torch.where(a > -0.6931, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _conditioned_gumbels(parent_keys: torch.Tensor, log_probs: torch.Tensor, generator) -> torch.Tensor:
    """Perturbed keys of children [B, K, s] whose maximum equals the parent's key [B, K] (Kool et al. 2019)."""
    g = log_probs + _gumbel(log_probs.shape, generator, log_probs.device)
    z = g.max(dim=-1, keepdim=True).values
    t = parent_keys[..., None]
    v = t - g + _log1mexp(g - z)
    keys = t - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))
    return torch.where(torch.isfinite(log_probs) & torch.isfinite(t), keys, torch.full_like(keys, float("-inf")))


class _Decoder:
    """Shared state of one decoding run: histories, K rows per history, trie, exclusion, cache."""

    def __init__(self, policy, history_tokens, k: int, trie: ItemTrie | None, exclude, use_cache: bool):
        if k < 1:
            raise ValueError(f"beam size / number of samples must be >= 1, got {k}")
        self.policy, self.layout, self.k, self.use_cache = policy, policy.layout, k, use_cache
        self.history = _history(policy, history_tokens)
        self.B, device = self.history.shape[0], self.history.device
        if trie is not None and trie.level_sizes != self.layout.level_sizes:
            raise ValueError(f"trie level sizes {trie.level_sizes} differ from the policy's {self.layout.level_sizes}")
        self.trie = trie.to(device) if trie is not None else None
        self.exclusion = build_exclusion(exclude, self.B, self.layout.level_sizes, self.trie, device)
        self.prefixes = torch.zeros(self.B, k, 0, dtype=torch.long, device=device)
        self.nodes = self.trie.root((self.B, k)) if self.trie is not None else None
        if use_cache:
            self.cache = policy.prefill(self.history).expand(k)
            self.logits = self.cache.logits
        else:
            self.flat_history = self.history.repeat_interleave(k, dim=0)
            self.logits = policy.next_token_logits(self.history).repeat_interleave(k, dim=0)

    def check_enough_items(self, needed: int, what: str) -> None:
        """Constrained decoding: every row must leave `needed` items once its exclusions are removed."""
        if self.trie is None:
            return
        excluded = self.exclusion.valid.sum(dim=1).cpu() if self.exclusion is not None else torch.zeros(self.B)
        short = (self.trie.n_items - excluded) < needed
        if short.any():
            b = int(torch.nonzero(short)[0, 0])
            raise ValueError(f"history row {b} leaves only {self.trie.n_items - int(excluded[b])} admissible items, "
                             f"fewer than {what}")

    def log_probs(self, level: int, renormalize: bool = True) -> torch.Tensor:
        """[B, K, V_level] masked (and renormalized) log-probs of the next code of every row."""
        allowed = admissible_codes(level, self.layout.level_sizes, self.prefixes, self.nodes, self.trie, self.exclusion)
        logits = self.logits.view(self.B, self.k, -1)
        return level_log_probs(logits, self.layout.offsets[level], self.layout.level_sizes[level], allowed,
                               renormalize)

    def append(self, level: int, parents: torch.Tensor, codes: torch.Tensor) -> None:
        """Rows become parents' prefixes [B, K] + codes [B, K]; advance the trie and the policy."""
        self.prefixes = torch.cat([self.prefixes.gather(1, parents[..., None].expand(-1, -1, level)),
                                   codes[..., None]], dim=-1)
        if self.trie is not None:
            self.nodes = self.trie.advance(level, self.nodes.gather(1, parents), codes)
        if level == self.layout.n_levels - 1:
            return
        tokens = (codes + self.layout.offsets[level]).reshape(-1)
        if self.use_cache:
            self.logits, self.cache = self.policy.step(tokens, self.cache.select(parents))
        else:
            prefix_tokens = self.prefixes + torch.as_tensor(self.layout.offsets[:level + 1], device=codes.device)
            self.logits = self.policy.next_token_logits(
                torch.cat([self.flat_history, prefix_tokens.reshape(self.B * self.k, -1)], dim=1))


def _top_k_decode(policy, history_tokens, k, trie, exclude, use_cache, generator, renormalize: bool):
    with eval_mode(policy):
        dec = _Decoder(policy, history_tokens, k, trie, exclude, use_cache)
        dec.check_enough_items(k, f"beam_size={k}" if generator is None else f"n={k} distinct samples")
        B = dec.B
        scores = torch.full((B, k), float("-inf"), device=dec.history.device)
        scores[:, 0] = 0.0  # one live beam to start from
        keys = scores.clone()
        for level in range(dec.layout.n_levels):
            cand = scores[..., None] + dec.log_probs(level, renormalize)  # [B, K, V_level]
            cand_keys = cand if generator is None else _conditioned_gumbels(keys, cand, generator)
            keys, idx = cand_keys.reshape(B, -1).topk(k, dim=1)
            scores = cand.reshape(B, -1).gather(1, idx)
            size = cand.shape[-1]
            dec.append(level, idx // size, idx % size)
        return dec.prefixes, scores


def beam_search(policy, history_tokens: torch.Tensor, beam_size: int, trie: ItemTrie | None = None,
                use_cache: bool = True, exclude: Sequence | None = None,
                renormalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The `beam_size` best code tuples per history: (tuples [B, K, L+1], log-probs [B, K]), best first.

    history_tokens [B, S]: whole items of L+1 tokens, left-padded with 0 (the last max_len items
    are used). With `trie`, only catalog items (constrained decoding); `exclude` as in the module doc.
    Scores are the policy's own log-probs of the tuples (each level's softmax over all its codes; what is
    masked is dropped, not handed to the codes left), so the admissible tuples are ranked as the policy ranks
    them, as a one-token-per-item policy ranks its unseen items: excluding a seen item does not raise its
    siblings under the same prefix (without a trie, mostly tuples of no item). `renormalize=True` ranks by the
    sampling distribution instead (each level renormalized over its admissible codes, as `sample_tuples`).
    """
    return _top_k_decode(policy, history_tokens, beam_size, trie, exclude, use_cache, generator=None,
                         renormalize=renormalize)


def sample_tuples(policy, history_tokens: torch.Tensor, n: int, generator: torch.Generator,
                  trie: ItemTrie | None = None, exclude: Sequence | None = None,
                  distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n code tuples per history drawn from the policy: (tuples [B, n, L+1], log-probs [B, n]), no grad.

    Token by token with the policy's decoding cache. `distinct=False`: n independent draws (with replacement).
    `distinct=True`: n different tuples, sampled without replacement (stochastic beam search with
    Gumbel-top-k, Kool et al. 2019), ordered by their perturbed keys.
    """
    if distinct:
        return _top_k_decode(policy, history_tokens, n, trie, exclude, True, generator, renormalize=True)
    with eval_mode(policy):
        dec = _Decoder(policy, history_tokens, n, trie, exclude, use_cache=True)
        dec.check_enough_items(1, "one")
        logp = torch.zeros(dec.B, n, device=dec.history.device)
        same = torch.arange(n, device=logp.device).expand(dec.B, n)
        for level in range(dec.layout.n_levels):
            lp = dec.log_probs(level)
            codes = (lp + _gumbel(lp.shape, generator, lp.device)).argmax(dim=-1)  # [B, n]
            logp = logp + lp.gather(2, codes[..., None]).squeeze(-1)
            dec.append(level, same, codes)
        return dec.prefixes, logp


def tuple_log_probs(policy, history_tokens: torch.Tensor, tuples: torch.Tensor, trie: ItemTrie | None = None,
                    exclude: Sequence | None = None) -> torch.Tensor:
    """Per-code log-probs [B, n, L+1] of given tuples [B, n, L+1] under the same masking (grad flows).

    One teacher-forced forward over history + the tuple's first L codes; the sum over the last
    dimension is log pi(tuple | history), -inf where a code is not admissible.
    """
    history = _history(policy, history_tokens)
    layout, (B, S) = policy.layout, history.shape
    if tuples.dim() != 3 or tuples.shape[0] != B or tuples.shape[2] != layout.n_levels:
        raise ValueError(f"tuples must be [{B}, n, {layout.n_levels}], got {tuple(tuples.shape)}")
    in_range = (tuples >= 0) & (tuples < torch.as_tensor(layout.level_sizes, device=tuples.device))
    if not in_range.all():
        b, j, level = (int(i) for i in torch.nonzero(~in_range)[0])
        raise ValueError(f"tuples[{b}, {j}] has code {int(tuples[b, j, level])} outside level {level}'s range")
    n = tuples.shape[1]
    trie = trie.to(history.device) if trie is not None else None
    exclusion = build_exclusion(exclude, B, layout.level_sizes, trie, history.device)
    tokens = torch.cat([history.repeat_interleave(n, dim=0),
                        layout.to_tokens(tuples).reshape(B * n, -1)[:, :-1]], dim=1)
    policy.check_tokens(tokens)
    predicts = torch.zeros_like(tokens, dtype=torch.bool)
    predicts[:, S - 1:] = True  # position S-1+l predicts code l
    logits = policy.position_logits(tokens, at=predicts)
    logits = logits.reshape(B, n, layout.n_levels, -1)
    nodes = trie.root((B, n)) if trie is not None else None
    out = []
    for level in range(layout.n_levels):
        allowed = admissible_codes(level, layout.level_sizes, tuples[..., :level], nodes, trie, exclusion)
        lp = level_log_probs(logits[:, :, level], layout.offsets[level], layout.level_sizes[level], allowed)
        out.append(lp.gather(2, tuples[..., level:level + 1]).squeeze(-1))
        if trie is not None:
            nodes = trie.advance(level, nodes, tuples[..., level])
    return torch.stack(out, dim=-1)
