"""The `full_chain` run config that `make run` hands to `dagster job execute -c FILE`.

    python -m pipelines.run_config --source movielens-100k --tokenization atomic --out run_config.yaml
    python -m pipelines.run_config --source file --logs my_logs.csv --columns movie_id=item_id,ts=timestamp --out ...
    python -m pipelines.run_config --workers 1 --out ...    # one step process at a time

`dagster job execute` takes run config only from files, so the Makefile's variables (`SOURCE`,
`LOGS`, `COLUMNS`, `TOKENIZATION`, `WORKERS`) become a YAML file under `RECALIGN_HOME`, and the run's
partition, the source (assets/partitions.py), the JSON tags of `--tags-out`; the file stays
there so the exact config of the last `make run` can be read or re-used with `-c`. Bad input (an
unknown source, `file` without logs, a missing file, a malformed column mapping, a worker count that
is no positive integer) is an error that names the variable, before anything runs.

`WORKERS` is the multiprocess executor's `max_concurrent`, the number of steps that run at once, each
in its own process (default: the cores this process may use); the file always holds the executor's
whole config (`execution: config: multiprocess: ...`), start method included.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from dagster._core.storage.tags import PARTITION_NAME_TAG

from recmodels.data.sources import SOURCES
from recmodels.runtime import available_cores
from recmodels.tokenization.items import DEFAULT_TOKENIZATION, TOKENIZATIONS


# The forkserver that Dagster's multiprocess executor forks the step processes from imports this once
# (torch, mlflow, GX, the code location and warmed caches), instead of each step process importing it
# again (seconds per step under the default `spawn`).
PRELOAD_MODULES = ("pipelines.step_preload",)


class RunConfigError(ValueError):
    """A `make run` variable is wrong; the message names it."""


def parse_workers(text: str | int | None) -> int | None:
    """`WORKERS`: empty -> None (the default), else a positive integer."""
    if text is None or str(text).strip() == "":
        return None
    try:
        workers = int(str(text).strip())
    except ValueError:
        workers = 0
    if workers < 1:
        raise RunConfigError(f"WORKERS={text!r}: the number of steps run at once, a positive integer "
                             "(leave it empty for one per core)")
    return workers


def executor_config(workers: int | None = None) -> dict:
    """`full_chain`'s executor config (`execution: config:`): Dagster's multiprocess executor, `workers`
    step processes at once (default: `available_cores()`), forked from a forkserver that preloads
    `PRELOAD_MODULES` (pipelines/step_preload.py)."""
    return {"multiprocess": {"max_concurrent": workers or available_cores(),
                             "start_method": {"forkserver": {"preload_modules": list(PRELOAD_MODULES)}}}}


def parse_columns(text: str) -> dict[str, str]:
    """`"movie_id=item_id,ts=timestamp"` -> {"movie_id": "item_id", "ts": "timestamp"} (file column -> contract)."""
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        source, sep, target = (s.strip() for s in pair.partition("="))
        if not sep or not source or not target:
            raise RunConfigError(f"COLUMNS: {pair!r} is not FILE_COLUMN=CONTRACT_COLUMN "
                                 "(e.g. COLUMNS='movie_id=item_id,ts=timestamp')")
        if source in mapping:
            raise RunConfigError(f"COLUMNS: file column {source!r} is mapped twice")
        mapping[source] = target
    return mapping


def full_chain_run_config(source: str = "movielens-100k", logs: str | None = None, columns: str = "",
                          tokenization: str = DEFAULT_TOKENIZATION, workers: str | int | None = None) -> dict:
    """Run config of the `full_chain` job for one data source and tokenization, `workers` steps at once.
    The source itself is the run's partition (`partition_tags(source)`), not part of the config."""
    workers = parse_workers(workers)
    if source not in SOURCES:
        raise RunConfigError(f"SOURCE={source!r} is not a known source; use one of {', '.join(SOURCES)}")
    if tokenization not in TOKENIZATIONS:
        raise RunConfigError(f"TOKENIZATION={tokenization!r}: use one of {', '.join(TOKENIZATIONS)}")
    raw_logs: dict = {}
    if source == "file":
        if not logs:
            raise RunConfigError("SOURCE=file needs LOGS=path/to/logs.parquet|.csv|.tsv")
        path = Path(logs).expanduser().resolve()
        if not path.is_file():
            raise RunConfigError(f"LOGS={logs!r}: no such file ({path})")
        raw_logs["path"] = str(path)
        if columns:
            raw_logs["columns"] = parse_columns(columns)
    elif logs or columns:
        raise RunConfigError(f"LOGS and COLUMNS are for SOURCE=file; SOURCE={source!r} reads its own data")
    return {"ops": {"raw_logs": {"config": raw_logs},
                    "pretrained_policy": {"config": {"tokenization": tokenization}}},
            "execution": {"config": executor_config(workers)}}


def partition_tags(source: str) -> dict[str, str]:
    """The run tags that make a `full_chain` run materialize the `source` partition (assets/partitions.py)."""
    return {PARTITION_NAME_TAG: source}


def with_executor(config: dict) -> dict:
    """`config` with the executor's default config when it names none. `full_chain`'s own default run config
    applies only to runs launched with no config at all (the schedule's, the UI's launchpad): the job is
    partitioned, and Dagster takes a partitioned job's given run config as it is, without merging the
    defaults in; without this, a run would spawn every step process (seconds of imports each)."""
    return config if config.get("execution") else {**config, "execution": {"config": executor_config()}}


def write_run_config(path: str | Path, config: dict) -> Path:
    """Write a `full_chain` run config as the YAML file that `dagster job execute -c` reads, with the executor's
    config (`with_executor`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(with_executor(config), sort_keys=False))
    return path


def full_chain_command(dagster: str | Path, config: str | Path, source: str, tags: dict | None = None) -> list[str]:
    """The `dagster job execute` command line of a `full_chain` run on the `source` partition, as `make run`
    starts it (for the tests and benchmarks that start real runs)."""
    return [str(dagster), "job", "execute", "-m", "pipelines.definitions", "-j", "full_chain", "-c", str(config),
            "--tags", json.dumps({**partition_tags(source), **(tags or {})})]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_config", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="movielens-100k")
    parser.add_argument("--logs", default="", help="raw-log file for --source file")
    parser.add_argument("--columns", default="", help="file column -> contract column, e.g. movie_id=item_id,ts=timestamp")
    parser.add_argument("--tokenization", default=DEFAULT_TOKENIZATION)
    parser.add_argument("--workers", default="",
                        help="steps run at once, each in its own process (default: one per core)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the YAML run config")
    parser.add_argument("--tags-out", type=Path,
                        help="where to write the run's tags as JSON (the partition: `dagster job execute --tags`)")
    args = parser.parse_args(argv)
    try:
        config = full_chain_run_config(args.source, args.logs or None, args.columns, args.tokenization,
                                       args.workers)
    except RunConfigError as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 2
    print(f"run config: {write_run_config(args.out, config)}")
    if args.tags_out:
        args.tags_out.write_text(json.dumps(partition_tags(args.source)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
