"""Full-catalog ranking (docs/design.md §5): score every item once, rank the held-out target under two protocols.

No sampled negatives: the target competes with the whole catalog except the padding token 0.
- masked (primary): the items already in the user's history are excluded too (the target itself is
  never excluded, so a repeated item stays rankable);
- unmasked (RecBole's protocol for sequential models, for comparison with published numbers): the
  history items compete like any other item.
Both come from the same scoring pass (`rank_catalog`): the logits are computed once and the
masked protocol ranks a masked copy.

Ties: a target's rank is 1 + #items scoring strictly higher + a uniform draw from 0..#other items
tied with it (a model that scores every item alike gets HR@K ~ K / catalog size, not 1). Items at
-inf (masked, padding) never tie with a finite target. The draws come from a seeded generator
(`TIE_SEED` unless one is passed), one draw per example shared by both protocols, so results are
deterministic and the unmasked rank is never better than the masked one. Without ties the rank is
exactly 1 + #items scoring strictly higher.

Works with any `policy` exposing `next_item_logits(history[B, T]) -> [B, V]`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from recmodels.data.sequences import EvalExamples
from recmodels.runtime import eval_mode

TIE_SEED = 0  # seed of the tie-breaking draws when no generator is passed
SEEN_TOP_K = 10  # `seen_in_top10_unmasked` counts history items in the unmasked top 10


@dataclass
class CatalogRanking:
    """Both protocols of one scoring pass over the catalog, one row per example."""

    ranks: np.ndarray  # [N] masked protocol (primary): history items excluded, the target never
    ranks_unmasked: np.ndarray  # [N] unmasked protocol (RecBole's): only padding excluded
    top_items: np.ndarray  # [N, k] item_idx of the k best-scored items, masked protocol
    seen_in_top10_unmasked: np.ndarray  # [N] history items (other than the target) in the unmasked top 10


def _policy_device(policy, device) -> torch.device:
    """The device to score on: `device` if given (the policy is moved there), else the policy's own."""
    if isinstance(policy, nn.Module):
        if device is not None:
            policy.to(device)
            return torch.device(device)
        param = next(policy.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return torch.device(device or "cpu")


def _check_inputs(history: torch.Tensor, seen: list[np.ndarray], targets: torch.Tensor | None) -> None:
    if history.dim() != 2:
        raise ValueError(f"history must be [N, T] item ids, got shape {tuple(history.shape)}")
    n = history.shape[0]
    if len(seen) != n:
        raise ValueError(f"seen has {len(seen)} entries but history has {n} rows")
    if targets is not None:
        if targets.shape != (n,):
            raise ValueError(f"targets must have shape [{n}], got {tuple(targets.shape)}")
        if n and int(targets.min()) < 1:
            bad = int(torch.nonzero(targets < 1)[0, 0])
            raise ValueError(f"targets must be item ids >= 1; row {bad} has target {int(targets[bad])}")


def _check_targets_in_catalog(targets: torch.Tensor, start: int, V: int) -> None:
    if int(targets.max()) >= V:
        bad = int(torch.nonzero(targets >= V)[0, 0])
        raise ValueError(f"row {start + bad}: target {int(targets[bad])} is outside the catalog of {V - 1} items")


def seen_items_mask(seen: list[np.ndarray], targets: torch.Tensor | None, V: int) -> torch.Tensor:
    """[b, V] True at each row's history items (ids in 1..V-1), except its target: what the masked protocol hides."""
    row_ids = np.repeat(np.arange(len(seen)), [len(items) for items in seen])
    cols = np.concatenate([np.asarray(items, dtype=np.int64) for items in seen]) if seen else np.zeros(0, np.int64)
    keep = (cols > 0) & (cols < V)
    mask = torch.zeros(len(seen), V, dtype=torch.bool)
    mask[torch.as_tensor(row_ids[keep]), torch.as_tensor(cols[keep])] = True
    if targets is not None:
        mask[torch.arange(len(seen)), targets] = False  # the target itself is never masked
    return mask


def scored_batches(policy, history: torch.Tensor, seen: list[np.ndarray], targets: torch.Tensor | None,
                   batch_size: int, device) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (row slice, next-item logits [b, V] on CPU with padding at -inf, history mask [b, V]) batch by
    batch, in eval mode, no grad: one forward pass per batch serves both protocols."""
    _check_inputs(history, seen, targets)
    dev = _policy_device(policy, device)
    with eval_mode(policy):
        for start in range(0, history.shape[0], batch_size):
            rows = slice(start, min(start + batch_size, history.shape[0]))
            logits = policy.next_item_logits(history[rows].to(dev)).float().cpu().clone()  # [b, V]
            row_targets = None if targets is None else targets[rows].cpu()
            if row_targets is not None:
                _check_targets_in_catalog(row_targets, start, logits.shape[1])
            logits[:, 0] = float("-inf")
            yield rows, logits, seen_items_mask(seen[rows], row_targets, logits.shape[1])


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of `logits` with the masked items at -inf."""
    return logits.masked_fill(mask, float("-inf"))


def tie_draws(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] float64 uniforms in [0, 1), one per example, from `generator` (default: seeded with TIE_SEED)."""
    if generator is None:
        generator = torch.Generator().manual_seed(TIE_SEED)
    return torch.rand(n, generator=generator, dtype=torch.float64)


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """[b] 1-based rank of each row's target among its scores [b, V], ties broken at random.

    rank = 1 + #items scoring strictly higher + floor(draw * (#other items tied with the target + 1)),
    so the tie offset is uniform over 0..#tied for a uniform draw in [0, 1). Items at -inf never tie.
    """
    target_score = scores.gather(1, targets[:, None])  # [b, 1]
    higher = (scores > target_score).sum(dim=1)
    tied_others = (((scores == target_score) & torch.isfinite(scores)).sum(dim=1) - 1).clamp(min=0)
    offset = torch.minimum((draws * (tied_others + 1)).floor().long(), tied_others)
    return 1 + higher + offset


def seen_in_top_k(scores: torch.Tensor, mask: torch.Tensor, k: int = SEEN_TOP_K) -> torch.Tensor:
    """[b] number of masked (history) items among each row's k best scores."""
    top = scores.topk(min(k, scores.shape[1] - 1), dim=1).indices
    return mask.gather(1, top).sum(dim=1)


def score_catalog(policy, history: torch.Tensor, seen: list[np.ndarray], targets: torch.Tensor | None = None,
                  batch_size: int = 256, device=None) -> torch.Tensor:
    """Next-item logits [N, V] with each row's seen items (except its target) and padding at -inf."""
    parts = [masked_logits(logits, mask) for _, logits, mask in
             scored_batches(policy, history, seen, targets, batch_size, device)]
    if not parts:
        raise ValueError("history has no rows: nothing to score")
    return torch.cat(parts)


def rank_catalog(policy, examples: EvalExamples, k: int = 10, batch_size: int = 256, device=None,
                 generator: torch.Generator | None = None) -> CatalogRanking:
    """Masked and unmasked target ranks, the masked top-k items and the history items in the unmasked top 10,
    all from one scoring pass (see the module doc)."""
    _check_k(k)
    n = len(examples)
    ranks, ranks_unmasked = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    top, seen_top10 = np.empty((n, k), dtype=np.int64), np.empty(n, dtype=np.int64)
    draws = tie_draws(n, generator)
    for rows, logits, mask in scored_batches(policy, examples.history, examples.seen, examples.targets,
                                             batch_size, device):
        _check_k_in_catalog(k, logits.shape[1])
        masked, targets = masked_logits(logits, mask), examples.targets[rows].cpu()
        ranks[rows] = ranks_from_scores(masked, targets, draws[rows]).numpy()
        ranks_unmasked[rows] = ranks_from_scores(logits, targets, draws[rows]).numpy()
        top[rows] = masked.topk(k, dim=1).indices.numpy()
        seen_top10[rows] = seen_in_top_k(logits, mask).numpy()
    return CatalogRanking(ranks=ranks, ranks_unmasked=ranks_unmasked, top_items=top,
                          seen_in_top10_unmasked=seen_top10)


def target_ranks(policy, examples: EvalExamples, batch_size: int = 256, device=None,
                 generator: torch.Generator | None = None) -> np.ndarray:
    """[N] 1-based rank of each target over the masked catalog (ties broken at random, see the module doc)."""
    ranks = np.empty(len(examples), dtype=np.int64)
    draws = tie_draws(len(examples), generator)
    for rows, logits, mask in scored_batches(policy, examples.history, examples.seen, examples.targets,
                                             batch_size, device):
        ranks[rows] = ranks_from_scores(masked_logits(logits, mask), examples.targets[rows].cpu(), draws[rows]).numpy()
    return ranks


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_k_in_catalog(k: int, V: int) -> None:
    if k > V - 1:
        raise ValueError(f"k={k} exceeds the catalog size {V - 1}")


def top_k_items(policy, examples: EvalExamples, k: int, batch_size: int = 256, device=None) -> np.ndarray:
    """[N, k] item_idx of each user's k best-scored items, history masked (target left rankable)."""
    _check_k(k)
    out = np.empty((len(examples), k), dtype=np.int64)
    for rows, logits, mask in scored_batches(policy, examples.history, examples.seen, examples.targets,
                                             batch_size, device):
        _check_k_in_catalog(k, logits.shape[1])
        out[rows] = masked_logits(logits, mask).topk(k, dim=1).indices.numpy()
    return out
