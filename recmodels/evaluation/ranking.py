"""Full-catalog ranking (design.md §5): score every item, mask the history, rank the held-out target.

No sampled negatives: the target competes with the whole catalog except the items already in the
user's history (the target itself is never masked, so a repeated item stays rankable) and the
padding token 0. Works with any `policy` exposing `next_item_logits(history[B, T]) -> [B, V]`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from recmodels.sequences import EvalExamples


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


def _masked_logits(policy, history: torch.Tensor, seen: list[np.ndarray], targets: torch.Tensor | None,
                   batch_size: int, device) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, masked next-item logits [b, V] on CPU) batch by batch, in eval mode, no grad."""
    _check_inputs(history, seen, targets)
    dev = _policy_device(policy, device)
    was_training = getattr(policy, "training", False)
    if isinstance(policy, nn.Module):
        policy.eval()
    try:
        with torch.no_grad():
            for start in range(0, history.shape[0], batch_size):
                rows = slice(start, min(start + batch_size, history.shape[0]))
                logits = policy.next_item_logits(history[rows].to(dev)).float().cpu().clone()  # [b, V]
                V = logits.shape[1]
                if targets is not None and int(targets[rows].max()) >= V:
                    bad = start + int(torch.nonzero(targets[rows] >= V)[0, 0])
                    raise ValueError(f"row {bad}: target {int(targets[bad])} is outside the catalog of {V - 1} items")
                chunk = [np.asarray(items, dtype=np.int64) for items in seen[rows]]
                row_ids = np.repeat(np.arange(len(chunk)), [len(items) for items in chunk])
                cols = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
                keep = (cols > 0) & (cols < V)
                if targets is not None:
                    t = targets[rows].cpu()[:, None]
                    target_logits = logits.gather(1, t)
                logits[torch.as_tensor(row_ids[keep]), torch.as_tensor(cols[keep])] = float("-inf")
                if targets is not None:
                    logits.scatter_(1, t, target_logits)  # the target itself is never masked
                logits[:, 0] = float("-inf")
                yield rows, logits
    finally:
        if isinstance(policy, nn.Module):
            policy.train(was_training)


def score_catalog(policy, history: torch.Tensor, seen: list[np.ndarray], targets: torch.Tensor | None = None,
                  batch_size: int = 256, device=None) -> torch.Tensor:
    """Next-item logits [N, V] with each row's seen items (except its target) and padding at -inf."""
    parts = [logits for _, logits in _masked_logits(policy, history, seen, targets, batch_size, device)]
    if not parts:
        raise ValueError("history has no rows: nothing to score")
    return torch.cat(parts)


def target_ranks(policy, examples: EvalExamples, batch_size: int = 256, device=None) -> np.ndarray:
    """[N] 1-based rank of each target over the masked catalog: 1 + #items scoring strictly higher."""
    ranks = np.empty(len(examples), dtype=np.int64)
    for rows, logits in _masked_logits(policy, examples.history, examples.seen, examples.targets,
                                       batch_size, device):
        t = examples.targets[rows]
        target_score = logits.gather(1, t[:, None])  # [b, 1]
        ranks[rows] = ((logits > target_score).sum(dim=1) + 1).numpy()
    return ranks


def top_k_items(policy, examples: EvalExamples, k: int, batch_size: int = 256, device=None) -> np.ndarray:
    """[N, k] item_idx of each user's k best-scored items, history masked (target left rankable)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = np.empty((len(examples), k), dtype=np.int64)
    for rows, logits in _masked_logits(policy, examples.history, examples.seen, examples.targets,
                                       batch_size, device):
        if k > logits.shape[1] - 1:
            raise ValueError(f"k={k} exceeds the catalog size {logits.shape[1] - 1}")
        out[rows] = logits.topk(k, dim=1).indices.numpy()
    return out
