"""Full-catalog ranking: masking of the history, the target left rankable, ties, padding."""
import numpy as np
import pytest
import torch

from recmodels.evaluation.ranking import score_catalog, target_ranks, top_k_items
from recmodels.policy import GenerativePolicy, PolicyConfig
from recmodels.sequences import EvalExamples

NEG_INF = float("-inf")


class StubScorer:
    """Scores the catalog with the same fixed logits for every history."""

    def __init__(self, logits):
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def next_item_logits(self, history):
        return self.logits.expand(history.shape[0], -1)


# catalog of 5 items (V = 6); column 0 is padding and gets a huge stub score that must be ignored
LOGITS = [100.0, 5.0, 3.0, 3.0, 1.0, 4.0]


def examples(targets, seen):
    n = len(targets)
    history = torch.ones(n, 3, dtype=torch.long)
    return EvalExamples(users=torch.arange(n), history=history, history_rewards=torch.zeros(n, 3),
                        targets=torch.tensor(targets), target_rewards=torch.zeros(n),
                        seen=[np.array(s, dtype=np.int64) for s in seen])


def test_target_ranks_hand_made_case():
    ex = examples(targets=[2, 1, 4], seen=[[1], [1, 3], [5, 2]])
    ranks = target_ranks(StubScorer(LOGITS), ex, batch_size=2)
    # row 0: item 1 (5.0) masked; only item 5 (4.0) beats 3.0; the tie with item 3 does not count -> 2
    # row 1: target 1 is in the history but never masked -> 1 (item 3 masked, nothing beats 5.0)
    # row 2: items 5 and 2 masked; items 1 (5.0) and 3 (3.0) beat 1.0 -> 3
    np.testing.assert_array_equal(ranks, [2, 1, 3])


def test_score_catalog_masks_history_and_padding_but_not_target():
    ex = examples(targets=[2, 1, 4], seen=[[1], [1, 3], [5, 2]])
    scores = score_catalog(StubScorer(LOGITS), ex.history, ex.seen, ex.targets)
    expected = torch.tensor([
        [NEG_INF, NEG_INF, 3.0, 3.0, 1.0, 4.0],
        [NEG_INF, 5.0, 3.0, NEG_INF, 1.0, 4.0],
        [NEG_INF, 5.0, NEG_INF, 3.0, 1.0, NEG_INF],
    ])
    torch.testing.assert_close(scores, expected)
    no_targets = score_catalog(StubScorer(LOGITS), ex.history, ex.seen)
    assert no_targets[1, 1] == NEG_INF  # without targets every seen item is masked


def test_top_k_items_skips_history():
    ex = examples(targets=[2, 1, 4], seen=[[1], [1, 3], [5, 2]])
    top = top_k_items(StubScorer(LOGITS), ex, k=2)
    assert top.shape == (3, 2)
    np.testing.assert_array_equal(top[:, 0], [5, 1, 1])
    assert set(top[0]) == {5, 2} or set(top[0]) == {5, 3}  # 2 and 3 tie at 3.0
    np.testing.assert_array_equal(top[2], [1, 3])


def test_bad_inputs_are_rejected_with_the_reason():
    ex = examples(targets=[2, 1, 4], seen=[[1], [1, 3], [5, 2]])
    with pytest.raises(ValueError, match="seen has 2 entries but history has 3 rows"):
        score_catalog(StubScorer(LOGITS), ex.history, ex.seen[:2])
    with pytest.raises(ValueError, match="row 1: target 9 is outside the catalog of 5 items"):
        target_ranks(StubScorer(LOGITS), examples(targets=[2, 9, 4], seen=[[], [], []]))
    with pytest.raises(ValueError, match="row 0 has target 0"):
        target_ranks(StubScorer(LOGITS), examples(targets=[0, 1, 4], seen=[[], [], []]))
    with pytest.raises(ValueError, match="k=6 exceeds the catalog size 5"):
        top_k_items(StubScorer(LOGITS), ex, k=6)


def test_real_policy_scores_are_finite_outside_masks_and_restore_train_mode():
    torch.manual_seed(0)
    policy = GenerativePolicy(PolicyConfig(vocab_size=8, max_len=4, d_model=8, n_layers=1, n_heads=1))
    policy.train()
    history = torch.tensor([[0, 0, 3, 4], [1, 2, 5, 6], [0, 0, 0, 0]])
    seen = [np.array([3, 4]), np.array([1, 2, 5, 6]), np.array([], dtype=np.int64)]
    scores = score_catalog(policy, history, seen, torch.tensor([5, 2, 7]))
    assert scores.shape == (3, 8)
    assert torch.isinf(scores[:, 0]).all()
    masked = torch.zeros(3, 8, dtype=torch.bool)
    masked[0, [3, 4]] = masked[1, [1, 5, 6]] = True
    masked[:, 0] = True
    assert torch.isneginf(scores[masked]).all() and torch.isfinite(scores[~masked]).all()
    assert policy.training  # the caller's mode is restored
    # no dropout at scoring time: scoring twice gives the same numbers
    torch.testing.assert_close(scores, score_catalog(policy, history, seen, torch.tensor([5, 2, 7])))
