"""Wall time of the `full_chain` run at 1 and 2 step processes (the multiprocess executor's `max_concurrent`,
`make run WORKERS=N`); JSON on stdout.

    python benchmarks/parallel_steps.py                                  # the small chain (simulated logs)
    python benchmarks/parallel_steps.py --chain movielens-100k --post-train-steps 50
    python benchmarks/parallel_steps.py --workers 1,2 --in-process      # and the in-process executor too

Each run is a real `dagster job execute` (as `make run` starts it) with the same run config but for its
`execution` block, one after the other, each on a fresh temporary home (its own Dagster instance and
MLflow store), on the same machine. Reported per run: the command's wall time (`wall_s`, start-up of
the CLI included), the run's own time from the Dagster event log (`run_s`), the span of the
post-training steps (`post_training_s`), the sum of the step times (`step_s_total`, the CPU-bound
work that parallel processes share), the model steps' times, the torch threads each step process used
and the 1-minute load average at its start and end (other work on the machine shows there); then the
speedup of every run over the first one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def chain_config(chain: str, post_train_steps: int | None) -> dict:
    """The run config of `chain` without its `execution` block."""
    from assets.post_training import VARIANTS
    from pipelines.run_config import full_chain_run_config
    from scripts.ui_check import small_run_config

    config = small_run_config() if chain == "small" else {"ops": full_chain_run_config(source=chain)["ops"]}
    if post_train_steps is not None:
        for variant in VARIANTS:
            ops = config["ops"].setdefault(f"post_trained_{variant}", {"config": {}})["config"]
            ops["steps"] = post_train_steps
            ops["eval_every"] = min(ops.get("eval_every") or 25, post_train_steps)
    return config


def run_timings(home: Path) -> dict:
    """From the run's event log: run time, post-training span, sum of step times, threads per step."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        run = record.dagster_run
        starts, ends, threads = {}, {}, set()
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None:
                if "torch threads: " in entry.user_message:
                    threads.add(int(entry.user_message.rsplit(" ", 1)[1]))
            elif event.event_type == dg.DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                ends[event.step_key] = entry.timestamp
    post = [k for k in starts if k.startswith("post_trained_")]
    models = ("ranker_reward_model", "pretrained_policy", "evaluation_report")
    return {"status": run.status.value,
            "run_s": round(record.end_time - record.start_time, 1) if record.end_time else None,
            "post_training_s": round(max(ends[k] for k in post) - min(starts[k] for k in post), 1) if post else None,
            "step_s_total": round(sum(ends[k] - starts[k] for k in ends), 1),
            "model_step_s": {k: round(ends[k] - starts[k], 1) for k in models if k in ends},
            "steps": len(ends), "torch_threads_per_step": sorted(threads)}


def fresh_home(config: dict, execution: dict, cache: Path | None, prefix: str) -> tuple[Path, Path, dict]:
    """A temporary home for one run (its own Dagster instance and MLflow store; the MovieLens wheel cache linked
    in): (home, run config file, environment for `dagster job execute`)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    (home / "dagster").mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    if cache is not None and cache.is_dir():
        (home / "cache").symlink_to(cache.resolve())
    config_file = home / "run_config.yaml"
    config_file.write_text(yaml.safe_dump({**config, "execution": {"config": execution}}, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_ARTIFACT",
                                                                        "OMP_NUM_THREADS", "MKL_NUM_THREADS"))}
    env |= {"DAGSTER_HOME": str(home / "dagster"), "RECALIGN_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return home, config_file, env


def run_chain(config: dict, partition: str, execution: dict, cache: Path | None, keep: bool) -> dict:
    """`dagster job execute` of full_chain on the `partition` data set on a fresh home; its timings."""
    from pipelines.run_config import full_chain_command

    home, config_file, env = fresh_home(config, execution, cache, "recalign-parallel-")
    load_start = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    done = subprocess.run(full_chain_command(DAGSTER, config_file, partition), cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = {"wall_s": round(wall, 1), "returncode": done.returncode, **run_timings(home),
              "load_avg_1min_start_end": [load_start, round(os.getloadavg()[0], 2)]}
    if done.returncode != 0:
        result["output_tail"] = (done.stdout + done.stderr)[-2000:]
    if keep:
        result["home"] = str(home)
    else:
        shutil.rmtree(home, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", default="small", choices=["small", "movielens-100k", "movielens-1m", "simulator"],
                        help="small: simulated logs and tiny models (scripts/ui_check.py); else that source, "
                             "default model settings")
    parser.add_argument("--post-train-steps", type=int, default=None, help="optimizer steps of every variant")
    parser.add_argument("--workers", default="1,2", help="comma-separated max_concurrent values, run in this order")
    parser.add_argument("--in-process", action="store_true", help="also run with the in-process executor, first")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("RECALIGN_CACHE_DIR", ROOT / ".recalign" / "cache")),
                        help="where the MovieLens wheels are cached (linked into each run's home)")
    parser.add_argument("--keep", action="store_true", help="keep each run's home (printed)")
    args = parser.parse_args()

    from pipelines.run_config import executor_config, parse_workers
    from scripts.ui_check import SMALL_RUN_PARTITION
    from recmodels.runtime import available_cores, threads_per_process

    workers = [parse_workers(w) for w in args.workers.split(",")]
    load_before = [round(x, 2) for x in os.getloadavg()]
    config = chain_config(args.chain, args.post_train_steps)
    partition = SMALL_RUN_PARTITION if args.chain == "small" else args.chain
    # warm the page cache with what every process imports, so that the first timed run does not pay for it
    subprocess.run([sys.executable, "-c", "import pipelines.definitions, mlflow.pyfunc, great_expectations"],
                   cwd=ROOT, check=True, capture_output=True)
    runs = []
    if args.in_process:
        runs.append({"executor": "in_process", **run_chain(config, partition, {"in_process": {}}, args.cache_dir, args.keep)})
    for n in workers:
        runs.append({"executor": "multiprocess", "max_concurrent": n, "expected_torch_threads": threads_per_process(n),
                     **run_chain(config, partition, executor_config(n), args.cache_dir, args.keep)})
    base = runs[0]["wall_s"]
    for run in runs:
        run["speedup_vs_first"] = round(base / run["wall_s"], 2)
    by_workers = {run["max_concurrent"]: run["wall_s"] for run in runs if run["executor"] == "multiprocess"}
    print(json.dumps({
        "chain": args.chain, "post_train_steps": args.post_train_steps,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cores": available_cores(), "cpu_count": os.cpu_count(), "load_avg_before": load_before,
        "python": platform.python_version(), "runs": runs,
        "speedup_2_vs_1_process": round(by_workers[1] / by_workers[2], 2) if {1, 2} <= by_workers.keys() else None,
    }, indent=2))


if __name__ == "__main__":
    main()
