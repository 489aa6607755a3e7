"""The stores a test's Dagster materialization writes to: a recalign home and an MLflow sqlite store under `tmp`."""
from __future__ import annotations

from pathlib import Path

from assets.resources import MlflowTracking, RecalignHome


def local_tracking_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def local_resources(tmp: Path) -> dict:
    """The `home` and `mlflow` resources of a chain whose files all live under `tmp`."""
    return {"home": RecalignHome(root=str(tmp / "home")),
            "mlflow": MlflowTracking(tracking_uri=local_tracking_uri(tmp), artifact_root=str(tmp / "artifacts"))}
