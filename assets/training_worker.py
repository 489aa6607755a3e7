"""The Dagster Pipes worker of data-parallel training (docs/distributed.md): pretraining, or the post-training of
an NLL-type method.

An asset launches it through `dg.PipesSubprocessClient` when its config asks for more than one process
(`assets/torchrun.py`), naming the job:

    python -m torch.distributed.run --standalone --nproc_per_node N assets/training_worker.py pretraining
    python -m torch.distributed.run --standalone --nproc_per_node N assets/training_worker.py post_training

Every process joins torchrun's process group. ONE process talks to Dagster: local rank 0 of the node whose
environment holds the Pipes bootstrap variables (the node Dagster launched; on one node, rank 0). It opens
Dagster Pipes, reads the job's spec (the `job_spec` of the job's module in JOBS) from the Pipes extras and
broadcasts it to the other processes; during training it sends each evaluation row as a custom message
(`{"row": row}`) and a log line, and at the end the result (`{"result": ...}`, or `{"skipped": why}` for a
post-training method that cannot run on these logs) and a materialization with the run's distributed
metadata. It is the lead of the training: it evaluates and writes the checkpoint. The processes of other
nodes (multi-node) run the same command without Pipes variables.

Imports dagster_pipes and recmodels only: no dagster, no mlflow (the asset logs to MLflow from the messages).
"""
from __future__ import annotations

import argparse
import importlib
import os
import time

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesContext, open_dagster_pipes

from recmodels.post_training.registry import MethodNotApplicable
from recmodels.runtime import retain_freed_memory
from recmodels.training import distributed

# job -> the module of its `job_spec`, `run_job(spec, callback, group, lead)` and `result_summary(result)`
JOBS = {"pretraining": "recmodels.training.distributed", "post_training": "recmodels.post_training.distributed"}


def _report_row(pipes: PipesContext, row: dict) -> None:
    pipes.report_custom_message({"row": row})
    where = f"step {row['step']}" if "step" in row else f"epoch {row['epoch']}"
    shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k not in ("step", "epoch"))
    pipes.log.info(f"{where}: {shown}")


def _train(job: str, group: distributed.ProcessGroup, lead: int, pipes: PipesContext | None) -> None:
    module = importlib.import_module(JOBS[job])
    spec = distributed.broadcast_object(dict(pipes.extras) if pipes is not None else None, src=lead)
    if pipes is not None:
        pipes.log.info(f"data-parallel {job.replace('_', '-')}: {group.world_size} processes, backend "
                       f"{group.backend}, global batch {spec['train_config']['batch_size']}")
    started = time.perf_counter()
    try:
        result = module.run_job(spec, callback=(lambda row: _report_row(pipes, row)) if pipes is not None else None,
                                group=group, lead=lead)
    except MethodNotApplicable as skip:  # raised in every process before any collective call
        if pipes is not None:
            pipes.report_custom_message({"skipped": str(skip)})
        return
    if pipes is not None:
        wall = time.perf_counter() - started
        pipes.report_custom_message({"result": module.result_summary(result)})
        pipes.report_asset_materialization(metadata={
            "world_size": group.world_size, "ddp_backend": group.backend,
            "nnodes": group.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", group.world_size)),
            "ddp_wall_seconds": round(wall, 2)})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A data-parallel training job launched by its asset through "
                                                 "Dagster Pipes, under torchrun.")
    parser.add_argument("job", choices=sorted(JOBS))
    job = parser.parse_args(argv).job
    retain_freed_memory()  # as every step process of the chain (pipelines/definitions.py StepProcessRuntime)
    group = distributed.init_from_env()
    try:
        reporter = os.environ.get("LOCAL_RANK") == "0" and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ
        lead = distributed.first_rank_where(reporter)
        if lead is None:
            raise RuntimeError(f"no process of this torchrun job was launched by Dagster Pipes: run the job through "
                               f"its asset, or without Dagster with `python -m {JOBS[job]} --spec job.json`")
        if group.rank == lead:
            with open_dagster_pipes() as pipes:
                _train(job, group, lead, pipes)
        else:
            _train(job, group, lead, None)
    finally:
        distributed.close()


if __name__ == "__main__":
    main()
