"""Run the default pipeline once and print JSON: wall time per asset, pretraining throughput, peak memory,
test HR@10 / NDCG@10 per policy under both protocols.

    python benchmarks/pipeline_benchmark.py [--source movielens-100k] [--home DIR] [--tokenization semantic]

Uses a real Dagster instance and MLflow store under a fresh temporary home (or --home), with the
library's default model settings, so the models and their numbers are those of `make run`. All steps
run in this process (`execute_in_process`), one after the other, with torch's default thread count:
the per-asset times are the steps' own. `make run` runs the steps in parallel processes;
benchmarks/parallel_steps.py times that at 1 and 2 step processes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


def step_wall_times(instance, run_id: str) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS/FAILURE per step, read from the run's event log."""
    from dagster import DagsterEventType

    starts, times = {}, {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            times[event.step_key] = round(record.timestamp - starts[event.step_key], 2)
    return times


def accuracy_by_protocol(report_json: str) -> dict[str, dict[str, float]]:
    """Per policy, test HR@10 / NDCG@10 from report.json, the keys naming the protocol: `_masked` (history
    excluded, the primary one) and `_unmasked` (RecBole-comparable), with the history items in the unmasked top 10."""
    report = json.loads(Path(report_json).read_text())
    out = {}
    for name, p in report["policies"].items():
        unmasked = (p.get("unmasked") or {}).get("metrics") or {}
        out[name] = {**{f"{m}_masked": round(p["metrics"][m]["mean"], 4) for m in ("hr@10", "ndcg@10")},
                     **{f"{m}_unmasked": round(unmasked[m]["mean"], 4) for m in ("hr@10", "ndcg@10") if m in unmasked},
                     "seen_in_top10_unmasked": (p.get("seen_in_top10_unmasked") or {}).get("mean")}
    return out


def main() -> None:
    from recmodels.tokenization.items import DEFAULT_TOKENIZATION, TOKENIZATIONS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="movielens-100k")
    parser.add_argument("--home", default=None, help="recalign home (default: a fresh temp dir)")
    parser.add_argument("--tokenization", default=DEFAULT_TOKENIZATION, choices=list(TOKENIZATIONS),
                        help="the pretrained policy's tokenization (everything downstream follows it)")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="recalign-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["RECALIGN_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cache = Path(__file__).resolve().parents[1] / ".recalign" / "cache"
    if cache.exists() and not (home / "cache").exists():  # reuse the downloaded data set wheel
        (home / "cache").symlink_to(cache)

    import dagster as dg

    from assets.post_training import VARIANTS
    from pipelines.definitions import defs

    job = defs.resolve_job_def("full_chain")
    run_config = {"ops": {"pretrained_policy": {"config": {"tokenization": args.tokenization}}}}
    (home / "dagster").mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        start = time.perf_counter()
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        partition_key=args.source)
        total = time.perf_counter() - start
        steps = step_wall_times(instance, result.run_id)
    pretrained = result.output_for_node("pretrained_policy") if result.success else None
    evaluation = result.output_for_node("evaluation_report") if result.success else None
    methods = {}
    for variant in VARIANTS if result.success else ():
        record = result.output_for_node(f"post_trained_{variant}")  # steps and steps_per_s are None when skipped
        methods[variant] = {"wall_s": steps.get(f"post_trained_{variant}"), "steps": record.steps,
                            "optimizer_steps_per_s": record.steps_per_s, "skipped": record.skipped}
    print(json.dumps({
        "source": args.source, "tokenization": args.tokenization, "success": result.success,
        "total_wall_s": round(total, 2),
        "asset_wall_s": steps,
        "pretrain_sequences_per_s": pretrained.sequences_per_s if pretrained is not None else None,
        "pretrain_epochs": pretrained.epochs if pretrained is not None else None,
        "post_training": methods,
        "report_md": evaluation.md if evaluation is not None else None,
        "test_accuracy": accuracy_by_protocol(evaluation.json) if evaluation is not None else None,
        "hallucination_rate": evaluation.hallucination_rate if evaluation is not None else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": __import__("torch").get_num_threads(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
