"""What the last `full_chain` run did, in a few lines: `make run` prints this when the job ends.

    python -m pipelines.run_summary                                # the latest full_chain run of $DAGSTER_HOME
    python -m pipelines.run_summary --min-pretrained-ndcg10 0.10   # and fail when the pretrained policy is worse

It reads the run from the Dagster instance (status, failed steps), the evaluation report it wrote
(where it is, the verdict, the pretrained policy's test NDCG@10 under both protocols) and the
champion decision, then names the next commands. Exit code 1 when the run did not succeed, when
it wrote no report, or when the pretrained policy's masked test NDCG@10 is under the given floor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import dagster as dg  # noqa: E402

JOB = "full_chain"
NEXT_COMMANDS = ("make dev        # the Dagster UI on http://127.0.0.1:3000 (lineage, checks, report, decision)",
                 "make mlflow-ui  # the MLflow UI on http://127.0.0.1:5000 (runs, registry, aliases)",
                 "make serve      # the champion over HTTP on http://127.0.0.1:5001/invocations",
                 "make champion   # champion, challenger and the champion history")


def latest_run(instance: dg.DagsterInstance, job: str = JOB):
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)
    return runs[0] if runs else None


def materialization_metadata(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """{asset name: metadata of its materialization in this run}."""
    out = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = record.asset_materialization
        out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return out


def failed_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    lines = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.event_specific_data.error
        while error is not None and error.cause is not None:  # the user's exception, not Dagster's wrapper
            error = error.cause
        message = (error.message if error else record.message).strip().splitlines()
        lines.append(f"{record.dagster_event.step_key}: {message[-1] if message else 'failed'}")
    return lines


def pretrained_ndcg10(report: dict) -> dict[str, float | None]:
    """The pretrained policy's test NDCG@10 under each protocol the report holds."""
    policy = report["policies"][report["baseline"]]
    unmasked = (policy.get("unmasked") or {}).get("metrics", {}).get("ndcg@10", {}).get("mean")
    return {"masked": policy["metrics"]["ndcg@10"]["mean"], "unmasked": unmasked}


def summary(instance: dg.DagsterInstance, run) -> tuple[list[str], dict | None]:
    """Lines to print about `run`, and its report (None when it wrote none)."""
    stats = instance.get_run_stats(run.run_id)
    took = (f" in {(stats.end_time - stats.start_time) / 60:.1f} min"
            if stats.start_time and stats.end_time else "")
    lines = [f"Dagster run {run.run_id}: {run.status.value}{took} ({JOB})"]
    lines += [f"  failed step {step}" for step in failed_steps(instance, run.run_id)]
    metadata = materialization_metadata(instance, run.run_id)
    report = None
    report_md = metadata.get("evaluation_report", {}).get("report_md")
    if report_md:
        report = json.loads(Path(report_md).with_name("report.json").read_text())
        ndcg = pretrained_ndcg10(report)
        lines += ["", f"Report: {report_md}",
                  f"Pretrained policy, test NDCG@10 (full ranking, leave-one-out): {ndcg['masked']:.4f} history masked"
                  + (f", {ndcg['unmasked']:.4f} unmasked (RecBole-comparable)" if ndcg["unmasked"] is not None else ""),
                  "Verdict:"]
        lines += [f"  - {sentence}" for sentence in report.get("verdict", [])]
    champion = metadata.get("champion")
    if champion:
        lines += ["", f"Champion: v{champion['champion_version']} of {champion['model_uri']}",
                  f"  {champion['decision'].replace('**', '')}"]
    if run.status == dg.DagsterRunStatus.SUCCESS:
        lines += ["", "Next:"] + [f"  {command}" for command in NEXT_COMMANDS]
    else:
        lines += ["", "Next: `make dev`, then Runs -> this run for the step logs; fix the input and `make run` again."]
    return lines, report


def exit_code(run, report: dict | None, floor: float | None) -> tuple[int, str | None]:
    """0 when the run succeeded, wrote a report and (with a `floor`) the pretrained masked NDCG@10 reaches it."""
    if run.status != dg.DagsterRunStatus.SUCCESS:
        return 1, None
    if report is None:
        return 1, "the run wrote no evaluation report"
    masked = pretrained_ndcg10(report)["masked"]
    if floor is not None and masked < floor:
        return 1, f"the pretrained policy's masked test NDCG@10 {masked:.4f} is below the floor {floor}"
    return 0, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_summary", description=__doc__.splitlines()[0])
    parser.add_argument("--min-pretrained-ndcg10", type=float, default=None,
                        help="fail when the pretrained policy's masked test NDCG@10 is below this")
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        run = latest_run(instance)
        if run is None:
            print(f"no {JOB} run in the Dagster instance at {os.environ.get('DAGSTER_HOME')}", file=sys.stderr)
            return 1
        lines, report = summary(instance, run)
    print("\n".join(lines))
    code, problem = exit_code(run, report, args.min_pretrained_ndcg10)
    if problem:
        print(problem, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
