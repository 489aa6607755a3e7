"""Run overhead of the services profile (Dagster on Postgres, MLflow server over HTTP) against the embedded
profile (sqlite files): the same small `full_chain` run as a `dagster job execute` process under each.

    make services && .venv/bin/python benchmarks/services_overhead.py [--runs 2]

Each profile gets a throw-away RECALIGN_HOME and the environment the Makefile gives `make run` under it
(`make -s profile-env`). The run config is scripts.ui_check.small_run_config with its simulated logs saved
as a file named for this benchmark: a data set of its own, so under both profiles run 1 is a first
promotion and run 2 compares with run 1's champion, whatever the server's registry already holds.
Runs alternate (embedded, services, embedded, ...) so a change in background load hits both. Prints
JSON: per profile and run, the process wall seconds and the Dagster run's own seconds (its record's
start to end, read back from that profile's run storage), their means, and services minus embedded.
The registered models and the experiment it created on the server are deleted at the end; the Dagster
runs stay, tagged `recalign/benchmark`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from pipelines.resources import profile_environment  # noqa: E402
from pipelines.run_config import full_chain_command, write_run_config  # noqa: E402
from scripts.ui_check import small_run_config  # noqa: E402

DAGSTER = str(Path(sys.executable).with_name("dagster"))
PROFILES = ("embedded", "services")
TAG = "recalign/benchmark"


def run_environment(profile: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_ARTIFACT"))}
    return env | profile | {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def dagster_run_seconds(env: dict[str, str], tag: str) -> tuple[str, float]:
    """(run id, end - start seconds) of the run tagged `tag`, from the run storage of env's DAGSTER_HOME."""
    code = ("import json, sys, dagster as dg; "
            f"(r,) = dg.DagsterInstance.get().get_run_records(dg.RunsFilter(tags={{{TAG!r}: {tag!r}}})); "
            "print(json.dumps([r.dagster_run.run_id, r.end_time - r.start_time, r.dagster_run.status.value]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    run_id, seconds, status = json.loads(out.stdout.strip().splitlines()[-1])
    if status != "SUCCESS":
        raise RuntimeError(f"run {run_id} ended {status}")
    return run_id, seconds


def one_run(env: dict[str, str], config: Path, log: Path) -> dict:
    tag = uuid.uuid4().hex
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(full_chain_command(DAGSTER, config, "file", {TAG: tag}),
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"dagster job execute exited with {code}; see {log}")
    run_id, seconds = dagster_run_seconds(env, tag)
    return {"run_id": run_id, "process_wall_s": round(wall, 2), "dagster_run_s": round(seconds, 2)}


def delete_from_server(tracking_uri: str, dataset: str) -> None:
    from mlflow import MlflowClient

    from assets.model_runs import POLICY_MODEL, POST_TRAINED_MODEL, RANKER_MODEL, registered_model_name

    client = MlflowClient(tracking_uri)
    for kind in (POLICY_MODEL, RANKER_MODEL, POST_TRAINED_MODEL):
        if client.search_registered_models(f"name = '{registered_model_name(kind, dataset)}'"):
            client.delete_registered_model(registered_model_name(kind, dataset))
    if experiment := client.get_experiment_by_name(f"recalign/{dataset}"):
        client.delete_experiment(experiment.experiment_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per profile (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away homes and the server's models")
    args = parser.parse_args(argv)
    from recmodels.data.simulator import SimulatorConfig, simulate_logs
    from recmodels.data.sources import load_raw_logs

    work = Path(tempfile.mkdtemp(prefix="recalign-services-overhead-"))
    config = small_run_config()
    logs = work / f"services-overhead-{uuid.uuid4().hex[:8]}.parquet"
    simulate_logs(SimulatorConfig(**config["ops"]["raw_logs"]["config"]["simulator"])).logs.to_parquet(logs)
    dataset = load_raw_logs("file", path=str(logs), cache_dir=work).name
    config["ops"]["raw_logs"] = {"config": {"path": str(logs)}}
    config_path = work / "run_config.yaml"
    write_run_config(config_path, config)
    envs = {p: run_environment(profile_environment(p, work / p)) for p in PROFILES}
    runs: dict[str, list[dict]] = {p: [] for p in PROFILES}
    try:
        for i in range(args.runs):
            for p in PROFILES:
                runs[p].append(one_run(envs[p], config_path, work / f"{p}-{i + 1}.log"))
                print(f"{p} run {i + 1}: {runs[p][-1]}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            delete_from_server(envs["services"]["MLFLOW_TRACKING_URI"], dataset)
    summary = {p: {"runs": runs[p],
                   "mean_process_wall_s": round(statistics.mean(r["process_wall_s"] for r in runs[p]), 2),
                   "mean_dagster_run_s": round(statistics.mean(r["dagster_run_s"] for r in runs[p]), 2)}
               for p in PROFILES}
    result = {"chain": "scripts.ui_check.small_run_config (its simulated logs as a file)", "dataset": dataset,
              "cpus": os.cpu_count(), **summary,
              "services_minus_embedded_s": {
                  key: round(summary["services"][key] - summary["embedded"][key], 2)
                  for key in ("mean_process_wall_s", "mean_dagster_run_s")}}
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
