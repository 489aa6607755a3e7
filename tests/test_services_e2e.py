"""End-to-end on the services profile: a small `full_chain` run as a real `dagster job execute` process
against the Postgres-backed Dagster instance and the MLflow tracking server over HTTP, registry promotion
included.

    make services && RECALIGN_PROFILE=services .venv/bin/python -m pytest -q -m services tests/test_services_e2e.py

Skipped unless RECALIGN_PROFILE=services and Postgres and the MLflow server answer (`make services`
starts them). The run's environment is the one the Makefile gives `make run` under that profile
(`make -s profile-env`), with a throw-away RECALIGN_HOME. The logs are the small run's simulated logs
(scripts.ui_check.small_run_config) saved as a file with a name of its own, so the run has a data set,
an experiment and registered models of its own on the shared server: its champion step is a first
promotion, whatever earlier runs left in the registry. The registered models and the experiment are
deleted afterwards; the Dagster run stays in Postgres, tagged `recalign/services_test`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from pipelines.run_config import full_chain_command, write_run_config
from scripts.ui_check import small_run_config

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
TAG = "recalign/services_test"


def services_unavailable(env: dict[str, str]) -> str | None:
    """Why the services profile's servers cannot be used, or None when both answer."""
    try:
        import psycopg2
    except ImportError:
        return "the services extra is not installed (`make services` installs it)"
    try:
        psycopg2.connect(host=env["RECALIGN_PG_HOST"], port=int(env["RECALIGN_PG_PORT"]),
                         user=env["RECALIGN_PG_USER"], password=env["RECALIGN_PG_PASSWORD"],
                         dbname=env["RECALIGN_PG_DAGSTER_DB"], connect_timeout=5).close()
    except psycopg2.OperationalError as exc:
        return f"Postgres at {env['RECALIGN_PG_HOST']}:{env['RECALIGN_PG_PORT']} does not answer: {exc}".strip()
    url = f"{env['MLFLOW_TRACKING_URI']}/health"
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
            if response.status == 200:
                return None
    except OSError as exc:
        return f"the MLflow server does not answer {url}: {exc}"
    return f"the MLflow server answers {url} with HTTP {response.status}"


def small_file_config(tmp: Path) -> tuple[dict, Path]:
    """small_run_config with its simulated logs read from a parquet file of a name of its own."""
    from recmodels.data.simulator import SimulatorConfig, simulate_logs

    config = small_run_config()
    logs = tmp / f"services-e2e-{uuid.uuid4().hex[:8]}.parquet"
    simulate_logs(SimulatorConfig(**config["ops"]["raw_logs"]["config"]["simulator"])).logs.to_parquet(logs)
    config["ops"]["raw_logs"] = {"config": {"path": str(logs)}}
    return config, logs


