"""The new_raw_logs sensor: one full_chain run per new log file, never two for the same file."""
from __future__ import annotations

import json
import os
import time

import dagster as dg
import pandas as pd
import pytest

from pipelines.definitions import defs, new_raw_logs


def write_logs(path, n_rows=3, age_s=60.0):
    logs = pd.DataFrame({"user_id": ["u"] * n_rows, "item_id": [str(i) for i in range(n_rows)],
                         "timestamp": list(range(n_rows)), "rating": [4.0] * n_rows})
    logs.to_csv(path, index=False) if path.suffix == ".csv" else logs.to_parquet(path)
    past = time.time() - age_s
    os.utime(path, (past, past))
    return path


def evaluate(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return list(new_raw_logs(context)), context.cursor


@pytest.fixture()
def watched(tmp_path, monkeypatch):
    folder = tmp_path / "incoming"
    folder.mkdir()
    monkeypatch.setenv("RECALIGN_WATCH_DIR", str(folder))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield folder, instance


def test_one_run_per_new_file_reading_that_file(watched):
    folder, instance = watched
    first = write_logs(folder / "day1.parquet", age_s=120)
    second = write_logs(folder / "day2.csv", age_s=60)
    (folder / "notes.txt").write_text("not logs")
    write_logs(folder / ".partial.parquet")  # hidden: an upload in progress
    requests, cursor = evaluate(instance)
    assert [r.run_config["ops"]["raw_logs"]["config"] for r in requests] == [
        {"path": str(first)}, {"path": str(second)}]  # oldest first
    assert [r.partition_key for r in requests] == ["file", "file"]  # the partition of user files
    # the executor's config travels with the request: a partitioned job's defaults are not merged into it
    assert all("forkserver" in r.run_config["execution"]["config"]["multiprocess"]["start_method"] for r in requests)
    assert len({r.run_key for r in requests}) == 2
    job = defs.resolve_job_def("full_chain")
    for r in requests:
        dg.validate_run_config(job, r.run_config)  # a valid run of the full chain
    assert set(json.loads(cursor)) == {str(first), str(second)}


def test_a_file_already_seen_does_not_run_again_until_it_changes(watched):
    folder, instance = watched
    path = write_logs(folder / "logs.parquet")
    (request,), cursor = evaluate(instance)
    again, cursor = evaluate(instance, cursor)
    assert len(again) == 1 and isinstance(again[0], dg.SkipReason)
    write_logs(path, n_rows=5)  # rewritten: new size and mtime, a new run key
    (changed,), _ = evaluate(instance, cursor)
    assert isinstance(changed, dg.RunRequest) and changed.run_key != request.run_key


def test_a_file_still_being_written_waits_for_a_later_tick(watched):
    folder, instance = watched
    write_logs(folder / "fresh.parquet", age_s=0)
    (skip,), cursor = evaluate(instance)
    assert isinstance(skip, dg.SkipReason) and cursor is None


def test_the_sensor_targets_the_full_chain_and_runs_by_default():
    sensor = defs.resolve_sensor_def("new_raw_logs")
    assert sensor.job_name == "full_chain"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
