"""A training asset's step as a `torchrun` job launched through Dagster Pipes (docs/distributed.md).

An asset whose config inherits `TorchrunConfig` trains data-parallel when `nproc_per_node` (or `nnodes`) is
above 1: `run_training_job` launches `torchrun` on `assets/training_worker.py` with `dg.PipesSubprocessClient`,
passing the job's spec as Pipes extras. The worker's log lines reach the run's logs as it trains, its
evaluation rows come back as custom messages and go to `callback` (the asset's MLflow callback, as in one
process), and the asset loads the checkpoint the worker's lead process wrote.
"""
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import dagster as dg

WORKER = Path(__file__).with_name("training_worker.py")


class TorchrunConfig(dg.Config):
    """Data-parallel training under torchrun; 1 process (the default) trains in the asset's step."""

    nproc_per_node: int = 1  # processes on this node (one per GPU with CUDA); batch_size stays the global batch
    nnodes: int = 1  # nodes; more than 1 needs rdzv_endpoint and the same torchrun command started on the others
    rdzv_endpoint: Optional[str] = None  # host:port of the c10d rendezvous (multi-node only)
    rdzv_id: Optional[str] = None  # the rendezvous id every node of the job passes (default: recalign-<asset>)


def torchrun_command(settings: dict, job: str, asset: str) -> list[str]:
    """The torchrun command of this node running `job`: `--standalone` on one node, a c10d rendezvous on several."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    if settings["nnodes"] == 1:
        command.append("--standalone")
    else:
        command += ["--nnodes", str(settings["nnodes"]), "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", settings["rdzv_endpoint"],
                    "--rdzv_id", settings["rdzv_id"] or f"recalign-{asset}"]
    return command + ["--nproc_per_node", str(settings["nproc_per_node"]), str(WORKER), job]


def thread_env(nproc_per_node: int) -> dict[str, str]:
    """OMP_NUM_THREADS for the worker processes unless the environment sets it: this node's cores shared among them
    (torchrun itself would give each process one thread)."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc_per_node))}


def n_processes(settings: dict, asset: str) -> int:
    """How many processes the run config asks for (1: train in the step); dg.Failure naming the field when the
    settings are invalid."""
    for name in ("nproc_per_node", "nnodes"):
        if settings[name] < 1:
            raise dg.Failure(f"{asset} config '{name}' must be >= 1, got {settings[name]}")
    if settings["nnodes"] > 1 and not settings["rdzv_endpoint"]:
        raise dg.Failure(f"{asset} config 'nnodes' > 1 needs 'rdzv_endpoint' (host:port of the rendezvous)")
    return settings["nproc_per_node"] * settings["nnodes"]


def check_global_batch(settings: dict, batch_size: int, asset: str) -> None:
    """The global batch must give every process at least one window."""
    processes = n_processes(settings, asset)
    if batch_size < processes:
        raise dg.Failure(f"{asset} config 'batch_size'={batch_size} is the global batch: it must be at least the "
                         f"number of processes ({processes})")


def run_training_job(context: dg.AssetExecutionContext, settings: dict, job: str, spec: dict,
                     callback: Callable[[dict], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `job` (a key of the worker's JOBS) on `spec` in torchrun processes through Dagster Pipes. Returns the
    worker's result summary (or `{"skipped": why}`) and the metadata of its materialization (processes,
    backend, wall time); each evaluation row goes to `callback` once the worker has finished."""
    asset = context.asset_key.to_user_string()
    invocation = dg.PipesSubprocessClient().run(command=torchrun_command(settings, job, asset), context=context,
                                                extras=spec, env=thread_env(settings["nproc_per_node"]))
    summary = None
    for message in invocation.get_custom_messages():
        if "row" in message:
            callback(message["row"])
        elif "result" in message:
            summary = message["result"]
        elif "skipped" in message:
            summary = {"skipped": message["skipped"]}
    if summary is None:
        raise dg.Failure(f"the data-parallel {job} worker of {asset} ended without reporting its result")
    reported = {}
    for reported_result in invocation.get_results(implicit_materializations=False):
        if isinstance(reported_result, dg.MaterializeResult):
            reported.update(reported_result.metadata or {})
    return summary, reported
