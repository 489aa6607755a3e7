"""Full-catalog ranking: masking of the history, the target left rankable, ties, padding, both protocols."""
import numpy as np
import pytest
import torch

from recmodels.evaluation.metrics import hit_rate, ndcg
from recmodels.evaluation.ranking import (rank_catalog, ranks_from_scores, score_catalog, target_ranks,
                                          top_k_items)
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.data.sequences import EvalExamples

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
    # row 0: item 1 (5.0) masked; item 5 (4.0) beats 3.0 and item 3 ties with it -> 2 or 3 (a draw)
    # row 1: target 1 is in the history but never masked -> 1 (item 3 masked, nothing beats 5.0)
    # row 2: items 5 and 2 masked; items 1 (5.0) and 3 (3.0) beat 1.0 -> 3
    assert ranks[0] in (2, 3)
    np.testing.assert_array_equal(ranks[1:], [1, 3])
    draws = {int(target_ranks(StubScorer(LOGITS), ex, generator=torch.Generator().manual_seed(s))[0])
             for s in range(20)}
    assert draws == {2, 3}  # the tie goes either way, depending on the seed


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


def test_ties_are_broken_by_a_uniform_draw_and_minus_inf_never_ties():
    scores = torch.tensor([[NEG_INF, 1.0, 1.0, 1.0, 0.0]] * 3 + [[NEG_INF, NEG_INF, NEG_INF, 2.0, 3.0]])
    targets = torch.tensor([1, 1, 1, 3])
    # rows 0-2: nothing higher, 2 other items tied -> 1 + floor(draw * 3); row 3: item 4 higher, no tie
    ranks = ranks_from_scores(scores, targets, torch.tensor([0.0, 0.5, 0.99, 0.99], dtype=torch.float64))
    assert ranks.tolist() == [1, 2, 3, 2]


def constant_scores_examples(n_users: int, n_items: int, n_seen: int, seed: int = 0) -> EvalExamples:
    """Users whose targets and `n_seen` history items are drawn at random from a catalog of `n_items`."""
    rng = np.random.default_rng(seed)
    seen = [rng.choice(np.arange(1, n_items + 1), size=n_seen, replace=False) for _ in range(n_users)]
    targets = [int(rng.integers(1, n_items + 1)) for _ in range(n_users)]
    return examples(targets=targets, seen=seen)


def test_a_constant_score_policy_gets_hr10_of_ten_over_the_catalog_size():
    n_items = 200
    ex = constant_scores_examples(n_users=2000, n_items=n_items, n_seen=0)
    flat = StubScorer([0.0] * (n_items + 1))
    ranks = target_ranks(flat, ex)
    assert hit_rate(ranks, 10).mean() == pytest.approx(10 / n_items, abs=0.015)  # 0.05 +- 3 standard errors
    expected_ndcg = sum(1 / np.log2(r + 1) for r in range(1, 11)) / n_items  # 0.0227
    assert ndcg(ranks, 10).mean() == pytest.approx(expected_ndcg, abs=0.008)
    assert ranks.min() >= 1 and ranks.max() <= n_items
    assert abs(ranks.mean() - (n_items + 1) / 2) < 5  # uniform over 1..200: mean 100.5


def test_tie_draws_are_deterministic_for_a_seed():
    ex = constant_scores_examples(n_users=300, n_items=50, n_seen=5)
    flat = StubScorer([0.0] * 51)
    first = target_ranks(flat, ex, generator=torch.Generator().manual_seed(7))
    again = target_ranks(flat, ex, batch_size=64, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(first, again)  # the same seed, whatever the batch size
    np.testing.assert_array_equal(target_ranks(flat, ex), target_ranks(flat, ex))  # the default seed
    assert not np.array_equal(first, target_ranks(flat, ex, generator=torch.Generator().manual_seed(8)))


def random_scores_examples(n_users: int = 40, n_items: int = 30, seed: int = 0):
    """Distinct random scores (no ties) and random histories; the scorer and the examples."""
    rng = np.random.default_rng(seed)
    scorer = StubScorer(np.concatenate([[0.0], rng.permutation(n_items) / n_items]))  # distinct scores
    seen = [rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(0, 10)), replace=False)
            for _ in range(n_users)]
    targets = [int(rng.choice(s)) if len(s) and rng.random() < 0.2 else int(rng.integers(1, n_items + 1))
               for s in seen]  # some targets repeat a history item
    return scorer, examples(targets=targets, seen=seen)


