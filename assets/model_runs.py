"""The common life of a model asset: an MLflow run, per-epoch metrics, a checkpoint, a registry version.

Every model asset (pretrained policy, ranker, each post-trained policy) trains inside
`tracked_training`, which yields a callback for the training loop and, on success, saves the
checkpoint under the Dagster run's folder, logs it to MLflow and registers a model version.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import dagster as dg

from assets.resources import MlflowTracking, RecalignHome
from recmodels.checkpoints import save_checkpoint

POLICY_MODEL = "recalign-pretrained-policy"
RANKER_MODEL = "recalign-ranker"
POST_TRAINED_MODEL = "recalign-post-trained-policy"


def library_config(cls: type, overrides: dict[str, Any], **fixed: Any) -> Any:
    """Build a recmodels dataclass config from Dagster config: a field left at None keeps the library default."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**fixed, **{k: v for k, v in overrides.items() if v is not None and k in names})


@dataclasses.dataclass
class TrainingRun:
    """What an asset body fills in while it trains inside `tracked_training`."""

    run: Any
    mlflow: MlflowTracking
    context: dg.AssetExecutionContext

    def callback(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", row.get("epoch", 0)))
        self.mlflow.log_metrics(row, step=step)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
        self.context.log.info(f"step {step}: {shown}")


@contextmanager
def tracked_training(context: dg.AssetExecutionContext, mlflow: MlflowTracking, dataset: str,
                     data_digest: str, params: dict[str, Any]) -> Iterator[TrainingRun]:
    with mlflow.start_run(context, dataset, data_digest, params) as run:
        yield TrainingRun(run=run, mlflow=mlflow, context=context)


def save_and_register(training: TrainingRun, home: RecalignHome, dataset: str, model: Any, config: Any,
                      filename: str, model_name: str, tags: dict[str, str],
                      aliases: tuple[str, ...] = ()) -> dict[str, Any]:
    """Checkpoint `model`, log it to the open MLflow run, register it; return the asset's record."""
    ckpt = save_checkpoint(Path(home.run_dir(dataset, training.context.run_id)) / filename, model, config)
    training.mlflow.log_artifact(ckpt, artifact_path="checkpoint")
    version = training.mlflow.register(training.run, f"checkpoint/{ckpt.name}", model_name,
                                       tags={"dataset": dataset, **tags}, aliases=aliases)
    return {"dataset": dataset, "checkpoint": str(ckpt), "mlflow_run_id": training.run.info.run_id,
            "registered_model": model_name, "model_version": version}
