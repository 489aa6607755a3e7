"""`full_chain` on Dagster's multiprocess executor: steps run side by side in their own processes, each
with its share of the cores' torch threads (the pretrained policy, which runs almost alone, with all of them),
start the costlier post-training variants first, and train exactly the weights they train in one process.

A real `dagster job execute` (as `make run` starts it) with `max_concurrent: 2` on a new Dagster home
and MLflow store, on the small chain (simulated logs, tiny models); then the chain up to the two models and
three of the post-trained variants is materialized again in this process (`dg.materialize`, in-process)
with each step process's torch thread count, and every tensor of their checkpoints is compared. (The
thread count itself changes the low-order bits of trained weights, see `recmodels.runtime.set_threads`:
the same count is what makes the two runs comparable bit for bit.)
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch

from pipelines.run_config import executor_config, full_chain_command, write_run_config
from recmodels.post_training.registry import get_method
from recmodels.post_training.variants import VARIANTS as ALL_VARIANTS
from recmodels.runtime import on_glibc, retain_freed_memory_wanted, set_threads, threads_per_process
from recmodels.storage.checkpoints import load_checkpoint
from scripts.ui_check import SMALL_RUN_PARTITION, small_run_config
from tests.test_concurrent_runs import DAGSTER, ROOT, chain_env

pytestmark = pytest.mark.integration
VARIANTS = ("sft", "dpo", "grpo")  # supervised, preference and RL post-training
UPSTREAM = ("raw_logs", "interactions", "item_tokens")
MODELS = ("pretrained_policy", "ranker_reward_model", *(f"post_trained_{v}" for v in VARIANTS))


def step_processes(instance: dg.DagsterInstance, run_id: str) -> tuple[int, dict[str, int], int]:
    """(the executor's process, the process of each step, how many steps ran at once at most)."""
    parent, pids, events = None, {}, []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and event.message.startswith("Executing steps"):
            parent = event.pid
        elif event.event_type == dg.DagsterEventType.STEP_START:
            pids[event.step_key] = event.pid
            events.append((record.timestamp, 1))
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            events.append((record.timestamp, -1))
    running = most = 0
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    return parent, pids, most


def launch_order(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The steps in the order the executor started a worker process for them."""
    return [r.dagster_event.step_key for r in instance.all_logs(run_id)
            if r.dagster_event is not None and r.dagster_event.event_type == dg.DagsterEventType.STEP_WORKER_STARTING]


def torch_default_threads(env: dict[str, str]) -> int:
    """The intra-op threads torch starts with in a new process of this environment."""
    return int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                              capture_output=True, text=True, check=True).stdout)


def tensors(checkpoint: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint)["state_dict"]


def test_two_step_processes_train_the_weights_of_one_process(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = chain_env(home)
    env.pop("OMP_NUM_THREADS")  # the step processes set their own thread count
    config = small_run_config()
    config["execution"] = {"config": executor_config(2)}
    run = subprocess.run(full_chain_command(DAGSTER, write_run_config(tmp_path / "run_config.yaml", config),
                                            SMALL_RUN_PARTITION),
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    for key in ("DAGSTER_HOME", "RECALIGN_HOME"):
        monkeypatch.setenv(key, env[key])
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    from assets import ALL_ASSETS, ALL_CHECKS
    from pipelines.resources import build_resources

    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        run_id = record.dagster_run.run_id
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        parent, pids, at_once = step_processes(instance, run_id)
        assert set(MODELS) <= pids.keys()
        assert parent not in pids.values() and len(set(pids.values())) == len(pids)  # a process per step
        assert at_once == 2  # the ranker next to the pretrained policy, two variants side by side
        # all variants are ready at once: they start longest first (the methods' step cost), so short ones end
        costs = [get_method(ALL_VARIANTS[step.removeprefix("post_trained_")].method).step_cost
                 for step in launch_order(instance, run_id) if step.startswith("post_trained_")]
        assert len(costs) == len(ALL_VARIANTS) and costs == sorted(costs, reverse=True), costs
        cores = torch_default_threads(env)
        threads = threads_per_process(2, cores=cores)
        logs = [r.user_message for r in instance.all_logs(run_id) if r.dagster_event is None]
        memory = f"freed memory retained: {on_glibc() and retain_freed_memory_wanted()}"  # glibc, unless turned off
        sft = pids["post_trained_sft"]
        assert f"step post_trained_sft ran in process {sft}, torch threads: {threads}, {memory}" in logs
        # the chain's longest step, which only the ranker runs beside, keeps every core (ALL_CORES_TAG)
        pretraining = pids["pretrained_policy"]
        assert f"step pretrained_policy ran in process {pretraining}, torch threads: {cores}, {memory}" in logs
        for alone in ("evaluation_report", "champion"):  # the chain's last two steps, each after all others
            assert f"step {alone} ran in process {pids[alone]}, torch threads: {cores}, {memory}" in logs

        stored = {name: pickle.loads((home / "asset_outputs" / name / f"{run_id}.pickle").read_bytes())
                  for name in MODELS}

        def materialize(selection: list[str], n_threads: int) -> dg.ExecuteInProcessResult:
            previous = set_threads(n_threads)
            try:
                ops = [op for op in ("raw_logs", *MODELS) if op in selection]
                return dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=selection, instance=instance,
                                      resources=build_resources(),
                                      run_config={"ops": {op: config["ops"][op] for op in ops}},
                                      partition_key=SMALL_RUN_PARTITION)
            finally:
                set_threads(previous)

        pretrained = materialize([*UPSTREAM, "pretrained_policy"], cores)
        rest = materialize([name for name in MODELS if name != "pretrained_policy"], threads)
    assert pretrained.success and rest.success
    for name in MODELS:
        result = pretrained if name == "pretrained_policy" else rest
        in_process, step_process = result.output_for_node(name).checkpoint, stored[name].checkpoint
        assert Path(in_process) != Path(step_process)
        expected, actual = tensors(in_process), tensors(step_process)
        assert expected.keys() == actual.keys()
        for key, tensor in expected.items():
            assert torch.equal(tensor, actual[key]), f"{name}: {key} differs between the two runs"