def test_without_ties_ranks_are_one_plus_the_number_of_higher_scores():
    scorer, ex = random_scores_examples()
    scores = scorer.logits.numpy()
    for seed in (0, 1):
        ranks = target_ranks(scorer, ex, batch_size=7, generator=torch.Generator().manual_seed(seed))
        for rank, target, seen in zip(ranks, ex.targets.tolist(), ex.seen):
            competing = np.setdiff1d(np.arange(1, len(scores)), np.setdiff1d(seen, [target]))
            assert rank == 1 + int((scores[competing] > scores[target]).sum())


def test_unmasked_ranks_count_the_seen_items_that_outscore_the_target():
    scorer, ex = random_scores_examples()
    scores = scorer.logits.numpy()
    both = rank_catalog(scorer, ex, batch_size=7)
    np.testing.assert_array_equal(both.ranks, target_ranks(scorer, ex))  # the same masked ranks
    np.testing.assert_array_equal(both.top_items, top_k_items(scorer, ex, k=10))
    outscoring = np.array([int((scores[np.setdiff1d(seen, [t]).astype(int)] > scores[t]).sum())
                           for seen, t in zip(ex.seen, ex.targets.tolist())])
    np.testing.assert_array_equal(both.ranks_unmasked, both.ranks + outscoring)
    assert (outscoring == 0).any() and (outscoring > 0).any()  # both cases occur
    np.testing.assert_array_equal(both.ranks_unmasked[outscoring == 0], both.ranks[outscoring == 0])
    unmasked = 1 + np.array([int((scores[1:] > scores[t]).sum()) for t in ex.targets.tolist()])
    np.testing.assert_array_equal(both.ranks_unmasked, unmasked)  # only padding is excluded


def test_a_seen_item_scoring_highest_is_rank_1_masked_and_2_unmasked():
    # target 5 scores 4.0; item 1 (5.0) is seen in row 0 only; row 1's seen item 2 (3.0) scores lower
    ex = examples(targets=[5, 5], seen=[[1], [2]])
    both = rank_catalog(StubScorer(LOGITS), ex, k=2)
    assert both.ranks.tolist() == [1, 2] and both.ranks_unmasked.tolist() == [2, 2]
    assert both.seen_in_top10_unmasked.tolist() == [1, 1]  # a 5-item catalog: all of it is the top 10


def test_unmasked_ranks_with_ties_are_never_better_than_masked_ones():
    ex = constant_scores_examples(n_users=500, n_items=40, n_seen=10)
    both = rank_catalog(StubScorer([0.0] * 41), ex)
    assert (both.ranks_unmasked >= both.ranks).all() and (both.ranks_unmasked > both.ranks).any()
    assert hit_rate(both.ranks, 10).mean() > hit_rate(both.ranks_unmasked, 10).mean()


def test_seen_items_in_the_unmasked_top10_counted_by_hand():
    logits = [0.0, *range(1, 13)]  # item i scores i: the top 10 are items 3..12
    ex = examples(targets=[7, 7, 4], seen=[[1, 2, 12, 5], [7, 11, 1], []])
    both = rank_catalog(StubScorer(logits), ex)
    # row 0: 12 and 5 in the top 10 (1, 2 are not); row 1: 11 (7 is the target, 1 is out); row 2: no history
    assert both.seen_in_top10_unmasked.tolist() == [2, 1, 0]
    assert both.ranks.tolist() == [5, 5, 9] and both.ranks_unmasked.tolist() == [6, 6, 9]
