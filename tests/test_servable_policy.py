"""The servable pyfunc: saved and loaded the way MLflow serves it, queried with original item ids."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from recmodels.storage.checkpoints import save_checkpoint
from recmodels.models.policy import GenerativePolicy, PolicyConfig

ITEM_IDS = ["101", "102", "103", "104", "105", "106", "107"]  # tokens 1..7


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import mlflow.pyfunc

    from assets.model_runs import servable_policy_model

    tmp = tmp_path_factory.mktemp("servable")
    torch.manual_seed(0)
    cfg = PolicyConfig(vocab_size=len(ITEM_IDS) + 1, max_len=4, d_model=8, n_heads=1, n_layers=1)
    policy = GenerativePolicy(cfg).eval()
    checkpoint = save_checkpoint(tmp / "policy.pt", policy, cfg)
    catalog = tmp / "catalog.parquet"
    pd.DataFrame({"item_idx": np.arange(1, 8, dtype=np.int32), "item_id": ITEM_IDS,
                  "title": [f"movie {i}" for i in ITEM_IDS]}).to_parquet(catalog)
    mlflow.pyfunc.save_model(str(tmp / "model"), **servable_policy_model(checkpoint, catalog, {"k": 3}))
    return mlflow.pyfunc.load_model(str(tmp / "model")), policy


def request(*histories, k=None) -> pd.DataFrame:
    frame = pd.DataFrame({"recent_item_ids": list(histories)})
    if k is not None:
        frame["k"] = k
    return frame


def test_returns_original_item_ids_best_first_with_the_default_k(served):
    model, policy = served
    out = model.predict(request(["101", "102"], []))
    assert list(out.columns) == ["item_ids", "scores", "unknown_item_ids"]
    assert [len(ids) for ids in out["item_ids"]] == [3, 3]  # decoding setting k=3
    assert all(i in ITEM_IDS for ids in out["item_ids"] for i in ids)
    for scores in out["scores"]:
        assert list(scores) == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    with torch.no_grad():
        logits = policy.next_item_logits(torch.tensor([[0, 0, 1, 2]]))[0]
    logits[[0, 1, 2]] = float("-inf")  # padding and the history
    assert out["item_ids"][0][0] == ITEM_IDS[int(logits.argmax()) - 1]


def test_history_is_masked_and_the_rest_of_the_catalog_is_ranked(served):
    model, _ = served
    history = ["103", "101", "107"]
    out = model.predict(request(history, k=[10]))
    ranked = list(out["item_ids"][0])
    assert sorted(ranked) == sorted(set(ITEM_IDS) - set(history))  # k capped at the 4 unseen items
    assert sum(out["scores"][0]) == pytest.approx(1.0, abs=1e-5)  # probabilities over the unseen catalog


def test_unknown_item_ids_are_ignored_and_reported(served):
    model, _ = served
    out = model.predict(request(["101", "nope", "102", "999"], ["101", "102"], ["ghost"]))
    assert list(out["unknown_item_ids"][0]) == ["nope", "999"]
    assert list(out["unknown_item_ids"][1]) == [] and list(out["unknown_item_ids"][2]) == ["ghost"]
    assert list(out["item_ids"][0]) == list(out["item_ids"][1])  # the same as without the unknown ids
    assert len(out["item_ids"][2]) == 3  # nothing known: recommendations for an empty history


def test_numeric_ids_and_per_row_k(served):
    model, _ = served
    out = model.predict(request([101, 102], ["101", "102"], k=[1, 2]))
    assert [len(ids) for ids in out["item_ids"]] == [1, 2]
    assert out["item_ids"][0][0] == out["item_ids"][1][0]
    assert list(out["unknown_item_ids"][0]) == []


def test_bad_requests_name_the_problem(served):
    from mlflow.exceptions import MlflowException

    model, _ = served
    with pytest.raises(MlflowException, match="recent_item_ids"):
        model.predict(pd.DataFrame({"items": [["101"]]}))
    with pytest.raises(MlflowException, match="row 1: column 'k' must be a positive integer, got 0"):
        model.predict(request(["101"], ["102"], k=[2, 0]))


@pytest.fixture(scope="module")
def served_semantic(tmp_path_factory):
    import mlflow.pyfunc

    from assets.model_runs import servable_policy_model
    from tests.test_semantic_policy import hand_ids, random_policy

    tmp = tmp_path_factory.mktemp("servable_semantic")
    ids = hand_ids(n_items=len(ITEM_IDS), sizes=(3, 2, 2), seed=5)  # 7 items among 12 tuples
    policy = random_policy((3, 2, 2), seed=6, max_len=4)
    checkpoint = save_checkpoint(tmp / "policy.pt", policy, policy.cfg)
    catalog = tmp / "catalog.parquet"
    pd.DataFrame({"item_idx": np.arange(1, 8, dtype=np.int32), "item_id": ITEM_IDS}).to_parquet(catalog)
    semantic = ids.save(tmp / "item_tokens.npz")
    mlflow.pyfunc.save_model(str(tmp / "model"), **servable_policy_model(checkpoint, catalog, {"k": 3}, semantic))
    return mlflow.pyfunc.load_model(str(tmp / "model")), policy, ids


def test_a_semantic_policy_serves_its_constrained_beams_as_original_item_ids(served_semantic):
    from recmodels.decoding.beam_search import beam_search
    from recmodels.tokenization import ItemTrie

    model, policy, ids = served_semantic
    history = ["103", "101"]
    out = model.predict(request(history, [], k=[10, 2]))
    ranked = list(out["item_ids"][0])
    assert sorted(ranked) == sorted(set(ITEM_IDS) - set(history))  # k capped at the 5 unseen real items
    assert list(out["scores"][0]) == sorted(out["scores"][0], reverse=True)
    assert 0 < sum(out["scores"][0]) < 1  # the policy's own probabilities: the seen items' share is left out
    tuples, logp = beam_search(policy, ids.items_to_tokens(torch.tensor([[0, 0, 3, 1]])), 5,
                               trie=ItemTrie.from_semantic_ids(ids), exclude=[ids.codes[[1, 3]]])
    assert ranked == [ITEM_IDS[i - 1] for i in ids.lookup(tuples[0])]
    np.testing.assert_allclose(out["scores"][0], logp[0].exp().numpy(), atol=1e-6)  # served to 6 decimals
    assert len(out["item_ids"][1]) == 2 and set(out["item_ids"][1]) <= set(ITEM_IDS)
