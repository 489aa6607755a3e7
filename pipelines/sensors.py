"""The `new_raw_logs` sensor: retrain the whole chain when a new raw-log file lands in a watched folder.

The folder is `RECALIGN_WATCH_DIR` (default `<RECALIGN_HOME>/incoming`). Every new `.parquet`,
`.csv` or `.tsv` file there starts one `full_chain` run with `raw_logs` reading that file
(the `file` partition). A file counts as new when its path, size or modification time differs from
what the sensor has already seen: the cursor remembers each file's signature, and the run key
(path + mtime + size) makes Dagster refuse a second run for the same file even if the cursor is
lost. Hidden files and files modified in the last `SETTLE_S` seconds (possibly still being
written) wait for a later tick.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg

from assets.partitions import FILE_PARTITION
from pipelines.resources import project_home
from pipelines.run_config import with_executor

LOG_SUFFIXES = (".parquet", ".csv", ".tsv")
SETTLE_S = 5.0
MIN_INTERVAL_S = 30


def watch_dir() -> Path:
    return Path(os.environ.get("RECALIGN_WATCH_DIR", project_home() / "incoming")).resolve()


def file_signature(path: Path) -> str:
    """`<mtime_ns>-<size>`: changes when the file is rewritten."""
    stat = path.stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


def new_log_files(folder: Path, seen: dict[str, str], now: float | None = None) -> list[tuple[Path, str]]:
    """(path, signature) of settled log files in `folder` whose signature is not in `seen`, oldest first."""
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    found = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in LOG_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        if now - stat.st_mtime < SETTLE_S:
            continue
        signature = file_signature(path)
        if seen.get(str(path)) != signature:
            found.append((stat.st_mtime_ns, path, signature))
    return [(path, signature) for _, path, signature in sorted(found)]


def raw_logs_run_config(path: Path) -> dict:
    return with_executor({"ops": {"raw_logs": {"config": {"path": str(path)}}}})


def build_new_raw_logs_sensor(job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name="new_raw_logs", job=job, minimum_interval_seconds=MIN_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Runs the full chain on each new raw-log file (parquet/CSV/TSV) in RECALIGN_WATCH_DIR "
                           "(default <RECALIGN_HOME>/incoming); the same file never runs twice.")
    def new_raw_logs(context: dg.SensorEvaluationContext):
        folder = watch_dir()
        seen = json.loads(context.cursor) if context.cursor else {}
        files = new_log_files(folder, seen)
        if not files:
            yield dg.SkipReason(f"no new raw-log file in {folder}")
            return
        for path, signature in files:
            seen[str(path)] = signature
            yield dg.RunRequest(run_key=f"{path}:{signature}", run_config=raw_logs_run_config(path),
                                partition_key=FILE_PARTITION,
                                tags={"recalign/raw_logs_file": str(path)})
        existing = {str(p) for p in folder.iterdir()}
        context.update_cursor(json.dumps({p: s for p, s in seen.items() if p in existing}, sort_keys=True))

    return new_raw_logs
