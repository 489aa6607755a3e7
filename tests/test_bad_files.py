"""Malformed raw-log files through `source: file`, as an operator would bring them.

Each file breaks one thing. It is stopped at `raw_logs` (the raw-log contract), at `interactions`
(the short-history rule) or by a blocking check on `interactions`, with a message that names the
column and, where there is one, the row; none of the assets downstream of the failing one is
materialized, and the model registry, which already holds a champion, is exactly as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.data import interactions, raw_logs
from assets.item_tokens import item_tokens, item_tokens_bijection
from assets.models import pretrained_policy, ranker_reward_model
from assets.resources import MlflowTracking, RecalignHome
from assets.reward_checks import interactions_reward_checks
from tests.synthetic import make_synthetic_logs

pytestmark = pytest.mark.integration

CHAIN = [raw_logs, interactions, item_tokens, pretrained_policy, ranker_reward_model]
CHECKS = [interactions_reward_checks, item_tokens_bijection]
CHAIN_KEYS = [a.key.to_user_string() for a in CHAIN]
MODELS_AND_TOKENS = {"item_tokens", "pretrained_policy", "ranker_reward_model"}  # downstream of interactions
TINY = {  # what the models would train with, were a bad file ever let through
    "item_tokens": {"n_levels": 2, "codebook_size": 4, "svd_dim": 4},
    "pretrained_policy": {"epochs": 1, "d_model": 8, "n_heads": 1, "n_layers": 1, "max_len": 5, "batch_size": 64},
    "ranker_reward_model": {"epochs": 1, "batch_size": 64},
}
ROW = 7  # the row each single-row fault damages
CHAMPION_MODEL = "recalign-post-trained-policy"


def good_logs() -> pd.DataFrame:
    """30 users with 5..20 events each, in user then time order (so a row of the file is the same row of
    the interactions table)."""
    return make_synthetic_logs(n_users=30, n_items=20, seed=0)


def as_csv(logs: pd.DataFrame, **kwargs) -> bytes:
    return logs.to_csv(index=False, **kwargs).encode()


def with_value(column: str, value, row: int = ROW) -> Callable[[pd.DataFrame], bytes]:
    """A CSV of the logs with `value` written into `column` at `row`."""
    def write(logs: pd.DataFrame) -> bytes:
        logs = logs.astype({column: object})
        logs.loc[row, column] = value
        return as_csv(logs)
    return write


def cut_mid_row(logs: pd.DataFrame) -> bytes:
    """The file as a copy interrupted inside row 100: its user_id and item_id, nothing after."""
    lines = as_csv(logs).decode().splitlines(keepends=True)
    return "".join(lines[:101]).encode() + lines[101].split(",")[0].encode() + b"," + \
        lines[101].split(",")[1].encode() + b","


def not_utf8(logs: pd.DataFrame) -> bytes:
    """Latin-1 bytes in the item id of row ROW ("m" + e-acute)."""
    return with_value("item_id", "m\u00e9")(logs).decode().encode("latin-1")


def duplicated_row(logs: pd.DataFrame) -> bytes:
    return as_csv(pd.concat([logs.iloc[:ROW + 1], logs.iloc[[ROW]], logs.iloc[ROW + 1:]]))


def event(logs: pd.DataFrame, row: int = ROW) -> str:
    """How a check names the event of a row: "user_id 'u000', item_id 'm004', timestamp 1600..."."""
    return f"user_id {logs.at[row, 'user_id']!r}, item_id {logs.at[row, 'item_id']!r}, timestamp {logs.at[row, 'timestamp']}"


@dataclass
class Fault:
    """One malformed file: how to write it, where it must stop, and what the message must say."""

    write: Callable[[pd.DataFrame], bytes]
    stops_at: str  # an asset that fails, or the blocking check on `interactions` that fails
    says: Callable[[pd.DataFrame], list[str]]  # substrings of the message


FAULTS = {
    "missing column": Fault(lambda d: as_csv(d.drop(columns=["item_id"])), "raw_logs",
                            lambda d: ["missing required column 'item_id'", "columns present: ['user_id', 'timestamp'"]),
    "null user id": Fault(with_value("user_id", None), "raw_logs",
                          lambda d: [f"column 'user_id' has 1 missing values (first at row {ROW})"]),
    "null item id": Fault(with_value("item_id", None), "raw_logs",
                          lambda d: [f"column 'item_id' has 1 missing values (first at row {ROW})"]),
    "NaN reward signal": Fault(with_value("rating", np.nan), "reward_not_null_and_finite",
                               lambda d: ["column 'reward': 1 values are NaN or infinite (1 NaN, 0 inf)",
                                          f"first at row {ROW} ({event(d)})", "labeled from column 'rating'"]),
    "inf reward signal": Fault(with_value("rating", np.inf), "reward_not_null_and_finite",
                               lambda d: ["column 'reward': 1 values are NaN or infinite (0 NaN, 1 inf)",
                                          f"first at row {ROW} ({event(d)})", "labeled from column 'rating'"]),
    "out-of-range rating": Fault(with_value("rating", 9), "reward_in_range",
                                 lambda d: ["column 'reward': 1 values outside [-1.0, 1.0]",
                                            f"first at row {ROW} ({event(d)})", "labeled from column 'rating'"]),
    "empty file (header only)": Fault(lambda d: as_csv(d.iloc[:0]), "raw_logs",
                                      lambda d: ["raw logs are empty (0 rows; columns present: ['user_id', 'item_id'"]),
    "zero-byte file": Fault(lambda d: b"", "raw_logs",
                            lambda d: ["logs.csv: the file is empty (0 bytes)", "header row naming its columns"]),
    "truncated file": Fault(cut_mid_row, "raw_logs",
                            lambda d: ["the file looks cut short", "last row (row 100)",
                                       "no value in column(s) ['timestamp', 'rating']"]),
    "wrong delimiter": Fault(lambda d: as_csv(d, sep=";"), "raw_logs",
                             lambda d: ["one column 'user_id;item_id;timestamp;rating'", "separated by ';'",
                                        "columns ['user_id', 'item_id', 'timestamp', 'rating']"]),
    "text in a numeric column": Fault(with_value("rating", "five"), "raw_logs",
                                      lambda d: ["column 'rating' must be numeric", f"row {ROW} holds 'five'"]),
    "duplicate events": Fault(duplicated_row, "no_duplicate_events",
                              lambda d: ["columns (user_idx, item_idx, timestamp): 1 duplicated events",
                                         f"first repeated at row {ROW + 1} ({event(d)})"]),
    "constant reward": Fault(lambda d: as_csv(d.assign(rating=4)), "reward_std_above_floor",
                             lambda d: ["column 'reward': standard deviation 0 is below the floor",
                                        "labeled from column 'rating'"]),
    "propensity 0": Fault(lambda d: with_value("propensity", 0.0)(d.assign(propensity=0.5)), "raw_logs",
                          lambda d: ["column 'propensity' must lie in (0, 1]", f"0.0 at row {ROW}"]),
    "propensity 1.5": Fault(lambda d: with_value("propensity", 1.5)(d.assign(propensity=0.5)), "raw_logs",
                            lambda d: ["column 'propensity' must lie in (0, 1]", f"1.5 at row {ROW}"]),
    "non-UTF-8 bytes": Fault(not_utf8, "raw_logs",
                             lambda d: [f"not UTF-8 text: byte 0xe9 at row {ROW}, column 'item_id'",
                                        f"(line {ROW + 2} of the file)"]),
    "too few events per user": Fault(lambda d: as_csv(d.groupby("user_id").head(2)), "interactions",
                                     lambda d: ["column 'user_id': no user has at least 3 events",
                                                "train, valid and test", "30 users, 60 events"]),
    "negative timestamps": Fault(lambda d: as_csv(d.assign(timestamp=-d["timestamp"])), "raw_logs",
                                 lambda d: ["column 'timestamp' must hold non-negative seconds",
                                            f"{len(d)} values are negative (first at row 0: {-d.at[0, 'timestamp']})"]),
}


def registry_state(tracking_uri: str) -> dict:
    """Everything in the MLflow store a run could add or move: registered models with their versions,
    tags and aliases, and the runs of every experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    models = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        models[model.name] = {
            "aliases": dict(model.aliases), "tags": dict(model.tags),
            "versions": sorted((v.version, v.run_id, v.source, v.status, tuple(sorted(v.tags.items())),
                                tuple(sorted(v.aliases))) for v in versions)}
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments]) if experiments else []
    return {"models": models, "experiments": sorted(e.name for e in experiments),
            "runs": sorted(r.info.run_id for r in runs)}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A sqlite MLflow store whose registry already holds a champion: version 1 of CHAMPION_MODEL."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("recalign/earlier-logs", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"dataset": "earlier-logs"})
    weights = root / "champion.pt"
    weights.write_bytes(b"an earlier champion")
    client.log_artifact(run.info.run_id, str(weights), artifact_path="checkpoint")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(CHAMPION_MODEL)
    version = client.create_model_version(CHAMPION_MODEL, source=f"{run.info.artifact_uri}/checkpoint",
                                          run_id=run.info.run_id, tags={"status": "champion"})
    client.set_registered_model_alias(CHAMPION_MODEL, "champion", version.version)
    state = registry_state(uri)
    assert {k: str(v) for k, v in state["models"][CHAMPION_MODEL]["aliases"].items()} == {"champion": "1"}
    return {"uri": uri, "artifacts": str(root / "artifacts")}


