"""End-to-end: the whole asset chain on small synthetic logs, with a real Dagster instance, a real
MLflow sqlite store and real Great Expectations validations."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from assets import ALL_ASSETS, ALL_CHECKS
from assets.model_runs import POLICY_MODEL, POST_TRAINED_MODEL, RANKER_MODEL, registered_model_name
from assets.resources import MlflowTracking, RecalignHome
from assets.post_training import VARIANTS
from tests.synthetic import make_synthetic_logs

pytestmark = pytest.mark.integration

SMALL_MODELS = {
    "pretrained_policy": {"epochs": 3, "d_model": 16, "n_heads": 1, "n_layers": 1, "max_len": 10, "batch_size": 32},
    "ranker_reward_model": {"epochs": 2, "batch_size": 64},
    **{f"post_trained_{v}": {"steps": 4, "eval_every": 2, "batch_size": 16} for v in VARIANTS},
}


def model_name(result, kind: str) -> str:
    """The registered model of `kind` for the data set the chain of `result` ran on."""
    return registered_model_name(kind, result.output_for_node("interactions").dataset)


def run_config(logs_path: Path) -> dict:
    ops = {name: {"config": cfg} for name, cfg in SMALL_MODELS.items()}
    ops["raw_logs"] = {"config": {"path": str(logs_path)}}
    return {"ops": ops}


def dagster_dir(tmp_path: Path) -> str:
    path = tmp_path / "dagster"
    path.mkdir(exist_ok=True)
    return str(path)


def materialize(tmp_path: Path, logs_path: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    resources = {
        "home": RecalignHome(root=str(tmp_path / "home")),
        "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 artifact_root=str(tmp_path / "artifacts")),
    }
    return dg.materialize([*ALL_ASSETS, *ALL_CHECKS], instance=instance, resources=resources,
                          run_config=run_config(logs_path), raise_on_error=False, partition_key="file")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    logs = tmp / "logs.parquet"
    make_synthetic_logs(n_users=50, n_items=30, seed=1).to_parquet(logs)
    with dg.instance_for_test(temp_dir=dagster_dir(tmp)) as instance:
        result = materialize(tmp, logs, instance)
        yield tmp, result, instance


def test_whole_chain_materializes_with_checks_passing(chain):
    _, result, _ = chain
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {a.key.to_user_string() for a in ALL_ASSETS}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["reward_not_null_and_finite"] and checks["no_duplicate_events"] and checks["schema"]
    assert checks["item_tokens_bijection"]


def test_report_holds_every_policy_with_intervals(chain):
    _, result, _ = chain
    record = result.output_for_node("evaluation_report")
    report = json.loads(Path(record.json).read_text())
    assert Path(record.png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = Path(record.md).read_text()
    for name in ["pretrained", *VARIANTS]:
        assert name in markdown
    assert report["skipped"] == {"ips": "skipped: the logs carry no propensities"}
    ips = result.output_for_node("post_trained_ips")
    assert ips.is_skipped and ips.skipped == report["skipped"]["ips"] and ips.model_version is None
    assert not result.output_for_node("post_trained_sft").is_skipped
    (sft,) = result.asset_materializations_for_node("post_trained_sft")  # 4 steps, checks at 2 and 4: no stop early
    assert sft.metadata["steps"].value == 4 and sft.metadata["stopped_by"].value == "budget"
    text = json.dumps(report)
    assert "ndcg@10" in text and "hr@10" in text


def test_report_and_mlflow_carry_both_protocols(chain):
    tmp, result, _ = chain
    from mlflow import MlflowClient

    report = json.loads(Path(result.output_for_node("evaluation_report").json).read_text())
    assert set(report["protocols"]) == {"masked", "unmasked", "split"}
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                "tags.dagster_asset_key = 'evaluation_report'")
    for name, p in report["policies"].items():
        unmasked, masked = p["unmasked"]["metrics"], p["metrics"]
        assert unmasked["hr@10"]["mean"] <= masked["hr@10"]["mean"]  # seen items only push targets down
        assert run.data.metrics[f"test_ndcg_at_10_unmasked/{name}"] == pytest.approx(unmasked["ndcg@10"]["mean"])
        assert run.data.metrics[f"test_ndcg_at_10/{name}"] == pytest.approx(masked["ndcg@10"]["mean"])
        assert run.data.metrics[f"test_seen_in_top10_unmasked/{name}"] == pytest.approx(
            p["seen_in_top10_unmasked"]["mean"])


def test_models_are_registered_with_lineage_tags(chain):
    tmp, result, _ = chain
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    for kind in (POLICY_MODEL, RANKER_MODEL):
        (version,) = client.search_model_versions(f"name='{model_name(result, kind)}'")
        run = client.get_run(version.run_id)
        assert run.data.tags["dagster_run_id"] == result.run_id
        assert run.data.tags["data_digest"]
    post = client.search_model_versions(f"name='{model_name(result, POST_TRAINED_MODEL)}'")
    assert sorted(v.tags["variant"] for v in post) == sorted(v for v in VARIANTS if v != "ips")
    assert {v.tags["method"] for v in post} == {v.method for v in VARIANTS.values()} - {"ips"}
    assert all(v.source.startswith("models:/m-") for v in post)  # a logged (pyfunc) model, not a bare file
    run = client.get_run(post[0].run_id)
    assert any(k.startswith("valid_ndcg") for k in run.data.metrics)


def test_first_run_promotes_the_best_challenger_on_valid(chain):
    tmp, result, _ = chain
    from mlflow import MlflowClient

    record = result.output_for_node("champion")
    assert record.decision == "promoted" and record.previous_champion is None
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    name = model_name(result, POST_TRAINED_MODEL)
    assert record.registered_model == name and name.endswith("." + record.dataset)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == record.champion_version == record.challenger_version
    assert client.get_model_version_by_alias(name, "challenger").version == champion.version
    assert champion.tags["status"] == "champion" and champion.tags["variant"] == record.challenger_variant
    assert champion.tags["dataset"] == record.dataset
    post = client.search_model_versions(f"name='{name}'")
    best = max(float(v.tags["valid_ndcg_at_10"]) for v in post)
    assert float(champion.tags["valid_ndcg_at_10"]) == best
    assert sorted(v.tags["status"] for v in post).count("not_selected") == len(post) - 1
    (materialization,) = result.asset_materializations_for_node("champion")
    gates = materialization.metadata["gates"].value
    assert "blocking_data_checks | True" in gates and "7 blocking checks passed" in gates  # interactions + item_tokens
    assert materialization.metadata["decision"].value.startswith("**promoted**")


def test_the_champion_loads_as_pyfunc_and_recommends_original_item_ids(chain):
    tmp, result, _ = chain
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{model_name(result, POST_TRAINED_MODEL)}@champion")
    logs = pd.read_parquet(tmp / "logs.parquet")
    history = logs[logs["user_id"] == logs["user_id"].iloc[0]]["item_id"].astype(str).tolist()[:5]
    out = model.predict(pd.DataFrame({"recent_item_ids": [history + ["no-such-item"]], "k": [5]}))
    catalog = set(logs["item_id"].astype(str))
    assert len(out["item_ids"][0]) == 5 and set(out["item_ids"][0]) <= catalog - set(history)
    assert list(out["unknown_item_ids"][0]) == ["no-such-item"]


def test_a_challenger_that_fails_a_gate_leaves_the_champion_and_says_why(chain):
    tmp, first, instance = chain
    from mlflow import MlflowClient

    from assets.registry import alias_version, promote, rollback

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    best = first.output_for_node("champion").champion_version
    name = model_name(first, POST_TRAINED_MODEL)
    other = next(str(v.version) for v in client.search_model_versions(f"name='{name}'")
                 if str(v.version) != best)
    promote(client, name, other)  # an older champion the best challenger must now beat
    resources = {"home": RecalignHome(root=str(tmp / "home")),
                 "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                                          artifact_root=str(tmp / "artifacts"))}
    impossible = {"alignment_tolerance": -1.0}  # reward alignment would have to rise by a full point
    result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], selection=["champion"], instance=instance, resources=resources,
                            run_config={"ops": {"champion": {"config": impossible}}}, partition_key="file")
    record = result.output_for_node("champion")
    assert record.decision == "kept" and record.challenger_version == best
    assert alias_version(client, name, "champion") == other
    loser = client.get_model_version(name, best).tags
    assert loser["status"] == "rejected" and loser["compared_with_champion"] == other
    assert "reward_alignment: reward_weighted_ndcg@10 challenger - champion" in loser["promotion_reasons"]
    (materialization,) = result.asset_materializations_for_node("champion")
    assert materialization.metadata["decision"].value.startswith(f"**kept** champion v{other}")
    assert "7 blocking checks passed" in materialization.metadata["gates"].value  # upstream checks, not re-run
    assert rollback(client, name) == (other, best)


def test_nan_rewards_block_everything_downstream(tmp_path):
    logs = make_synthetic_logs(n_users=20, n_items=15, seed=2)
    logs.loc[[3, 7], "rating"] = np.nan
    path = tmp_path / "bad.parquet"
    logs.to_parquet(path)
    with dg.instance_for_test(temp_dir=dagster_dir(tmp_path)) as instance:
        result = materialize(tmp_path, path, instance)
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_logs", "interactions"}  # item_tokens waits on the blocking checks too
    failed = {e.check_name: e.description for e in result.get_asset_check_evaluations() if not e.passed}
    assert "reward_not_null_and_finite" in failed
    assert "reward" in failed["reward_not_null_and_finite"]
    assert not (tmp_path / "mlflow.db").exists() or not list((tmp_path / "artifacts").glob("**/*.pt"))


def test_missing_column_fails_at_raw_logs_naming_it(tmp_path):
    logs = make_synthetic_logs(n_users=10, n_items=10, seed=3).drop(columns=["timestamp"])
    path = tmp_path / "no_ts.parquet"
    logs.to_parquet(path)
    with dg.instance_for_test(temp_dir=dagster_dir(tmp_path)) as instance:
        result = materialize(tmp_path, path, instance)
    assert not result.success
    assert not result.get_asset_materialization_events()
    failure = next(e for e in result.all_events if e.is_step_failure)
    cause = failure.step_failure_data.error.cause
    assert cause.cls_name == "DataContractError"
    assert "missing required column 'timestamp'" in cause.message


def test_simulated_logs_are_evaluated_against_the_oracle(tmp_path):
    config = run_config(tmp_path / "unused.parquet")
    config["ops"]["raw_logs"] = {"config": {"simulator": {
        "n_users": 60, "n_items": 40, "events_per_user": [6, 14], "seed": 3}}}
    resources = {"home": RecalignHome(root=str(tmp_path / "home")),
                 "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                          artifact_root=str(tmp_path / "artifacts"))}
    with dg.instance_for_test(temp_dir=dagster_dir(tmp_path)) as instance:
        result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS], instance=instance, resources=resources,
                                run_config=config, partition_key="simulator")
    report = json.loads(Path(result.output_for_node("evaluation_report").json).read_text())
    assert report["extra_metrics"] == ["hacking_gap_top10", "true_top1", "true_top10"]
    assert "ips" not in report["skipped"]  # the simulator logs propensities
    best = report["oracle_best_top10_true"]
    for name, policy in report["policies"].items():
        true_top10 = policy["metrics"]["true_top10"]["mean"]
        assert -1.0 <= true_top10 <= best, name
        gap = policy["metrics"]["hacking_gap_top10"]["mean"]
        assert gap == pytest.approx(policy["ranker_top10_score"]["mean"] - true_top10, abs=1e-9)
