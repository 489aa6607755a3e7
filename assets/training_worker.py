"""The Dagster Pipes worker of data-parallel pretraining (docs/distributed.md).

The `pretrained_policy` asset launches it through `dg.PipesSubprocessClient` when its config asks for more
than one process:

    python -m torch.distributed.run --standalone --nproc_per_node N -m assets.pretraining_worker

Every process joins torchrun's process group. ONE process talks to Dagster: local rank 0 of the node whose
environment holds the Pipes bootstrap variables (the node Dagster launched; on one node, rank 0). It opens
Dagster Pipes, reads the job (`recmodels.training.distributed.job_spec`) from the Pipes extras and
broadcasts it to the other processes; during training it sends each epoch's row as a custom message
(`{"epoch_row": row}`) and a log line, and at the end the result (`{"result": ...}`) and a materialization
with the run's distributed metadata. It is the lead of `pretrain_distributed`: it evaluates and writes the
checkpoint. The processes of other nodes (multi-node) run the same command without Pipes variables.

Imports dagster_pipes and recmodels only: no dagster, no mlflow (the asset logs to MLflow from the messages).
"""
from __future__ import annotations

import os
import time

from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesContext, open_dagster_pipes

from recmodels.training import distributed


def _report_row(pipes: PipesContext, row: dict) -> None:
    pipes.report_custom_message({"epoch_row": row})
    shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
    pipes.log.info(f"epoch {row['epoch']}: {shown}")


def _train(group: distributed.ProcessGroup, lead: int, pipes: PipesContext | None) -> None:
    spec = distributed.broadcast_object(dict(pipes.extras) if pipes is not None else None, src=lead)
    if pipes is not None:
        pipes.log.info(f"data-parallel pretraining: {group.world_size} processes, backend {group.backend}, "
                       f"global batch {spec['train_config']['batch_size']}")
    started = time.perf_counter()
    result = distributed.run_job(spec, callback=(lambda row: _report_row(pipes, row)) if pipes is not None else None,
                                 group=group, lead=lead)
    if pipes is not None:
        wall = time.perf_counter() - started
        pipes.report_custom_message({"result": distributed.result_summary(result)})
        pipes.report_asset_materialization(metadata={
            "world_size": group.world_size, "ddp_backend": group.backend,
            "nnodes": group.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", group.world_size)),
            "ddp_wall_seconds": round(wall, 2)})


def main() -> None:
    group = distributed.init_from_env()
    try:
        reporter = os.environ.get("LOCAL_RANK") == "0" and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ
        lead = distributed.first_rank_where(reporter)
        if lead is None:
            raise RuntimeError("no process of this torchrun job was launched by Dagster Pipes: run the job through "
                               "the pretrained_policy asset, or without Dagster with "
                               "`python -m recmodels.training.distributed --spec job.json`")
        if group.rank == lead:
            with open_dagster_pipes() as pipes:
                _train(group, lead, pipes)
        else:
            _train(group, lead, None)
    finally:
        distributed.close()


if __name__ == "__main__":
    main()