def run_chain(logs_file: Path, home: Path, store: dict, instance: dg.DagsterInstance,
              assets=CHAIN, checks=CHECKS) -> dg.ExecuteInProcessResult:
    ops = {name: {"config": cfg} for name, cfg in TINY.items() if name in {a.key.to_user_string() for a in assets}}
    ops["raw_logs"] = {"config": {"path": str(logs_file)}}
    resources = {"home": RecalignHome(root=str(home)),
                 "mlflow": MlflowTracking(tracking_uri=store["uri"], artifact_root=store["artifacts"])}
    return dg.materialize([*assets, *checks], instance=instance, resources=resources, run_config={"ops": ops},
                          raise_on_error=False, partition_key="file")


def materialized(instance: dg.DagsterInstance) -> set[str]:
    """The chain's assets the instance holds a materialization of."""
    return {key for key in CHAIN_KEYS if instance.get_latest_materialization_event(dg.AssetKey(key)) is not None}


def failure_message(result: dg.ExecuteInProcessResult, stops_at: str) -> str:
    """The error of the failed step `stops_at`, or the description and metadata of the failed check `stops_at`."""
    if stops_at in CHAIN_KEYS:
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_key == stops_at
        error = failure.step_failure_data.error
        cause = error.cause or error
        assert cause.cls_name == "DataContractError", cause.cls_name
        return cause.message
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert stops_at in failed, f"{stops_at} passed; failed: {sorted(failed)}"
    evaluation = failed[stops_at]
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    return evaluation.description + " " + " ".join(str(v.value) for v in evaluation.metadata.values())


