"""The common life of a model asset: an MLflow run, per-epoch metrics, a checkpoint, a registry version.

Every model asset (pretrained policy, ranker, each post-trained policy) trains inside
`tracked_training`, which yields a callback for the training loop and, on success, saves the
checkpoint under the Dagster run's folder, logs it to MLflow and registers a model version.
Post-trained policies register a servable pyfunc model (`assets/servable_policy.py`) that bundles
the checkpoint, the item catalog and the decoding settings; every such version starts as a
challenger (`status=challenger`) until the `champion` asset judges it.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
import pandas as pd

from assets.resources import MlflowTracking, RecalignHome
from recmodels.runtime import cpu_has_bf16_dot_products
from recmodels.storage.checkpoints import save_checkpoint

# mlflow (~2.5 s to import) and assets.servable_policy, which imports it, are imported where they are used:
# loading the code location does not import them.

# The three kinds of registered model. Each data set has its own registered model of each kind,
# `<kind>.<data set>` (registered_model_name), so versions, aliases and the champion history of one
# data set never mix with another's.
POLICY_MODEL = "recalign-pretrained-policy"
RANKER_MODEL = "recalign-ranker"
POST_TRAINED_MODEL = "recalign-post-trained-policy"
SERVABLE_CODE = Path(__file__).with_name("servable_policy.py")  # the pyfunc's code file
LIBRARY_DIR = Path(__file__).resolve().parents[1] / "recmodels"  # shipped inside the model as code
SERVING_PACKAGES = ("mlflow", "torch", "pandas", "numpy", "pyarrow")


def registered_model_name(kind: str, dataset: str) -> str:
    """The registry name of the `kind` model (POLICY_MODEL, RANKER_MODEL, POST_TRAINED_MODEL) trained on
    `dataset`: `recalign-post-trained-policy.movielens-100k`. A user file's data set name carries its
    content digest (recmodels.data.sources), so two different files never share a champion."""
    return f"{kind}.{dataset}"


def library_config(cls: type, overrides: dict[str, Any], **fixed: Any) -> Any:
    """Build a recmodels dataclass config from Dagster config: a field left at None keeps the library default."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**fixed, **{k: v for k, v in overrides.items() if v is not None and k in names})


def with_preset(settings: dict[str, Any], preset: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`settings` with each knob left empty taken from `preset`, the knobs taken): a data set's measured settings
    (`recmodels.training.presets`) fill what the run config does not name; a value the run config names wins."""
    taken = {name: value for name, value in preset.items() if settings.get(name) is None}
    return {**settings, **taken}, taken


def with_cpu_bf16(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with its `cpu_bf16` left empty resolved: bf16 autocast on the CPU where it has bf16 dot products
    (`recmodels.runtime.cpu_has_bf16_dot_products`), fp32 elsewhere. The library's default stays fp32 (bit for
    bit); the chain's post-training steps take the faster kernels where the machine has them."""
    return with_preset(settings, {"cpu_bf16": cpu_has_bf16_dot_products()})[0]


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
                      filename: str, kind: str, tags: dict[str, str]) -> dict[str, Any]:
    """Checkpoint `model`, log it to the open MLflow run, register it as a version of the `kind` model of
    `dataset`; return the registry fields of the asset's record (dataset, checkpoint, mlflow_run_id,
    registered_model, model_version)."""
    ckpt = save_checkpoint(Path(home.run_dir(dataset, training.context.run_id)) / filename, model, config)
    training.mlflow.log_artifact(ckpt, artifact_path="checkpoint")
    model_name = registered_model_name(kind, dataset)
    version = training.mlflow.register(training.run, f"checkpoint/{ckpt.name}", model_name,
                                       tags={"dataset": dataset, **tags})
    return {"dataset": dataset, "checkpoint": str(ckpt), "mlflow_run_id": training.run.info.run_id,
            "registered_model": model_name, "model_version": version}


def servable_policy_model(checkpoint: Path, catalog: Path, decoding: dict[str, Any] | None = None,
                          semantic_ids: Path | None = None) -> dict[str, Any]:
    """The arguments of `mlflow.pyfunc.log_model` / `save_model` for the servable pyfunc of a policy checkpoint
    (with the semantic IDs file of a semantic-ID policy)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    from assets.servable_policy import DEFAULT_DECODING, HISTORY_COLUMN

    signature = ModelSignature(
        inputs=Schema([ColSpec(Array(AnyType()), HISTORY_COLUMN), ColSpec(AnyType(), "k", required=False)]),
        outputs=Schema([ColSpec(Array("string"), "item_ids"), ColSpec(Array("double"), "scores"),
                        ColSpec(Array("string"), "unknown_item_ids")]))
    first_ids = pd.read_parquet(catalog, columns=["item_id"])["item_id"].astype(str).head(3).tolist()
    return dict(python_model=str(SERVABLE_CODE), code_paths=[str(LIBRARY_DIR)],
                artifacts={"checkpoint": str(checkpoint), "catalog": str(catalog),
                           **({"semantic_ids": str(semantic_ids)} if semantic_ids else {})},
                model_config={**DEFAULT_DECODING, **(decoding or {})}, signature=signature,
                input_example=pd.DataFrame({HISTORY_COLUMN: [first_ids], "k": [5]}),
                pip_requirements=[f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES])


def log_servable_policy(checkpoint: Path, catalog: Path, decoding: dict[str, Any] | None = None,
                        semantic_ids: Path | None = None) -> Any:
    """Log the servable pyfunc model of a policy checkpoint to the active MLflow run; return its ModelInfo."""
    import mlflow.pyfunc

    return mlflow.pyfunc.log_model(name="policy", **servable_policy_model(checkpoint, catalog, decoding,
                                                                          semantic_ids))


def save_and_register_servable(training: TrainingRun, home: RecalignHome, dataset: str, model: Any, config: Any,
                               filename: str, catalog: str | Path, kind: str,
                               tags: dict[str, str], semantic_ids: str | Path | None = None) -> dict[str, Any]:
    """Checkpoint a policy, log it as a servable pyfunc model, register it as a challenger of the `kind` model
    of `dataset`; return the registry fields of the asset's record (those of `save_and_register` and model_uri)."""
    ckpt = save_checkpoint(Path(home.run_dir(dataset, training.context.run_id)) / filename, model, config)
    info = log_servable_policy(ckpt, Path(catalog), semantic_ids=Path(semantic_ids) if semantic_ids else None)
    model_name = registered_model_name(kind, dataset)
    version = training.mlflow.register_logged_model(
        training.run, info, model_name,
        tags={"dataset": dataset, "status": "challenger", "dagster_run_id": training.context.run_id, **tags})
    return {"dataset": dataset, "checkpoint": str(ckpt), "mlflow_run_id": training.run.info.run_id,
            "registered_model": model_name, "model_version": version, "model_uri": info.model_uri}
