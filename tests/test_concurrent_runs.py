"""Two `full_chain` runs started at the same moment on a brand-new store both succeed, and the champion
alias ends on a version that passed every gate.

Real processes (`dagster job execute`, as `make run` starts them) on a new Dagster home and a new
MLflow sqlite store: the store is created and migrated once under a file lock, and the two champion
steps judge one after the other under the model's promotion lock.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.run_config import full_chain_command, write_run_config
from scripts.ui_check import SMALL_RUN_PARTITION, small_run_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def chain_env(home: Path) -> dict[str, str]:
    """The environment `make run` gives a run: its own Dagster home and recalign home, one torch thread."""
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster" / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_ARTIFACT"))}
    return {**env, "DAGSTER_HOME": str(home / "dagster"), "RECALIGN_HOME": str(home), "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


def start_chain(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(full_chain_command(DAGSTER, config, SMALL_RUN_PARTITION), cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_two_runs_at_once_on_a_new_store_both_succeed(tmp_path):
    from mlflow import MlflowClient

    from assets.model_runs import POST_TRAINED_MODEL, registered_model_name

    env = chain_env(tmp_path / "home")
    config = write_run_config(tmp_path / "run_config.yaml", small_run_config())
    # Dagster creates its own sqlite storage on first use without a lock (two processes creating it at once
    # can fail in alembic): create it first, as `make run` or `make dev` would have; the MLflow store and
    # everything of recalign's stay brand new.
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get().get_run_records()"],
                   env=env, check=True, timeout=120)
    logs = [tmp_path / f"run{i}.log" for i in range(2)]
    runs = [start_chain(config, env, log) for log in logs]
    codes = [run.wait(timeout=600) for run in runs]
    assert codes == [0, 0], "\n\n".join(log.read_text()[-3000:] for log in logs)

    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}")
    name = registered_model_name(POST_TRAINED_MODEL, "simulator")
    versions = {str(v.version): v.tags for v in client.search_model_versions(f"name='{name}'")}
    assert len({tags["dagster_run_id"] for tags in versions.values()}) == 2  # both runs registered
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    assert versions[champion]["status"] == "champion"  # never a rejected version
    history = client.get_registered_model(name).tags["champion_history"].split(",")
    assert history[-1] == champion
    judged = [tags for tags in versions.values() if tags.get("status") in ("champion", "former_champion", "rejected")]
    assert len(judged) == 2, versions  # each run's best challenger was judged once, one after the other
