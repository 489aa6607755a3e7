"""Resource instances of the code location, configured from the environment.

`RECALIGN_HOME` (default `.recalign/` in the project root) holds data, checkpoints and reports;
MLflow uses `MLFLOW_TRACKING_URI` when set, else a sqlite store under the home, with artifacts in
`MLFLOW_ARTIFACT_ROOT` or `<home>/mlflow/artifacts`. The records assets hand each other are stored per
asset and run under `<home>/asset_outputs/` (assets/io_manager.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from assets.io_manager import RunScopedIOManager
from assets.resources import MlflowTracking, RecalignHome


def project_home() -> Path:
    return Path(os.environ.get("RECALIGN_HOME", Path(__file__).resolve().parents[1] / ".recalign")).resolve()


def build_resources() -> dict:
    home = project_home()
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    artifact_root = os.environ.get("MLFLOW_ARTIFACT_ROOT", str(home / "mlflow" / "artifacts"))
    return {"home": RecalignHome(root=str(home)),
            "mlflow": MlflowTracking(tracking_uri=tracking_uri, artifact_root=artifact_root),
            "io_manager": RunScopedIOManager(base_dir=str(home / "asset_outputs"))}
