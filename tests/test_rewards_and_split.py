"""Reward labeling and the chronological leave-one-out split on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recmodels.data.raw_logs import DataContractError
from recmodels.data.rewards import RewardSpec, label_rewards
from recmodels.data.splitting import MIN_EVENTS_FOR_HOLDOUT, drop_short_histories, leave_one_out_split


def test_movielens_default_reward():
    logs = pd.DataFrame({"rating": [1, 2, 3, 4, 5]}, index=[10, 11, 12, 13, 14])
    r = label_rewards(logs, RewardSpec())
    assert r.dtype == np.float32 and r.name == "reward"
    assert r.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert r.index.tolist() == [10, 11, 12, 13, 14]


def test_click_and_custom_reward_specs():
    clicks = label_rewards(pd.DataFrame({"click": [0, 1, 1]}), RewardSpec("click", 0.0, 1.0, 0.0, 1.0))
    assert clicks.tolist() == [0.0, 1.0, 1.0]
    dwell = label_rewards(pd.DataFrame({"dwell_s": [30.0, 90.0]}), RewardSpec("dwell_s", 60.0, 30.0, -2, 2))
    assert dwell.tolist() == [-1.0, 1.0]


def test_nan_signal_stays_nan():
    r = label_rewards(pd.DataFrame({"rating": [5.0, np.nan]}), RewardSpec())
    assert r[0] == 1.0 and np.isnan(r[1])


def test_missing_signal_column_is_named():
    with pytest.raises(DataContractError, match=r"signal column 'click' is not in the logs.*'rating'"):
        label_rewards(pd.DataFrame({"rating": [1]}), RewardSpec(signal="click"))


def test_bad_reward_spec_rejected():
    with pytest.raises(ValueError, match="scale"):
        RewardSpec(scale=0.0)
    with pytest.raises(ValueError, match="low < high"):
        RewardSpec(low=1.0, high=-1.0)


def test_leave_one_out_split_hand_case():
    # user b: 4 events, two tied at t=20 (row order breaks the tie); user c: exactly 3; user a: only 2.
    logs = pd.DataFrame({
        "user_id": ["b", "a", "c", "b", "b", "a", "c", "b", "c"],
        "item_id": ["x", "p", "r", "y", "z", "q", "s", "w", "t"],
        "timestamp": [20, 5, 9, 10, 20, 1, 8, 30, 7],
    })
    kept, dropped = drop_short_histories(logs)
    assert (dropped.users, dropped.events, dropped.kept_users, dropped.example) == (1, 2, 2, "a")
    assert kept["user_id"].tolist() == ["b", "c", "b", "b", "c", "b", "c"]  # row order kept
    out = leave_one_out_split(kept)
    assert out[["user_id", "item_id", "split"]].values.tolist() == [
        ["b", "y", "train"], ["b", "x", "train"], ["b", "z", "valid"], ["b", "w", "test"],
        ["c", "t", "train"], ["c", "s", "valid"], ["c", "r", "test"],
    ]
    assert list(out.index) == list(range(7))
    assert "split" not in logs.columns and len(logs) == 9


def test_split_refuses_users_too_short_for_a_holdout_naming_the_user():
    logs = pd.DataFrame({"user_id": ["b", "a", "b", "b", "a"], "timestamp": [1, 2, 3, 4, 5]})
    with pytest.raises(ValueError, match=r"column 'user_id': user 'a' has 2 events; every user needs at least 3"):
        leave_one_out_split(logs)


def test_dropping_short_histories_counts_users_and_events_and_keeps_the_rest():
    logs = pd.DataFrame({"user_idx": [0, 1, 1, 2, 2, 2, 3], "timestamp": range(7)})
    kept, dropped = drop_short_histories(logs, user_col="user_idx")
    assert MIN_EVENTS_FOR_HOLDOUT == 3
    assert (dropped.users, dropped.events, dropped.kept_users) == (3, 4, 1)
    assert kept["user_idx"].tolist() == [2, 2, 2] and list(kept.index) == [0, 1, 2]
    nobody, all_dropped = drop_short_histories(logs.iloc[:3], user_col="user_idx")
    assert nobody.empty and (all_dropped.users, all_dropped.events, all_dropped.kept_users) == (2, 3, 0)
    _, none = drop_short_histories(logs.iloc[3:6], user_col="user_idx")
    assert (none.users, none.events, none.example) == (0, 0, None)


def test_split_ties_at_the_end_follow_row_order():
    logs = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [1, 2, 3, 4], "timestamp": [9, 9, 9, 1]})
    out = leave_one_out_split(logs)
    assert out["item_id"].tolist() == [4, 1, 2, 3]
    assert out["split"].tolist() == ["train", "train", "valid", "test"]


def test_exactly_three_events_get_one_of_each():
    logs = pd.DataFrame({"user_idx": [0, 0, 0], "timestamp": [3, 1, 2]})
    out = leave_one_out_split(logs, user_col="user_idx")
    assert out["timestamp"].tolist() == [1, 2, 3]
    assert out["split"].tolist() == ["train", "valid", "test"]