@pytest.fixture(scope="module")
def services_run(tmp_path_factory):
    """The services profile's environment and one small full_chain run in it: (env, run id, logs file)."""
    if os.environ.get("RECALIGN_PROFILE") != "services":
        pytest.skip("RECALIGN_PROFILE is not 'services': run `make services`, then "
                    "RECALIGN_PROFILE=services .venv/bin/python -m pytest -m services tests/test_services_e2e.py")
    from pipelines.resources import profile_environment

    tmp = tmp_path_factory.mktemp("services")
    profile = profile_environment("services", tmp / "home")
    if reason := services_unavailable(profile):
        pytest.skip(f"RECALIGN_PROFILE=services, but {reason}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_ARTIFACT"))}
    env |= profile | {"OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    config, logs = small_file_config(tmp)
    config_path = tmp / "run_config.yaml"
    write_run_config(config_path, config)
    tag = uuid.uuid4().hex
    log = tmp / "run.log"
    with log.open("w") as out:
        code = subprocess.run(full_chain_command(DAGSTER, config_path, "file", {TAG: tag}),
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200).returncode
    assert code == 0, log.read_text()[-4000:]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in profile.items():
            mp.setenv(key, value)
        instance = postgres_instance(profile)
        (record,) = instance.get_run_records(_runs_filter(tag))
    try:
        yield profile, record.dagster_run.run_id, logs
    finally:
        delete_from_server(profile["MLFLOW_TRACKING_URI"], dataset_of(logs))


def delete_from_server(tracking_uri: str, dataset: str) -> None:
    """Remove the run's registered models and (softly) its experiment from the shared server."""
    from mlflow import MlflowClient

    from assets.model_runs import POLICY_MODEL, POST_TRAINED_MODEL, RANKER_MODEL, registered_model_name

    client = MlflowClient(tracking_uri)
    for kind in (POLICY_MODEL, RANKER_MODEL, POST_TRAINED_MODEL):
        if client.search_registered_models(f"name = '{registered_model_name(kind, dataset)}'"):
            client.delete_registered_model(registered_model_name(kind, dataset))
    if experiment := client.get_experiment_by_name(f"recalign/{dataset}"):
        client.delete_experiment(experiment.experiment_id)


def _runs_filter(tag: str):
    import dagster as dg

    return dg.RunsFilter(tags={TAG: tag})


def postgres_instance(profile: dict[str, str]):
    """The Dagster instance of the profile's DAGSTER_HOME (its dagster.yaml reads the RECALIGN_PG_* variables)."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(profile["DAGSTER_HOME"]))


def dataset_of(logs: Path) -> str:
    """The data set name of a user file: its stem and the first 12 hex digits of its content digest."""
    from recmodels.data.sources import load_raw_logs

    return load_raw_logs("file", path=str(logs), cache_dir=logs.parent).name


def test_the_run_succeeds_and_is_recorded_in_postgres(services_run, monkeypatch):
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from assets import ALL_ASSETS

    profile, run_id, _ = services_run
    for key, value in profile.items():
        monkeypatch.setenv(key, value)
    instance = postgres_instance(profile)
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    record = instance.get_run_record_by_id(run_id)
    assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert record.dagster_run.job_name == "full_chain" and record.end_time > record.start_time
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert {e.dagster_event.asset_key.to_user_string() for e in events} == {a.key.to_user_string() for a in ALL_ASSETS}


def test_models_are_registered_on_the_server_and_the_best_challenger_promoted(services_run, tmp_path):
    from mlflow import MlflowClient

    from assets.model_runs import POLICY_MODEL, POST_TRAINED_MODEL, RANKER_MODEL, registered_model_name
    from assets.post_training import VARIANTS
    from assets.registry import champion_history, download_policy_artifacts

    profile, run_id, logs = services_run
    client = MlflowClient(profile["MLFLOW_TRACKING_URI"])
    dataset = dataset_of(logs)
    experiment = client.get_experiment_by_name(f"recalign/{dataset}")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # stored by the server, over HTTP
    for kind in (POLICY_MODEL, RANKER_MODEL):
        (version,) = client.search_model_versions(f"name='{registered_model_name(kind, dataset)}'")
        assert client.get_run(version.run_id).data.tags["dagster_run_id"] == run_id
    name = registered_model_name(POST_TRAINED_MODEL, dataset)
    post = {str(v.version): v for v in client.search_model_versions(f"name='{name}'")}
    assert sorted(v.tags["variant"] for v in post.values()) == sorted(VARIANTS)  # the simulator logs propensities
    assert {v.tags["dagster_run_id"] for v in post.values()} == {run_id}

    champion = client.get_model_version_by_alias(name, "champion")  # a first promotion: the best on valid
    assert client.get_model_version_by_alias(name, "challenger").version == champion.version
    assert champion.tags["status"] == "champion" and champion_history(client, name) == [str(champion.version)]
    best = max(float(v.tags["valid_ndcg_at_10"]) for v in post.values())
    assert float(champion.tags["valid_ndcg_at_10"]) == best
    assert client.get_model_version_download_uri(name, champion.version).startswith("mlflow-artifacts:")

    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(profile["MLFLOW_TRACKING_URI"])
    try:
        files = download_policy_artifacts(name, str(champion.version), tmp_path / "download")
        assert files["checkpoint"].stat().st_size > 0 and files["catalog"].exists()
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    import pandas as pd

    events = pd.read_parquet(logs)
    history = events[events["user_id"] == events["user_id"].iloc[0]]["item_id"].astype(str).tolist()[:5]
    out = model.predict(pd.DataFrame({"recent_item_ids": [history + ["no-such-item"]], "k": [5]}))
    assert len(out["item_ids"][0]) == 5 and set(out["item_ids"][0]) <= set(events["item_id"].astype(str)) - set(history)
    assert list(out["unknown_item_ids"][0]) == ["no-such-item"]
