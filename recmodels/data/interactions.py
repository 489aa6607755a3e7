"""The interactions table: raw logs with contiguous ids, rewards and the leave-one-out split.

Contract (docs/design.md §2): sorted by user then time, `user_idx` int32 0..U-1, `item_idx` int32
1..n_items (0 is padding), `timestamp` int64, `reward` float32, the raw feedback signals,
`propensity` when logged, `split` in {train, valid, test}, plus the original `user_id` /
`item_id` strings. The catalog has one row per logged item, in `item_idx` order.

Users with fewer than `MIN_EVENTS_FOR_HOLDOUT` (3) events are dropped before ids are assigned (so
`user_idx` and `item_idx` stay contiguous, and an item only they logged is not in the vocabulary);
`Interactions.dropped_users` / `dropped_events` count them. Logs where no user is left raise
`DataContractError`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recmodels.data.raw_logs import FEEDBACK_SIGNALS, DataContractError, validate_catalog, validate_raw_logs
from recmodels.data.rewards import RewardSpec, label_rewards
from recmodels.data.sources import RawLogs
from recmodels.data.splitting import MIN_EVENTS_FOR_HOLDOUT, drop_short_histories, leave_one_out_split


@dataclass
class Interactions:
    """The interactions table, its catalog, their sizes, and what the short-history rule dropped."""

    table: pd.DataFrame
    catalog: pd.DataFrame  # item_idx, item_id, title, genres, year (+ other catalog features)
    n_users: int
    n_items: int
    dropped_users: int = 0  # users with fewer than MIN_EVENTS_FOR_HOLDOUT events, left out
    dropped_events: int = 0  # their events


def sorted_ids(ids: pd.Series) -> np.ndarray:
    """Distinct ids in a deterministic order: numeric order when every id is an integer, else text order."""
    uniques = np.asarray(pd.unique(ids.astype(str)), dtype=object)
    as_int = pd.to_numeric(pd.Series(uniques), errors="coerce")
    if as_int.notna().all() and (as_int == as_int.round()).all():
        return uniques[np.argsort(as_int.to_numpy(), kind="stable")]
    return np.sort(uniques)


def _codes(ids: pd.Series, vocabulary: np.ndarray) -> np.ndarray:
    return pd.Index(vocabulary).get_indexer(ids.astype(str))


def build_interactions(raw: RawLogs, spec: RewardSpec) -> Interactions:
    """Drop users with fewer than 3 events, label rewards, map ids to contiguous ints, split
    chronologically, align the catalog. Raises `DataContractError` when no user has 3 events."""
    where = f"raw logs {raw.name!r}"
    logs, short = drop_short_histories(validate_raw_logs(raw.logs, where=where), user_col="user_id")
    if short.kept_users == 0:
        raise DataContractError(
            f"{where}: column 'user_id': no user has at least {MIN_EVENTS_FOR_HOLDOUT} events (one each for "
            f"train, valid and test), so every user was dropped: {short.users} users, {short.events} events "
            f"(e.g. user {short.example!r})")
    users, items = sorted_ids(logs["user_id"]), sorted_ids(logs["item_id"])
    columns = {
        "user_idx": _codes(logs["user_id"], users).astype(np.int32),
        "item_idx": (_codes(logs["item_id"], items) + 1).astype(np.int32),
        "timestamp": logs["timestamp"].to_numpy(np.int64),
        "reward": label_rewards(logs, spec).to_numpy(np.float32),
    }
    for name in FEEDBACK_SIGNALS + ("propensity",):
        if name in logs.columns:
            columns[name] = logs[name].to_numpy()
    columns["user_id"] = logs["user_id"].to_numpy()
    columns["item_id"] = logs["item_id"].to_numpy()
    table = leave_one_out_split(pd.DataFrame(columns), user_col="user_idx")
    order = [c for c in table.columns if c not in ("split", "user_id", "item_id")]
    table = table[order + ["split", "user_id", "item_id"]]
    for name in ("user_id", "item_id"):
        table[name] = table[name].astype(str)
    return Interactions(table=table, catalog=_align_catalog(raw, items), n_users=len(users), n_items=len(items),
                        dropped_users=short.users, dropped_events=short.events)


def _align_catalog(raw: RawLogs, items: np.ndarray) -> pd.DataFrame:
    """One row per logged item (item_idx 1..n); items the catalog lacks get empty title/genres."""
    logged = pd.DataFrame({"item_idx": np.arange(1, len(items) + 1, dtype=np.int32),
                           "item_id": pd.Series(items, dtype=str)})
    source = raw.catalog
    if source is None:
        source = pd.DataFrame({"item_id": pd.Series([], dtype=str)})
    source = validate_catalog(source, where=f"catalog of {raw.name!r}")
    catalog = logged.merge(source, on="item_id", how="left", sort=False)
    catalog["title"] = catalog["title"].fillna("").astype(str)
    catalog["genres"] = catalog["genres"].fillna("").astype(str)
    catalog["year"] = catalog["year"].astype("Int64")
    return catalog.reset_index(drop=True)
