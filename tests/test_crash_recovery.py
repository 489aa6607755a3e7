"""A run killed with SIGKILL during post-training: the next command marks it failed in Dagster, closes its
MLflow runs as FAILED, and `python -m pipelines.reexecute` (`make resume`) re-executes it from failure
without recomputing the upstream assets, the killed step resuming from its saved training state.

Real processes on a new Dagster home and MLflow sqlite store, as `make run` / `make resume` start them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from scripts.ui_check import SMALL_RUN_PARTITION, small_run_config
from pipelines.run_config import write_run_config
from tests.test_concurrent_runs import ROOT, chain_env, start_chain

pytestmark = pytest.mark.integration
UPSTREAM = ("raw_logs", "interactions", "item_tokens", "pretrained_policy", "ranker_reward_model")
SLOWER_POST_TRAINING = {"steps": 60, "eval_every": 20, "checkpoint_every": 5, "batch_size": 16}


def wait_for_training_state(home: Path, process: subprocess.Popen, timeout_s: float = 300) -> Path:
    """The first post-training state file the run saves (polled every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(home.glob("datasets/*/runs/*/resume/post_trained_*/training_state.pt"))
        if found:
            return found[0]
        assert process.poll() is None, "the run ended before any post-training state was saved"
        time.sleep(0.01)
    raise TimeoutError("no post-training state was saved")


def step_starts(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)}


def test_a_killed_run_is_closed_and_resumes_from_failure(tmp_path):
    from mlflow import MlflowClient

    home = tmp_path / "home"
    env = chain_env(home)
    config = small_run_config()
    for key in config["ops"]:
        if key.startswith("post_trained_"):
            config["ops"][key] = {"config": SLOWER_POST_TRAINING}
    run = start_chain(write_run_config(tmp_path / "run_config.yaml", config), env, tmp_path / "killed.log")
    state = wait_for_training_state(home, run)
    os.killpg(run.pid, signal.SIGKILL)  # the whole process group, as the OOM killer or a power cut would
    run.wait(timeout=60)
    killed_asset = state.parent.name

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]  # read the same instance from this process
    with dg.DagsterInstance.get() as instance:
        (parent,) = [r.dagster_run for r in instance.get_run_records()]
        assert parent.status == dg.DagsterRunStatus.STARTED  # nothing wrote its end
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    in_progress = {r.data.tags["dagster_asset_key"] for r in running}  # steps may run side by side
    assert killed_asset in in_progress and all(a.startswith("post_trained_") for a in in_progress)

    resumed = subprocess.run([sys.executable, "-m", "pipelines.reexecute"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"run {parent.run_id}: its process is gone; marked failed" in resumed.stdout

    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(parent.run_id).status == dg.DagsterRunStatus.FAILURE
        (child,) = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id != parent.run_id]
        assert child.status == dg.DagsterRunStatus.SUCCESS and child.parent_run_id == parent.run_id
        assert child.tags["dagster/partition"] == SMALL_RUN_PARTITION  # the same data set
        executed = step_starts(instance, child.run_id)
        assert killed_asset in executed and "champion" in executed
        assert not executed & set(UPSTREAM)  # read back from the killed run's stored outputs
        materialization = instance.get_latest_materialization_event(dg.AssetKey(killed_asset))
        assert materialization.run_id == child.run_id
        assert materialization.asset_materialization.metadata["resumed_from_step"].value >= 5
    for run in running:
        closed = client.get_run(run.info.run_id)
        assert closed.info.status == "FAILED" and closed.data.tags["recalign.closed_reason"]
    still_running = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    assert still_running == []