@pytest.mark.parametrize("fault", list(FAULTS), ids=[name.replace(" ", "-") for name in FAULTS])
def test_a_malformed_file_is_stopped_naming_what_and_where_and_nothing_after_it_runs(fault, tmp_path, store):
    spec = FAULTS[fault]
    logs = good_logs()
    path = tmp_path / "logs.csv"
    path.write_bytes(spec.write(logs))
    before = registry_state(store["uri"])
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_chain(path, tmp_path / "home", store, instance)
        assert not result.success
        message = failure_message(result, spec.stops_at)
        for expected in spec.says(logs):
            assert expected in message, f"{expected!r} not in {message!r}"
        if spec.stops_at == "raw_logs":
            assert f"raw logs file {path}" in message  # the contract names the file
        upstream = {"raw_logs": set(), "interactions": {"raw_logs"}}.get(spec.stops_at, {"raw_logs", "interactions"})
        assert materialized(instance) == upstream
        stepped = {e.step_key for e in result.all_events if e.step_key}
        assert stepped.isdisjoint(MODELS_AND_TOKENS)  # skipped: not one of their steps started
    assert not list((tmp_path / "home").glob("**/*.pt")) and not list((tmp_path / "home").glob("**/*.npz"))
    assert registry_state(store["uri"]) == before


def test_a_good_file_passes_the_contract_and_every_blocking_check_reporting_dropped_users(tmp_path, store):
    logs = good_logs()
    short = logs[logs["user_id"].isin(["u003", "u011"])].groupby("user_id").head(2)
    logs = pd.concat([logs[~logs["user_id"].isin(["u003", "u011"])], short]).sort_index(kind="stable")
    path = tmp_path / "logs.csv"
    path.write_bytes(as_csv(logs))
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_chain(path, tmp_path / "home", store, instance, assets=CHAIN[:2],
                           checks=[interactions_reward_checks])
        assert result.success
        assert materialized(instance) == {"raw_logs", "interactions"}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert all(checks.values()) and "users_have_train_valid_test" in checks and "timestamps_plausible" in checks
    (materialization,) = result.asset_materializations_for_node("interactions")
    assert materialization.metadata["dropped_users"].value == 2 and materialization.metadata["dropped_events"].value == 4
    assert materialization.metadata["users"].value == 28
    assert result.output_for_node("raw_logs").dataset.startswith("logs-")
