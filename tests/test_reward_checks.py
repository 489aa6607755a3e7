"""Great Expectations checks of the interactions table: each fails on a crafted bad table and passes on a good one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recmodels.data.quality import BLOCKING_CHECKS, WARNING_CHECKS, reward_checks, reward_histogram
from recmodels.data.rewards import RewardSpec

SPEC = RewardSpec()


def good_table(n_users: int = 20, per_user: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    split = np.tile(["train"] * (per_user - 2) + ["valid", "test"], n_users)
    return pd.DataFrame({
        "user_idx": np.repeat(np.arange(n_users), per_user).astype(np.int32),
        "item_idx": rng.integers(1, 30, n).astype(np.int32),
        "timestamp": 1_600_000_000 + np.arange(n, dtype=np.int64),
        "reward": ((rng.integers(1, 6, n) - 3) / 2).astype(np.float32),
        "rating": rng.integers(1, 6, n),
        "split": pd.Series(split, dtype=str),
        "user_id": pd.Series([f"u{u:02d}" for u in np.repeat(np.arange(n_users), per_user)], dtype=str),
    })


def run(table, **kwargs) -> dict:
    return {o.name: o for o in reward_checks(table, SPEC, **kwargs)}


def test_good_table_passes_everything_and_reports_observed_values():
    table = good_table()
    outcomes = reward_checks(table, SPEC, reference_hist=reward_histogram(table["reward"], -1, 1))
    assert [o.name for o in outcomes] == list(BLOCKING_CHECKS + WARNING_CHECKS)
    assert all(o.passed for o in outcomes), [o.description for o in outcomes if not o.passed]
    assert [o.blocking for o in outcomes] == [True] * 6 + [False] * 3
    by = {o.name: o for o in outcomes}
    assert by["reward_std_above_floor"].observed["std"] == pytest.approx(float(table["reward"].std()), rel=1e-4)
    assert by["reward_in_range"].observed["min"] == -1.0 and by["reward_in_range"].observed["max"] == 1.0
    assert by["positive_share_in_band"].observed["positive_share"] == pytest.approx((table["reward"] > 0).mean())
    assert by["reward_histogram_drift"].observed["kl"] < 0.01


def test_nan_and_inf_rewards_fail_finite_check_with_counts():
    table = good_table()
    table.loc[[1, 5, 9], "reward"] = np.nan
    table.loc[[2, 4], "reward"] = np.inf
    out = run(table)
    bad = out["reward_not_null_and_finite"]
    assert not bad.passed and bad.blocking
    assert bad.observed["n_nan"] == 3 and bad.observed["n_inf"] == 2
    assert "column 'reward': 5 values are NaN or infinite" in bad.description
    assert "first at row 1 (user_id 'u00', item_idx" in bad.description and "labeled from column 'rating'" in bad.description
    assert bad.observed["first_row"] == 1
    assert not out["reward_in_range"].passed  # inf lies outside any declared range
    assert out["reward_std_above_floor"].passed  # computed over the finite values


def test_inf_alone_is_caught():
    table = good_table()
    table.loc[0, "reward"] = -np.inf
    bad = run(table)["reward_not_null_and_finite"]
    assert not bad.passed and bad.observed["n_inf"] == 1 and bad.observed["n_nan"] == 0


def test_out_of_range_reward_fails_naming_range():
    table = good_table()
    table.loc[[3, 7], "reward"] = [1.5, -3.0]
    out = run(table)["reward_in_range"]
    assert not out.passed
    assert out.observed["n_out_of_range"] == 2 and out.observed["min"] == -3.0 and out.observed["max"] == 1.5
    assert "2 values outside [-1.0, 1.0]" in out.description and "first at row 3 (user_id 'u00'" in out.description


def test_constant_reward_fails_std_floor():
    out = run(good_table().assign(reward=np.float32(0.5)))
    assert not out["reward_std_above_floor"].passed and out["reward_std_above_floor"].observed["std"] == 0.0
    assert "below the floor 0.05" in out["reward_std_above_floor"].description
    assert out["reward_not_null_and_finite"].passed and out["reward_in_range"].passed


def test_duplicate_events_fail():
    table = good_table()
    table = pd.concat([table, table.iloc[[4, 10]]], ignore_index=True)
    out = run(table)["no_duplicate_events"]
    assert not out.passed and out.blocking
    assert out.observed["n_duplicates"] == 2 and out.observed["n_rows_involved"] == 4
    assert "2 duplicated events" in out.description
    assert f"first repeated at row {len(table) - 2} (user_id 'u00'" in out.description


def test_schema_fails_on_wrong_types_and_split_values():
    table = good_table()
    table["timestamp"] = table["timestamp"].astype(np.float64)
    table["user_idx"] = table["user_idx"].astype(str)
    table.loc[0, "split"] = "holdout"
    out = run(table)["schema"]
    assert not out.passed
    assert "column 'timestamp': dtype float64 is not integer" in out.description
    assert "column 'user_idx': dtype str is not integer" in out.description
    assert "column 'split': 1 values outside ['train', 'valid', 'test']" in out.description
    assert out.observed["dtypes"]["timestamp"] == "float64"


def test_missing_reward_column_fails_schema_and_the_rest_cannot_run():
    out = run(good_table().drop(columns=["reward"]))
    assert not out["schema"].passed and "missing columns ['reward']" in out["schema"].description
    for name in ("reward_not_null_and_finite", "reward_in_range", "reward_std_above_floor",
                 "reward_histogram_drift", "positive_share_in_band"):
        assert not out[name].passed and "could not run: column 'reward' is missing" in out[name].description
    assert out["no_duplicate_events"].passed  # its columns are all there


def test_non_numeric_reward_does_not_crash():
    out = run(good_table().assign(reward="high"))
    assert not out["schema"].passed and "column 'reward': dtype str is not float" in out["schema"].description
    assert "not numeric" in out["reward_in_range"].description


def test_drift_warns_against_a_shifted_reference_and_passes_without_one():
    table = good_table()
    no_ref = run(table)["reward_histogram_drift"]
    assert no_ref.passed and not no_ref.blocking and no_ref.observed["kl"] is None
    assert no_ref.observed["histogram"] == reward_histogram(table["reward"], -1, 1)
    shifted = reward_histogram(np.full(100, 0.95), -1, 1)
    drift = run(table, reference_hist=shifted)["reward_histogram_drift"]
    assert not drift.passed and not drift.blocking
    assert drift.observed["kl"] is None or drift.observed["kl"] > 0.1
    assert "exceeds the threshold 0.1" in drift.description


def test_positive_share_outside_band_warns():
    table = good_table().assign(reward=np.tile(np.float32([1.0, 0.5]), 60))
    out = run(table)["positive_share_in_band"]
    assert not out.passed and not out.blocking and out.observed["positive_share"] == 1.0
    assert "outside the band [0.2, 0.95]" in out.description
    assert run(table)["reward_std_above_floor"].passed  # only a warning: blocking checks pass


@pytest.mark.parametrize("damage, expected", [
    (lambda t: t.drop(index=[10, 11]), "first user_id 'u01' (user_idx 1, first row 6) has 4 train, 0 valid and 0 test"),
    (lambda t: t.assign(split=t["split"].mask(t.index == 8, "test")),
     "first user_id 'u01' (user_idx 1, first row 6) has 3 train, 1 valid and 2 test"),
    (lambda t: t.assign(split=t["split"].mask(t.index.isin([12, 13, 14, 15]), "valid")),
     "first user_id 'u02' (user_idx 2, first row 12) has 0 train, 5 valid and 1 test"),
])
def test_a_user_without_one_valid_one_test_and_some_train_event_fails_naming_the_user(damage, expected):
    table = damage(good_table()).reset_index(drop=True)
    out = run(table)["users_have_train_valid_test"]
    assert not out.passed and out.blocking
    assert "column 'split': 1 of 20 users lack" in out.description and expected in out.description
    assert out.observed["n_users_failing"] == 1


def test_every_user_with_train_valid_and_test_passes_and_missing_split_cannot_run():
    out = run(good_table())["users_have_train_valid_test"]
    assert out.passed and out.observed["n_users"] == 20
    missing = run(good_table().drop(columns=["split"]))["users_have_train_valid_test"]
    assert not missing.passed and "could not run: columns ['split'] are missing" in missing.description


def test_timestamps_before_1990_or_in_the_future_only_warn_naming_the_first_row():
    table = good_table()
    table.loc[[4, 9], "timestamp"] = [86_400, 2_000_000_000]
    out = run(table, now=1_700_000_000)["timestamps_plausible"]
    assert not out.passed and not out.blocking
    assert out.observed["n_before_1990"] == 1 and out.observed["n_in_the_future"] == 1
    assert "column 'timestamp': 1 values before 1990-01-01 and 1 after now (2023-11-14T22:13:20 UTC)" in out.description
    assert "first at row 4 (user_id 'u00', item_idx" in out.description
    assert run(good_table(), now=1_700_000_000)["timestamps_plausible"].passed
    assert not run(good_table(), now=1_500_000_000)["timestamps_plausible"].passed  # every event after "now"


def test_reward_histogram_hand_case():
    hist = reward_histogram([-1.0, -1.0, 0.0, 1.0, np.nan, np.inf], low=-1, high=1, bins=4)
    assert hist["bins"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert hist["weights"] == [0.5, 0.0, 0.25, 0.25]
