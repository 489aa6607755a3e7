"""Reward labeling and the chronological leave-one-out split on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recmodels.data.raw_logs import DataContractError
from recmodels.data.rewards import RewardSpec, label_rewards
from recmodels.data.splitting import leave_one_out_split


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
    # user b: 4 events, two tied at t=20 (row order breaks the tie); user a: only 2 events.
    logs = pd.DataFrame({
        "user_id": ["b", "a", "b", "b", "a", "b"],
        "item_id": ["x", "p", "y", "z", "q", "w"],
        "timestamp": [20, 5, 10, 20, 1, 30],
    })
    out = leave_one_out_split(logs)
    assert out[["user_id", "item_id", "split"]].values.tolist() == [
        ["a", "q", "train"], ["a", "p", "train"],  # < 3 events: all train, still sorted by time
        ["b", "y", "train"], ["b", "x", "train"], ["b", "z", "valid"], ["b", "w", "test"],
    ]
    assert list(out.index) == list(range(6))
    assert "split" not in logs.columns


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
