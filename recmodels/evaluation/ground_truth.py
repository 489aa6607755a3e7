"""Ground-truth metrics on simulated data (docs/design.md §5): what the oracle says a top list is worth.

For each user the policy's top-1 and top-10 lists are scored with the oracle's true expected
reward; the reward-hacking gap is the ranker-judged score of the top-10 list minus its true
reward. `best_top10_true` is the best possible list (history excluded): an upper bound.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TRUE_METRICS = ("true_top1", "true_top10", "hacking_gap_top10")


class OracleIds:
    """Maps the interactions' user_idx / item_idx back to the ids the oracle knows."""

    def __init__(self, interactions: pd.DataFrame, catalog: pd.DataFrame):
        users = interactions.drop_duplicates("user_idx").set_index("user_idx")["user_id"].astype(str)
        self.user_id = users
        self.item_id = np.empty(int(catalog["item_idx"].max()) + 1, dtype=object)
        self.item_id[catalog["item_idx"].to_numpy()] = catalog["item_id"].astype(str).to_numpy()

    def users(self, user_idx: np.ndarray) -> np.ndarray:
        return self.user_id.loc[np.asarray(user_idx)].to_numpy()

    def items(self, item_idx: np.ndarray) -> np.ndarray:
        return self.item_id[np.asarray(item_idx)]


def true_reward_metrics(oracle, ids: OracleIds, user_idx: np.ndarray, top10: np.ndarray,
                        judged_top10: np.ndarray) -> dict[str, np.ndarray]:
    """Per user: true reward of the top-1 item and of the top-10 list, and judged minus true."""
    users = ids.users(user_idx)
    lists = ids.items(top10)  # [N, 10] item ids
    true_top1 = oracle.true_reward(users, lists[:, 0])
    true_top10 = oracle.list_true_reward(users, list(lists))
    return {"true_top1": true_top1, "true_top10": true_top10,
            "hacking_gap_top10": np.asarray(judged_top10, dtype=np.float64) - true_top10}


def best_possible_top10(oracle, ids: OracleIds, user_idx: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """The true reward of each user's best top-10 list among catalog items not in the history."""
    users = ids.users(user_idx)
    exclude = [ids.items(s) for s in seen]
    candidates = [i for i in ids.item_id[1:] if i is not None]
    return oracle.best_list_reward(users, 10, exclude=exclude, candidates=candidates)
