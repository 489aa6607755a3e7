"""The interactions table contract, the aligned catalog, and parquet storage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recmodels.data import tables
from recmodels.data.interactions import build_interactions
from recmodels.data.raw_logs import DataContractError
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import RawLogs, load_raw_logs
from recmodels.data.tables import frame_digest, read_parquet, write_parquet
from recmodels.data.sequences import build_user_sequences, eval_examples
from tests.synthetic import make_synthetic_logs, write_synthetic_dataset


def hand_raw(catalog: pd.DataFrame | None = None) -> RawLogs:
    logs = pd.DataFrame({
        "user_id": ["10", "2", "10", "2", "10", "2", "10"],
        "item_id": ["b", "a", "c", "b", "a", "c", "d"],
        "timestamp": [4, 1, 3, 2, 2, 3, 1],
        "rating": [5, 1, 3, 4, 2, 5, 4],
        "propensity": [0.5, 0.5, 0.2, 1.0, 0.1, 0.3, 0.4],
    })
    return RawLogs("hand", logs, catalog, digest="")


def test_contiguous_ids_sorted_per_user_and_time():
    inter = build_interactions(hand_raw(), RewardSpec())
    t = inter.table
    assert (inter.n_users, inter.n_items) == (2, 4)
    assert t.columns.tolist() == ["user_idx", "item_idx", "timestamp", "reward", "rating", "propensity",
                                  "split", "user_id", "item_id"]
    assert {c: str(t[c].dtype) for c in ["user_idx", "item_idx", "timestamp", "reward"]} == {
        "user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "reward": "float32"}
    # numeric ids sort numerically ("2" before "10"); item ids a..d -> 1..4 (0 is padding)
    assert t["user_id"].tolist() == ["2", "2", "2", "10", "10", "10", "10"]
    assert t["user_idx"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert t["item_id"].tolist() == ["a", "b", "c", "d", "a", "c", "b"]
    assert t["item_idx"].tolist() == [1, 2, 3, 4, 1, 3, 2]
    assert t["timestamp"].tolist() == [1, 2, 3, 1, 2, 3, 4]
    assert t["reward"].tolist() == [-1.0, 0.5, 1.0, 0.5, -0.5, 0.0, 1.0]
    assert t["split"].tolist() == ["train", "valid", "test", "train", "train", "valid", "test"]
    assert t["propensity"].tolist() == [0.5, 1.0, 0.3, 0.4, 0.1, 0.2, 0.5]


def test_users_with_fewer_than_three_events_are_dropped_and_counted():
    extra = pd.DataFrame({"user_id": ["7", "7", "8"], "item_id": ["e", "a", "f"], "timestamp": [9, 8, 7],
                          "rating": [5, 4, 3], "propensity": [0.5, 0.5, 0.5]})
    raw = hand_raw()
    raw = RawLogs("hand", pd.concat([extra, raw.logs], ignore_index=True), None, digest="")
    inter = build_interactions(raw, RewardSpec())
    assert (inter.dropped_users, inter.dropped_events) == (2, 3)
    assert (inter.n_users, inter.n_items) == (2, 4)  # items "e" and "f" were logged by dropped users only
    pd.testing.assert_frame_equal(inter.table, build_interactions(hand_raw(), RewardSpec()).table)
    assert (inter.table.groupby("user_idx")["split"].value_counts().unstack()[["valid", "test"]] == 1).all().all()


def test_logs_where_no_user_has_three_events_are_rejected_naming_the_rule_and_counts():
    logs = hand_raw().logs.groupby("user_id").head(2)  # 2 users, 4 events
    with pytest.raises(DataContractError,
                       match=r"raw logs 'hand': column 'user_id': no user has at least 3 events .*train, valid and "
                             r"test.*2 users, 4 events"):
        build_interactions(RawLogs("hand", logs, None, digest=""), RewardSpec())


def test_catalog_covers_logged_items_only():
    catalog = pd.DataFrame({"item_id": ["a", "c", "zz"], "title": ["A", "C", "never logged"],
                            "genres": ["Drama|War", "Comedy", "X"], "year": [1999, None, 2001]})
    cat = build_interactions(hand_raw(catalog), RewardSpec()).catalog
    assert cat["item_idx"].tolist() == [1, 2, 3, 4]
    assert cat["item_id"].tolist() == ["a", "b", "c", "d"]
    assert cat["title"].tolist() == ["A", "", "C", ""]
    assert cat["genres"].tolist() == ["Drama|War", "", "Comedy", ""]
    assert str(cat["year"].dtype) == "Int64" and cat["year"].isna().tolist() == [False, True, True, True]


def test_no_catalog_gives_empty_titles():
    cat = build_interactions(hand_raw(), RewardSpec()).catalog
    assert len(cat) == 4 and (cat["title"] == "").all() and cat["year"].isna().all()


def test_synthetic_dataset_feeds_the_sequence_builder(tmp_path):
    logs_path, catalog_path = write_synthetic_dataset(tmp_path, n_users=30, n_items=20, seed=5)
    raw = load_raw_logs("file", path=str(logs_path), catalog_path=str(catalog_path), cache_dir=tmp_path)
    inter = build_interactions(raw, RewardSpec())
    t = inter.table
    assert sorted(t["user_idx"].unique()) == list(range(inter.n_users)) and inter.n_users == 30
    assert sorted(t["item_idx"].unique()) == list(range(1, inter.n_items + 1))
    assert len(inter.catalog) == inter.n_items and (inter.catalog["title"] != "").all()
    assert (t.groupby("user_idx")["split"].apply(lambda s: (s == "test").sum()) == 1).all()  # >= 5 events each
    assert t.groupby("user_idx")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    examples = eval_examples(build_user_sequences(t), "test", max_len=8)
    assert len(examples) == 30


def test_synthetic_logs_are_deterministic_and_structured():
    a, b = make_synthetic_logs(seed=3), make_synthetic_logs(seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(make_synthetic_logs(seed=4))
    assert a["rating"].between(1, 5).all() and a["rating"].nunique() >= 4
    assert a.groupby("user_id").size().between(5, 20).all()


# --- parquet storage ------------------------------------------------------------------------------

def test_parquet_round_trip_keeps_dtypes_and_digest(tmp_path):
    inter = build_interactions(hand_raw(), RewardSpec())
    path = write_parquet(inter.table, tmp_path / "deep" / "dir" / "t.parquet")
    back = read_parquet(path)
    pd.testing.assert_frame_equal(back, inter.table)
    assert frame_digest(back) == frame_digest(inter.table)
    cat_back = read_parquet(write_parquet(inter.catalog, tmp_path / "cat.parquet"))
    pd.testing.assert_frame_equal(cat_back, inter.catalog)


def test_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    path = write_parquet(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.parquet")

    def broken_writer(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(tables.pq, "write_table", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(pd.DataFrame({"a": [9]}), path)
    monkeypatch.undo()
    assert read_parquet(path)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind


def test_read_parquet_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet does not exist"):
        read_parquet(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"bad\.parquet is corrupt"):
        read_parquet(bad)


def test_frame_digest_sees_values_order_and_dtypes():
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    d = frame_digest(df)
    assert d == frame_digest(df.copy()) and d == frame_digest(df.set_axis([5, 6, 7]))
    assert d != frame_digest(df.iloc[::-1].reset_index(drop=True))
    assert d != frame_digest(df.assign(a=[1, 2, 4]))
    assert d != frame_digest(df.astype({"a": np.int32}))
    assert d != frame_digest(df.rename(columns={"a": "c"}))
