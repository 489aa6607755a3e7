"""Resource instances of the code location, configured from the environment.

`RECALIGN_HOME` (default `.recalign/` in the project root) holds data, checkpoints and reports;
MLflow uses `MLFLOW_TRACKING_URI` when set, else a sqlite store under the home, with artifacts in
`MLFLOW_ARTIFACT_ROOT` or `<home>/mlflow/artifacts`; with a tracking server (an http(s) URI, the services
profile) and no `MLFLOW_ARTIFACT_ROOT`, experiments use the server's artifact store, over HTTP. The records
assets hand each other are stored per asset and run under `<home>/asset_outputs/` (assets/io_manager.py).
The profile (`RECALIGN_PROFILE`) is chosen in the Makefile, which sets these variables.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from assets.io_manager import RunScopedIOManager
from assets.resources import MlflowTracking, RecalignHome


def project_home() -> Path:
    return Path(os.environ.get("RECALIGN_HOME", Path(__file__).resolve().parents[1] / ".recalign")).resolve()


def profile_environment(profile: str, home: str | Path) -> dict[str, str]:
    """The variables the Makefile sets for a run of `profile` (`embedded` or `services`) with `RECALIGN_HOME`
    = `home` (`make -s profile-env`; it also links the profile's dagster.yaml into its `DAGSTER_HOME`).
    The services test and benchmark start runs with them, as `make run` would."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(root), "profile-env",
                          f"RECALIGN_PROFILE={profile}", f"RECALIGN_HOME={Path(home).resolve()}"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"make profile-env RECALIGN_PROFILE={profile} failed: {out.stderr.strip()}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def is_tracking_server(tracking_uri: str) -> bool:
    """An MLflow tracking server (`http://...`, `https://...`): it stores and serves the artifacts itself."""
    return tracking_uri.lower().startswith(("http://", "https://"))


def build_resources() -> dict:
    home = project_home()
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    if os.environ.get("RECALIGN_PROFILE") == "services" and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise RuntimeError("RECALIGN_PROFILE=services, but MLFLOW_TRACKING_URI is not set: the Makefile sets the "
                           "profile's variables (make run, make dev); elsewhere load `make -s profile-env` first")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    artifact_root = os.environ.get("MLFLOW_ARTIFACT_ROOT") or (
        None if is_tracking_server(tracking_uri) else str(home / "mlflow" / "artifacts"))
    return {"home": RecalignHome(root=str(home)),
            "mlflow": MlflowTracking(tracking_uri=tracking_uri, artifact_root=artifact_root),
            "io_manager": RunScopedIOManager(base_dir=str(home / "asset_outputs"))}
