"""Chronological leave-one-out split per user (docs/design.md §2)."""
from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")
MIN_EVENTS_FOR_HOLDOUT = 3


def leave_one_out_split(logs: pd.DataFrame, user_col: str = "user_id") -> pd.DataFrame:
    """Sort per user by timestamp and add `split`: last event test, second-last valid, rest train.

    The sort is stable: events of one user with equal timestamps keep their original row
    order. Users come in sorted order of `user_col`; users with fewer than 3 events are
    all train. Returns a new frame with a fresh RangeIndex.
    """
    for name in (user_col, "timestamp"):
        if name not in logs.columns:
            raise KeyError(f"leave_one_out_split: column {name!r} is missing (columns: {list(logs.columns)})")
    row = np.arange(len(logs))
    user_rank, _ = pd.factorize(logs[user_col], sort=True)
    order = np.lexsort((row, logs["timestamp"].to_numpy(), user_rank))
    out = logs.iloc[order].reset_index(drop=True)
    by_user = out.groupby(user_col, sort=False)[user_col]
    from_end = by_user.cumcount(ascending=False).to_numpy()
    n_events = by_user.transform("size").to_numpy()
    held_out = n_events >= MIN_EVENTS_FOR_HOLDOUT
    split = np.full(len(out), "train", dtype=object)
    split[held_out & (from_end == 1)] = "valid"
    split[held_out & (from_end == 0)] = "test"
    out["split"] = pd.Series(split, dtype=str)
    return out
