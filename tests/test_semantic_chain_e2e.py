"""End-to-end with semantic IDs: raw_logs -> interactions -> item_tokens -> pretrained_policy(tokenization=semantic)
-> ranker -> post_trained_sft -> evaluation_report, with a real Dagster instance, a real MLflow sqlite store and
the real Great Expectations bijection check."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets.data import interactions, raw_logs
from assets.evaluation import build_evaluation_report_asset
from assets.item_tokens import item_tokens, item_tokens_bijection
from assets.model_runs import POLICY_MODEL, POST_TRAINED_MODEL, registered_model_name
from assets.models import pretrained_policy, ranker_reward_model
from assets.post_training import post_trained_asset
from tests.local_stores import local_resources
from tests.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.integration

SFT = post_trained_asset("sft", "sft", {})
CHAIN = [raw_logs, interactions, item_tokens, item_tokens_bijection, pretrained_policy, ranker_reward_model, SFT,
         build_evaluation_report_asset([SFT])]


def run_config(logs: Path, catalog: Path, tokenization: str = "semantic") -> dict:
    return {"ops": {
        "raw_logs": {"config": {"path": str(logs), "catalog_path": str(catalog)}},
        "item_tokens": {"config": {"n_levels": 2, "codebook_size": 6, "svd_dim": 8}},
        "pretrained_policy": {"config": {"tokenization": tokenization, "epochs": 2, "d_model": 16, "n_heads": 1,
                                         "n_layers": 1, "max_len": 8, "batch_size": 32}},
        "ranker_reward_model": {"config": {"epochs": 1, "batch_size": 64}},
        "post_trained_sft": {"config": {"steps": 2, "eval_every": 2, "batch_size": 16}}}}


def dagster_dir(tmp: Path) -> str:
    path = tmp / "dagster"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("semantic_chain")
    logs, catalog = write_synthetic_dataset(tmp / "data", n_users=40, n_items=40, seed=5)
    with dg.instance_for_test(temp_dir=dagster_dir(tmp)) as instance:
        result = dg.materialize(CHAIN, instance=instance, resources=local_resources(tmp),
                                run_config=run_config(logs, catalog), partition_key="file")
        yield tmp, result


def test_the_semantic_chain_materializes_with_the_bijection_check_passing(chain):
    _, result = chain
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"raw_logs", "interactions", "item_tokens", "pretrained_policy", "ranker_reward_model",
                            "post_trained_sft", "evaluation_report"}
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {"item_tokens_bijection": True}


def test_downstream_follows_the_semantic_checkpoint(chain):
    tmp, result = chain
    from mlflow import MlflowClient

    from recmodels.storage.model_io import load_policy
    from recmodels.models.semantic_policy import SemanticPolicy

    tokens = result.output_for_node("item_tokens")
    pretrained = result.output_for_node("pretrained_policy")
    assert pretrained.tokenization == "semantic" and pretrained.semantic_ids == tokens.path
    assert isinstance(load_policy(pretrained.checkpoint), SemanticPolicy)
    sft = result.output_for_node("post_trained_sft")
    assert sft.tokenization == "semantic" and sft.semantic_ids == tokens.path and not sft.is_skipped
    assert isinstance(load_policy(sft.checkpoint), SemanticPolicy)
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    dataset = result.output_for_node("interactions").dataset
    (version,) = client.search_model_versions(f"name='{registered_model_name(POLICY_MODEL, dataset)}'")
    assert version.tags["tokenization"] == "semantic"
    run = client.get_run(version.run_id)
    assert run.data.params["tokenization"] == "semantic" and "level_sizes" in run.data.params
    assert any(k.startswith("valid_ndcg") for k in run.data.metrics)
    (post,) = client.search_model_versions(f"name='{registered_model_name(POST_TRAINED_MODEL, dataset)}'")
    assert post.tags["tokenization"] == "semantic"


def test_the_report_has_decoding_accuracy_and_hallucination_per_policy(chain):
    _, result = chain
    record = result.output_for_node("evaluation_report")
    assert record.tokenization == "semantic"
    report = json.loads(Path(record.json).read_text())
    for name in ("pretrained", "sft"):
        decoding = report["policies"][name]["decoding"]
        assert decoding["tokenization"] == "semantic" and decoding["beam_size"] == 20
        assert 0.0 <= report["policies"][name]["hallucination_rate"] == record.hallucination_rate[name] <= 1.0
        assert decoding["constrained"]["hr@10"] == pytest.approx(report["policies"][name]["metrics"]["hr@10"]["mean"])
    assert [r["policy"] for r in report["hallucination_frontier"]] == ["pretrained"]
    assert "## Decoding: constrained vs unconstrained" in Path(record.md).read_text()
    assert Path(record.frontier_png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_tokenization_fails_naming_the_choices(tmp_path):
    logs, catalog = write_synthetic_dataset(tmp_path / "data", n_users=12, n_items=10, seed=6)
    with dg.instance_for_test(temp_dir=dagster_dir(tmp_path)) as instance:
        result = dg.materialize(CHAIN[:5], instance=instance, resources=local_resources(tmp_path),
                                run_config={"ops": {k: v for k, v in run_config(logs, catalog, "bpe")["ops"].items()
                                                    if k in ("raw_logs", "item_tokens", "pretrained_policy")}},
                                raise_on_error=False, partition_key="file")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "pretrained_policy"
    assert "'tokenization' must be one of ['atomic', 'semantic'], got 'bpe'" in failure.step_failure_data.error.message
