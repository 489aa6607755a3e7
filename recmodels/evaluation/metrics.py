"""Ranking metrics from 1-based target ranks, bootstrap intervals and reward alignment (docs/design.md §5).

Each user has one held-out item, so every metric is a per-user array; a policy's score is its
mean over users and its uncertainty a percentile bootstrap over users.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KS = (5, 10, 20)
METRIC_NAMES = tuple(f"{m}@{k}" for k in KS for m in ("hr", "ndcg", "mrr"))  # hr@5, ndcg@5, mrr@5, hr@10, ...
MISS_RANK = 2**31 - 1  # the rank of a target the policy cannot produce: beyond every cutoff, 1/rank ~ 0


def _ranks(ranks) -> np.ndarray:
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise ValueError(f"ranks must be a 1-D array (one rank per user), got shape {r.shape}")
    if r.size and (not np.all(np.isfinite(r)) or np.any(r < 1) or np.any(r != np.round(r))):
        bad = int(np.flatnonzero(~np.isfinite(r) | (r < 1) | (r != np.round(r)))[0])
        raise ValueError(f"ranks must be integers >= 1; user {bad} has rank {r[bad]}")
    return r.astype(np.float64)


def _k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def hit_rate(ranks, k: int) -> np.ndarray:
    """Per user: 1.0 when the target is in the top k, else 0.0."""
    return (_ranks(ranks) <= _k(k)).astype(np.float64)


def ndcg(ranks, k: int) -> np.ndarray:
    """Per user NDCG@k with one relevant item: 1 / log2(rank + 1) when rank <= k, else 0."""
    r = _ranks(ranks)
    return np.where(r <= _k(k), 1.0 / np.log2(r + 1.0), 0.0)


def mrr(ranks, k: int | None = None) -> np.ndarray:
    """Per user reciprocal rank 1 / rank; with k, MRR@k (0 when rank > k).

    The report's `mrr@K` columns are this truncated MRR@K; `mrr` (k=None) is the full,
    untruncated reciprocal rank.
    """
    r = _ranks(ranks)
    rr = 1.0 / r
    return rr if k is None else np.where(r <= _k(k), rr, 0.0)


def _rewards(target_rewards, n: int) -> np.ndarray:
    rw = np.asarray(target_rewards, dtype=np.float64)
    if rw.shape != (n,):
        raise ValueError(f"target_rewards must have one reward per user ({n}), got shape {rw.shape}")
    if not np.all(np.isfinite(rw)):
        raise ValueError(f"target_rewards must be finite; user {int(np.flatnonzero(~np.isfinite(rw))[0])} is not")
    return rw


def per_user_metrics(ranks, target_rewards) -> pd.DataFrame:
    """One row per user: hr@K, ndcg@K, mrr@K (K in KS), full mrr, target_reward, reward_weighted_ndcg@10."""
    r = _ranks(ranks)
    rw = _rewards(target_rewards, len(r))
    cols: dict[str, np.ndarray] = {}
    for k in KS:
        cols[f"hr@{k}"] = hit_rate(r, k)
        cols[f"ndcg@{k}"] = ndcg(r, k)
        cols[f"mrr@{k}"] = mrr(r, k)
    cols["mrr"] = mrr(r)
    cols["target_reward"] = rw
    cols["reward_weighted_ndcg@10"] = rw * cols["ndcg@10"]
    return pd.DataFrame(cols)


def _values(values, what: str = "values") -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array (one value per user), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what} must be finite; user {int(np.flatnonzero(~np.isfinite(v))[0])} is not")
    return v


def bootstrap_ci(values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over users and its percentile-bootstrap (1 - alpha) interval.

    Users are resampled with replacement `n_boot` times from `np.random.default_rng(seed)`, so
    calls with the same seed and the same number of users draw the same resamples.
    `scipy.stats.bootstrap(method="percentile")` draws the same resamples but its interval ends differ
    in the last bits; this stays so that every interval published in docs/ reproduces to the digit.
    """
    v = _values(values)
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got n_boot={n_boot}, alpha={alpha}")
    mean = float(v.mean())
    if np.all(v == v[0]):  # constant: every resample has the same mean
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    n = v.size
    chunk = max(1, 2_000_000 // n)  # bound the [chunk, n] index matrix
    means = np.concatenate([v[rng.integers(0, n, size=(min(chunk, n_boot - s), n))].mean(axis=1)
                            for s in range(0, n_boot, chunk)])
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(low), float(high)


def paired_bootstrap_diff(a, b, n_boot: int = 1000, alpha: float = 0.05,
                          seed: int = 0) -> tuple[float, float, float]:
    """(mean_diff, low, high) of per-user a - b, resampling users (both policies on the same users)."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values must cover the same users: a has {a.size}, b has {b.size}")
    return bootstrap_ci(a - b, n_boot=n_boot, alpha=alpha, seed=seed)


def reward_alignment(ranks, target_rewards, k: int = 10) -> dict:
    """HR@k on liked (reward > 0) and disliked (reward < 0) test items and reward-weighted NDCG@k.

    Rewards of exactly 0 count in neither group. A group without users gives None.
    """
    r = _ranks(ranks)
    rw = _rewards(target_rewards, len(r))
    hits = hit_rate(r, k)
    liked, disliked = rw > 0, rw < 0
    return {
        f"hr@{k}_liked": float(hits[liked].mean()) if liked.any() else None,
        f"hr@{k}_disliked": float(hits[disliked].mean()) if disliked.any() else None,
        "n_liked": int(liked.sum()),
        "n_disliked": int(disliked.sum()),
        f"reward_weighted_ndcg@{k}": float(np.mean(rw * ndcg(r, k))) if len(r) else None,
    }
