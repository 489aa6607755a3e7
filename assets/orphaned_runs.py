"""Runs whose process died: marked failed in Dagster and closed as FAILED in MLflow at the next run's start.

A run killed with SIGKILL (or by the out-of-memory killer, or a power cut) writes nothing on its way
out: Dagster keeps it `STARTED` and its MLflow runs stay `RUNNING`. Dagster's run monitoring
(`dagster.yaml`) only detects a dead run worker for launchers that can check one (Kubernetes,
Docker, ECS); the local launcher and `dagster job execute` cannot. So every run, when its MLflow
resource starts, looks for runs of this host whose process is gone:

- a Dagster run is `STARTED`, carries this host's name in its `recalign/host` tag, and the process
  that executes its steps (the pid Dagster logs in its "Executing steps ..." engine event) is no
  longer alive: it is reported failed (`instance.report_run_failed`), so the UI shows it failed and
  it can be re-executed from failure;
- an MLflow run is `RUNNING` and its Dagster run has finished (failed, canceled or succeeded), or it
  was opened on this host (`recalign.host`) by a process (`recalign.pid`) that is gone: it is
  terminated as `FAILED`, with the reason in its `recalign.closed_reason` tag.

Runs on other hosts are judged by their Dagster run's status only: their host reaps its own.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import dagster as dg

HOST_TAG = "recalign/host"  # Dagster run tag: the host that executes the run
MLFLOW_HOST_TAG = "recalign.host"  # MLflow run tags: the host and process that opened the run
MLFLOW_PID_TAG = "recalign.pid"
CLOSED_REASON_TAG = "recalign.closed_reason"
RUN_WORKER_EVENT = "Executing steps"  # how the in-process and multiprocess executors announce their pid


def this_host() -> str:
    return socket.gethostname()


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): existence is all we know
        return True


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process that executes the run's steps, from the executor's engine event."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is None or not (event.message or "").startswith(RUN_WORKER_EVENT):
            continue
        pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
        if pid is not None:
            return int(pid.value)
    return None


def fail_orphaned_dagster_runs(instance: dg.DagsterInstance, host: str | None = None) -> list[str]:
    """Report failed every STARTED run of `host` whose run worker process is gone; return their ids."""
    host = host or this_host()
    failed = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run = record.dagster_run
        if run.tags.get(HOST_TAG) != host:
            continue
        pid = run_worker_pid(instance, run.run_id)
        if pid is None or process_alive(pid):
            continue
        instance.report_run_failed(run, message=(
            f"The process that executed this run (pid {pid} on {host}) is gone: it was killed or crashed. "
            "Marked failed at the start of a later run; re-execute it from failure to resume."))
        failed.append(run.run_id)
    return failed


def close_orphaned_mlflow_runs(client: Any, instance: dg.DagsterInstance | None, host: str | None = None) -> list[str]:
    """Terminate as FAILED every RUNNING MLflow run whose Dagster run finished or whose process (on `host`)
    is gone; return their ids."""
    host = host or this_host()
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    closed = []
    for run in client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        dagster_run = instance.get_run_by_id(tags["dagster_run_id"]) if instance and "dagster_run_id" in tags else None
        reason = None
        if dagster_run is not None and dagster_run.is_finished:
            reason = f"its Dagster run {dagster_run.run_id} ended {dagster_run.status.value}"
        elif tags.get(MLFLOW_HOST_TAG) == host and MLFLOW_PID_TAG in tags and not process_alive(int(tags[MLFLOW_PID_TAG])):
            reason = f"the process that opened it (pid {tags[MLFLOW_PID_TAG]} on {host}) is gone"
        if reason is None:
            continue
        client.set_tag(run.info.run_id, CLOSED_REASON_TAG, reason)
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run.info.run_id)
    return closed
