"""Re-execute a failed `full_chain` run from failure, from the command line (the UI's "Re-execute from
failure" button does the same).

    python -m pipelines.reexecute            # the latest failed full_chain run
    python -m pipelines.reexecute RUN_ID     # that run

The steps that succeeded are not run again: their stored outputs (`<RECALIGN_HOME>/asset_outputs/`)
are read back, so the upstream assets are not recomputed. A training step that was killed resumes from
the training state it saved (`<RECALIGN_HOME>/datasets/<data set>/runs/<root run id>/resume/`). A run
whose process was killed is first marked failed (assets/orphaned_runs.py), so it can be re-executed.
The new run has the failed run's config and partition and shows in the UI as its child. `make resume` runs this
and then the end-of-run summary.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import dagster as dg  # noqa: E402
from dagster._core.storage.tags import PARTITION_NAME_TAG, SYSTEM_TAG_PREFIX  # noqa: E402

from assets.orphaned_runs import fail_orphaned_dagster_runs  # noqa: E402

JOB = "full_chain"


class ReexecutionError(RuntimeError):
    """The run cannot be re-executed from failure (unknown, still running or not failed)."""


def full_chain() -> dg.JobDefinition:
    """The full_chain job, rebuilt from the code location in the process that executes it."""
    from pipelines.definitions import defs

    return defs.resolve_job_def(JOB)


def failed_run(instance: dg.DagsterInstance, run_id: str | None) -> dg.DagsterRun:
    """The run to re-execute: `run_id`, or the latest full_chain run, which must have failed."""
    if run_id is None:
        records = instance.get_run_records(dg.RunsFilter(job_name=JOB), limit=1)
        if not records:
            raise ReexecutionError(f"no {JOB} run in the Dagster instance at {os.environ.get('DAGSTER_HOME')}")
        run = records[0].dagster_run
    else:
        run = instance.get_run_by_id(run_id)
        if run is None:
            raise ReexecutionError(f"no run {run_id!r} in the Dagster instance at {os.environ.get('DAGSTER_HOME')}")
    if run.status != dg.DagsterRunStatus.FAILURE:
        raise ReexecutionError(f"run {run.run_id} is {run.status.value}: only a FAILURE can be re-executed "
                               "from failure (a run still in progress on this host is not failed)")
    return run


def inherited_tags(parent: dg.DagsterRun) -> dict[str, str]:
    """The parent's tags that the re-execution keeps, as the UI's re-execution does: its partition (the
    data set, assets/partitions.py) and the non-system tags; Dagster sets the re-execution's own."""
    return {key: value for key, value in parent.tags.items()
            if key == PARTITION_NAME_TAG or not key.startswith(SYSTEM_TAG_PREFIX)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.reexecute", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help=f"the failed run (default: the latest {JOB} run)")
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        for run_id in fail_orphaned_dagster_runs(instance):
            print(f"run {run_id}: its process is gone; marked failed")
        try:
            parent = failed_run(instance, args.run_id)
        except ReexecutionError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"re-executing run {parent.run_id} from failure")
        result = dg.execute_job(dg.reconstructable(full_chain), instance=instance, raise_on_error=False,
                                tags=inherited_tags(parent),
                                reexecution_options=dg.ReexecutionOptions.from_failure(parent.run_id, instance))
        print(f"run {result.run_id} (re-execution of {parent.run_id}): {'SUCCESS' if result.success else 'FAILURE'}")
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
