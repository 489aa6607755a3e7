"""Chronological leave-one-out split per user, and the rule that drops users too short for it (docs/design.md §2).

Every user in the split has at least `MIN_EVENTS_FOR_HOLDOUT` events: one `test` (the last), one
`valid` (the second-last) and at least one `train`. Users with fewer events are dropped beforehand
by `drop_short_histories` (a user with one or two events could be trained on but never evaluated),
and the number of users and events dropped is reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")
MIN_EVENTS_FOR_HOLDOUT = 3


@dataclass(frozen=True)
class ShortHistories:
    """What `drop_short_histories` dropped: users with fewer than `MIN_EVENTS_FOR_HOLDOUT` events."""

    users: int  # users dropped
    events: int  # their events
    kept_users: int  # users left
    example: str | None = None  # one dropped user's id, for messages


def drop_short_histories(logs: pd.DataFrame, user_col: str = "user_id") -> tuple[pd.DataFrame, ShortHistories]:
    """(the rows of users with at least `MIN_EVENTS_FOR_HOLDOUT` events, what was dropped).

    Row order is kept; the returned frame has a fresh RangeIndex.
    """
    _require_columns(logs, [user_col], "drop_short_histories")
    n_events = logs.groupby(user_col, sort=False)[user_col].transform("size").to_numpy()
    keep = n_events >= MIN_EVENTS_FOR_HOLDOUT
    dropped = logs.loc[~keep, user_col]
    summary = ShortHistories(users=int(dropped.nunique()), events=int((~keep).sum()),
                             kept_users=int(logs.loc[keep, user_col].nunique()),
                             example=str(dropped.iloc[0]) if len(dropped) else None)
    return logs.loc[keep].reset_index(drop=True), summary


def leave_one_out_split(logs: pd.DataFrame, user_col: str = "user_id") -> pd.DataFrame:
    """Sort per user by timestamp and add `split`: last event test, second-last valid, rest train.

    The sort is stable: events of one user with equal timestamps keep their original row
    order. Users come in sorted order of `user_col`. Every user needs at least
    `MIN_EVENTS_FOR_HOLDOUT` events (drop the others first with `drop_short_histories`): a user
    with fewer raises ValueError naming the user. Returns a new frame with a fresh RangeIndex.
    """
    _require_columns(logs, [user_col, "timestamp"], "leave_one_out_split")
    row = np.arange(len(logs))
    user_rank, _ = pd.factorize(logs[user_col], sort=True)
    order = np.lexsort((row, logs["timestamp"].to_numpy(), user_rank))
    out = logs.iloc[order].reset_index(drop=True)
    by_user = out.groupby(user_col, sort=False)[user_col]
    from_end = by_user.cumcount(ascending=False).to_numpy()
    n_events = by_user.transform("size").to_numpy()
    short = n_events < MIN_EVENTS_FOR_HOLDOUT
    if short.any():
        first = int(np.flatnonzero(short)[0])
        raise ValueError(
            f"leave_one_out_split: column {user_col!r}: user {out[user_col].iloc[[first]].tolist()[0]!r} has {n_events[first]} "
            f"events; every user needs at least {MIN_EVENTS_FOR_HOLDOUT} (train, valid and test): "
            "drop the others first with drop_short_histories")
    split = np.full(len(out), "train", dtype=object)
    split[from_end == 1] = "valid"
    split[from_end == 0] = "test"
    out["split"] = pd.Series(split, dtype=str)
    return out


def _require_columns(logs: pd.DataFrame, names: list[str], caller: str) -> None:
    for name in names:
        if name not in logs.columns:
            raise KeyError(f"{caller}: column {name!r} is missing (columns: {list(logs.columns)})")
