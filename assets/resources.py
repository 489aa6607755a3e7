"""The two resources every asset uses: where files live, and the MLflow tracking store.

`RecalignHome` lays out the project's storage: one folder per data set and Dagster run, so a new
materialization never overwrites what an earlier one wrote. `MlflowTracking` is a thin wrapper on
MLflow's fluent API and `MlflowClient` (the `dagster-mlflow` integration is dated): it opens one run
per model asset, tagged with the Dagster run id and asset key, and registers model versions.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import dagster as dg
from filelock import FileLock

from assets.orphaned_runs import (HOST_TAG, MLFLOW_HOST_TAG, MLFLOW_PID_TAG, close_orphaned_mlflow_runs,
                                  fail_orphaned_dagster_runs, this_host)

# mlflow (~2.5 s to import) is imported where it is used: loading the code location does not import it.


class RecalignHome(dg.ConfigurableResource):
    """Root folder of everything recalign writes: data, checkpoints, reports, the download cache."""

    root: str

    @property
    def cache_dir(self) -> Path:
        return Path(self.root) / "cache"

    @property
    def lock_dir(self) -> Path:
        """Lock files that serialize work across processes (store creation, promotion)."""
        return Path(self.root) / "locks"

    def run_dir(self, dataset: str, run_id: str, *parts: str) -> Path:
        """`<root>/datasets/<dataset>/runs/<run_id>/<parts...>`, created on demand."""
        path = Path(self.root, "datasets", dataset, "runs", run_id, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resume_dir(self, dataset: str, context: dg.AssetExecutionContext) -> Path:
        """Where a training asset keeps its resumable state: under the run's root run, so a re-execution of a
        failed run (a new run id, the same root run) finds what the killed attempt saved.
        `<root>/datasets/<dataset>/runs/<root run id>/resume/<asset name>/`."""
        root_run_id = context.run.root_run_id or context.run_id
        return self.run_dir(dataset, root_run_id, "resume", context.asset_key.to_user_string().replace("/", "__"))

    def dataset_dir(self, dataset: str) -> Path:
        path = Path(self.root, "datasets", dataset)
        path.mkdir(parents=True, exist_ok=True)
        return path


def _metric_key(name: str) -> str:
    """MLflow metric names cannot hold '@': `valid_ndcg@10` -> `valid_ndcg_at_10`."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


def already_exists(exc: Exception) -> bool:
    """Whether MLflow refused to create something because another process created it first."""
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(exc, "error_code", ""))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for a server or another database."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking store (sqlite by default) with one experiment per data set.

    When a run starts using it (`setup_for_execution`), it creates and migrates a new sqlite store
    under a file lock (two runs starting together on a new store would both migrate it), tags the
    Dagster run with its host, and closes the runs whose process died (assets/orphaned_runs.py).
    """

    tracking_uri: str
    # where new experiments keep their artifacts (a folder or a URI), one sub-folder per data set; None leaves
    # it to the store: a tracking server's default (`mlflow-artifacts:/`, uploaded and downloaded over HTTP)
    artifact_root: str | None = None
    experiment_prefix: str = "recalign"

    def _client(self):
        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the run logs
        mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.MlflowClient(self.tracking_uri)

    def ensure_store(self) -> None:
        """Create (and migrate) the tracking store once: concurrent first runs wait for each other."""
        database = sqlite_path(self.tracking_uri)
        if database is None:  # a tracking server or a server database migrates itself
            return
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(database) + ".lock"):
            self._client().search_experiments(max_results=1)  # opening the store runs its migrations

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.ensure_store()
        instance, run = context.instance, context.dagster_run
        if instance is None or run is None:
            return
        if run.tags.get(HOST_TAG) != this_host():
            instance.add_run_tags(run.run_id, {HOST_TAG: this_host()})
        for run_id in fail_orphaned_dagster_runs(instance):
            context.log.warning(f"Dagster run {run_id}: its process is gone; marked failed")
        for run_id in close_orphaned_mlflow_runs(self._client(), instance):
            context.log.warning(f"MLflow run {run_id}: its process or its Dagster run ended; closed as FAILED")

    def artifact_location(self, dataset: str) -> str | None:
        """The artifact location of a new experiment for `dataset`: `<artifact_root>/<dataset>` (a local folder
        as a `file://` URI), or None (the store's default) when there is no artifact root."""
        if self.artifact_root is None:
            return None
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", self.artifact_root):  # a URI: s3://..., mlflow-artifacts:/...
            return f"{self.artifact_root.rstrip('/')}/{dataset}"
        return Path(self.artifact_root, dataset).resolve().as_uri()

    def experiment_id(self, dataset: str) -> str:
        """The id of `dataset`'s experiment, created on first use. Two steps may create it at once (the ranker
        and the pretrained policy start together, as do two runs on a new store): the one that loses reads
        the winner's."""
        from mlflow.exceptions import MlflowException

        client = self._client()
        name = f"{self.experiment_prefix}/{dataset}"
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self.artifact_location(dataset))
        except MlflowException as exc:
            if not already_exists(exc):
                raise
            return client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def start_run(self, context: dg.AssetExecutionContext, dataset: str, data_digest: str,
                  params: dict[str, Any]) -> Iterator[Any]:
        """An MLflow run for one asset materialization, tagged for lineage back to Dagster."""
        import mlflow

        experiment_id = self.experiment_id(dataset)
        asset_key = context.asset_key.to_user_string()
        tags = {"dagster_run_id": context.run_id, "dagster_asset_key": asset_key,
                "dataset": dataset, "data_digest": data_digest,
                MLFLOW_HOST_TAG: this_host(), MLFLOW_PID_TAG: str(os.getpid())}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{asset_key}-{context.run_id[:8]}",
                              tags=tags) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            yield run

    @staticmethod
    def log_metrics(row: dict[str, Any], step: int) -> None:
        import mlflow

        mlflow.log_metrics({_metric_key(k): float(v) for k, v in row.items()
                            if isinstance(v, (int, float)) and k not in ("epoch", "step")}, step=step)

    @staticmethod
    def log_params(params: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    @staticmethod
    def set_tag(key: str, value: str) -> None:
        import mlflow

        mlflow.set_tag(key, value)

    @staticmethod
    def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def client(self):
        """An `MlflowClient` on this store (registry aliases, version tags)."""
        return self._client()

    def _ensure_registered_model(self, client, model_name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if not already_exists(exc):
                raise

    def register(self, run: Any, artifact_path: str, model_name: str, tags: dict[str, str]) -> str:
        """Register `<run artifacts>/<artifact_path>` as a new version of `model_name`; return it."""
        client = self._client()
        self._ensure_registered_model(client, model_name)
        version = client.create_model_version(
            model_name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id, tags=tags)
        return str(version.version)

    def register_logged_model(self, run: Any, model_info: Any, model_name: str, tags: dict[str, str]) -> str:
        """Register a model logged with `mlflow.<flavor>.log_model` (its `models:/m-...` URI); return the version."""
        client = self._client()
        self._ensure_registered_model(client, model_name)
        version = client.create_model_version(model_name, source=model_info.model_uri, run_id=run.info.run_id,
                                              tags=tags, model_id=model_info.model_id)
        return str(version.version)

