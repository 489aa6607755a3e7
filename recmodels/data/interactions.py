"""The interactions table: raw logs with contiguous ids, rewards and the leave-one-out split.

Contract (docs/design.md §2): sorted by user then time, `user_idx` int32 0..U-1, `item_idx` int32
1..n_items (0 is padding), `timestamp` int64, `reward` float32, the raw feedback signals,
`propensity` when logged, `split` in {train, valid, test}, plus the original `user_id` /
`item_id` strings. The catalog has one row per logged item, in `item_idx` order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recmodels.data.raw_logs import FEEDBACK_SIGNALS, validate_catalog, validate_raw_logs
from recmodels.data.rewards import RewardSpec, label_rewards
from recmodels.data.sources import RawLogs
from recmodels.data.splitting import leave_one_out_split


@dataclass
class Interactions:
    table: pd.DataFrame
    catalog: pd.DataFrame  # item_idx, item_id, title, genres, year (+ other catalog features)
    n_users: int
    n_items: int


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
    """Label rewards, map ids to contiguous ints, split chronologically, align the catalog."""
    logs = validate_raw_logs(raw.logs, where=f"raw logs {raw.name!r}")
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
    return Interactions(table=table, catalog=_align_catalog(raw, items),
                        n_users=len(users), n_items=len(items))


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
