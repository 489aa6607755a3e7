"""Promotion gates on hand-made per-user metrics, valid-split scoring through a model's own catalog,
and the registry moves (promote, reject, rollback) on a real MLflow sqlite store."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from recmodels.evaluation.promotion import GateConfig, best_challenger, decide_promotion, split_metrics

CHECKS_OK = {"interactions:schema": True, "interactions:reward_in_range": True}


def frame(ndcg, aligned=None) -> pd.DataFrame:
    ndcg = np.asarray(ndcg, dtype=float)
    aligned = ndcg * 0.5 if aligned is None else np.asarray(aligned, dtype=float)
    return pd.DataFrame({"user_idx": np.arange(len(ndcg)), "ndcg@10": ndcg, "reward_weighted_ndcg@10": aligned})


CHAMPION = frame(np.linspace(0.1, 0.5, 20))


def gate(decision, name):
    return next(g for g in decision.gates if g.name == name)


def test_first_promotion_has_no_champion_to_beat():
    decision = decide_promotion(frame(np.full(20, 0.01)), None, blocking_checks=CHECKS_OK)
    assert decision.promote and decision.reasons == []
    assert "no champion yet" in gate(decision, "beats_champion").detail


def test_a_uniformly_better_challenger_is_promoted():
    # every user gains exactly 0.1: the paired bootstrap interval collapses to one point (half width 0)
    decision = decide_promotion(frame(CHAMPION["ndcg@10"] + 0.1), CHAMPION, blocking_checks=CHECKS_OK)
    assert decision.promote
    assert decision.evidence["diff"] == pytest.approx(0.1)
    assert decision.evidence["half_width"] == pytest.approx(0.0, abs=1e-12)


def test_a_challenger_inside_the_interval_is_not_promoted():
    noise = np.tile([0.3, -0.2], 10)  # mean gain +0.05, per-user spread 0.25
    decision = decide_promotion(frame(CHAMPION["ndcg@10"] + noise), CHAMPION, blocking_checks=CHECKS_OK)
    assert decision.evidence["diff"] == pytest.approx(0.05)
    assert 0.05 < decision.evidence["half_width"] < 0.25
    assert not decision.promote
    assert [r.split(":")[0] for r in decision.reasons] == ["beats_champion"]


def test_worse_reward_alignment_blocks_unless_within_tolerance():
    better = CHAMPION["ndcg@10"] + 0.1
    worse_aligned = CHAMPION["reward_weighted_ndcg@10"] - 0.01
    decision = decide_promotion(frame(better, worse_aligned), CHAMPION, blocking_checks=CHECKS_OK)
    assert not decision.promote
    assert [r.split(":")[0] for r in decision.reasons] == ["reward_alignment"]
    assert "-0.0100" in decision.reasons[0]
    tolerant = decide_promotion(frame(better, worse_aligned), CHAMPION, GateConfig(alignment_tolerance=0.02),
                                blocking_checks=CHECKS_OK)
    assert tolerant.promote


def test_a_failed_blocking_check_blocks_even_the_first_promotion():
    checks = {**CHECKS_OK, "interactions:reward_in_range": False}
    decision = decide_promotion(frame(CHAMPION["ndcg@10"] + 0.1), None, blocking_checks=checks)
    assert not decision.promote
    assert decision.reasons == ["blocking_data_checks: failed: interactions:reward_in_range"]


def test_hallucination_rate_over_the_ceiling_blocks_and_an_absent_rate_is_zero():
    better = frame(CHAMPION["ndcg@10"] + 0.1)
    assert decide_promotion(better, CHAMPION, hallucination_rate=None, blocking_checks=CHECKS_OK).promote
    decision = decide_promotion(better, CHAMPION, GateConfig(hallucination_ceiling=0.05), hallucination_rate=0.2,
                                blocking_checks=CHECKS_OK)
    assert [r.split(":")[0] for r in decision.reasons] == ["hallucination_rate"]


def test_the_main_metric_is_configurable_and_checked():
    challenger = frame(CHAMPION["ndcg@10"] - 0.1, aligned=CHAMPION["reward_weighted_ndcg@10"] + 0.1)
    cfg = GateConfig(metric="reward_weighted_ndcg@10")
    assert decide_promotion(challenger, CHAMPION, cfg, blocking_checks=CHECKS_OK).promote
    with pytest.raises(ValueError, match="no column 'hr@7'.*ndcg@10"):
        decide_promotion(challenger, CHAMPION, GateConfig(metric="hr@7"))


def test_best_challenger_is_the_highest_mean_first_on_ties():
    frames = {"a": frame([0.2, 0.4]), "b": frame([0.5, 0.1]), "c": frame([0.3, 0.3]), "d": frame([0.1, 0.1])}
    assert best_challenger(frames, "ndcg@10") == "a"
    assert best_challenger({"x": frame([0.1]), "y": frame([0.9])}, "ndcg@10") == "y"


class FixedScores(torch.nn.Module):
    """A policy that scores every token the same way whatever the history."""

    def __init__(self, scores: list[float], max_len: int = 4):
        super().__init__()
        self.scores = torch.tensor([float("-inf"), *scores])
        self.cfg = SimpleNamespace(vocab_size=len(scores) + 1, max_len=max_len)

    def next_item_logits(self, history: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(history.shape[0], -1).clone()


def table() -> pd.DataFrame:
    # user 0: a b | valid c | test d ; user 1: b | valid e | test a  (items a..e are tokens 1..5)
    rows = [(0, "a", "train"), (0, "b", "train"), (0, "c", "valid"), (0, "d", "test"),
            (1, "b", "train"), (1, "e", "valid"), (1, "a", "test")]
    tokens = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    return pd.DataFrame({"user_idx": [r[0] for r in rows], "item_idx": [tokens[r[1]] for r in rows],
                         "item_id": [r[1] for r in rows], "reward": [1.0] * 7, "split": [r[2] for r in rows]})


def test_split_metrics_rank_the_valid_item_with_history_masked():
    # scores a..e = 5, 4, 3, 2, 1; user 0 masks a, b -> c is first; user 1 masks b -> e ranks after a, c, d
    metrics = split_metrics(FixedScores([5, 4, 3, 2, 1]), table(), max_len=4)
    assert metrics["user_idx"].tolist() == [0, 1]
    assert metrics["hr@5"].tolist() == [1.0, 1.0]
    assert metrics["ndcg@10"].tolist() == pytest.approx([1.0, 1 / np.log2(5)])


def test_split_metrics_through_another_catalog_match_and_unknown_targets_miss():
    # the same preferences in a model whose catalog orders the items differently: e d c b a -> tokens 1..5
    own = {"e": 1, "d": 2, "c": 3, "b": 4, "a": 5}
    permuted = FixedScores([1, 2, 3, 4, 5])
    direct = split_metrics(FixedScores([5, 4, 3, 2, 1]), table(), max_len=4)
    through = split_metrics(permuted, table(), max_len=4, token_of=own)
    pd.testing.assert_frame_equal(direct, through)
    # a model that never saw item "e": user 1's valid item is a miss, user 0 is unaffected
    partial = split_metrics(FixedScores([1, 2, 3, 4]), table(), max_len=4, token_of={"d": 1, "c": 2, "b": 3, "a": 4})
    assert partial["ndcg@10"].tolist() == pytest.approx([1.0, 0.0])
    assert partial["mrr"].tolist() == pytest.approx([1.0, 0.0], abs=1e-9)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return uri, MlflowClient(uri)  # one store (creating its tables takes seconds), one model per test


@pytest.fixture()
def registry(store, request, tmp_path):
    """The post-trained policy of a data set named after the test, with three challenger versions."""
    from assets.model_runs import POST_TRAINED_MODEL, registered_model_name

    _, client = store
    name = registered_model_name(POST_TRAINED_MODEL, request.node.name)
    client.create_registered_model(name)
    for variant in ("sft", "dpo", "grpo"):
        client.create_model_version(name, source=str(tmp_path), tags={"status": "challenger", "variant": variant})
    return client, name


def test_promote_reject_and_rollback_move_the_champion_alias(registry):
    from assets.registry import RegistryError, alias_version, champion_history, promote, reject, rollback

    registry, policy = registry
    assert promote(registry, policy, "1") is None  # first champion
    assert promote(registry, policy, "2") == "1"
    assert alias_version(registry, policy, "champion") == "2"
    assert registry.get_model_version(policy, "1").tags["status"] == "former_champion"
    reject(registry, policy, "3", ["beats_champion: +0.001 needs > 0.02"], compared_with_champion="2")
    loser = registry.get_model_version(policy, "3").tags
    assert loser["status"] == "rejected" and loser["compared_with_champion"] == "2"
    assert loser["promotion_reasons"] == "beats_champion: +0.001 needs > 0.02"
    assert alias_version(registry, policy, "champion") == "2"
    assert champion_history(registry, policy) == ["1", "2"]

    assert rollback(registry, policy) == ("2", "1")
    assert alias_version(registry, policy, "champion") == "1"
    assert registry.get_model_version(policy, "2").tags["status"] == "rolled_back"
    assert registry.get_model_version(policy, "1").tags["status"] == "champion"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(registry, policy)


def test_registry_commands_act_on_one_data_set(registry, store, monkeypatch, capsys, tmp_path):
    from assets.registry import alias_version, promote
    from pipelines import registry_cli

    registry, policy = registry
    dataset = policy.split(".", 1)[1]
    other = policy + "-other"  # another data set's model, with a champion history of its own
    registry.create_registered_model(other)
    for _ in range(2):
        registry.create_model_version(other, source=str(tmp_path))
    promote(registry, other, "1")
    promote(registry, other, "2")
    promote(registry, policy, "1")
    promote(registry, policy, "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    monkeypatch.setenv("RECALIGN_HOME", str(tmp_path / "home"))
    assert registry_cli.main(["rollback", "--dataset", dataset]) == 0
    assert "rolled back from v3 to v1" in capsys.readouterr().out
    assert alias_version(registry, policy, "champion") == "1"
    assert alias_version(registry, other, "champion") == "2"  # the other data set's champion never moved
    assert registry_cli.main(["rollback", "--dataset", dataset]) == 1
    assert "no previous champion" in capsys.readouterr().err
    assert registry_cli.main(["uri", "--dataset", dataset]) == 0
    assert capsys.readouterr().out.strip() == f"models:/{policy}@champion"
    assert registry_cli.main(["datasets"]) == 0
    assert {dataset, dataset + "-other"} <= set(capsys.readouterr().out.split())
    assert registry_cli.main(["status", "--dataset", "no-such-data"]) == 1
    err = capsys.readouterr().err
    assert "data set 'no-such-data'" in err and dataset in err
