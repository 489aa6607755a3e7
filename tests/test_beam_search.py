"""Beam search and sampling over code tuples; hallucination and beam-based ranks."""
import itertools

import numpy as np
import pytest
import torch

from recmodels.decoding.beam_search import beam_search, build_exclusion, sample_tuples, tuple_log_probs
from recmodels.evaluation.hallucination import (beam_items, beam_target_ranks, evaluate_beams,
                                                hallucination_rate)
from recmodels.data.sequences import EvalExamples
from recmodels.tokenization import ItemTrie
from tests.test_semantic_policy import hand_ids, random_policy

SIZES = (4, 4, 3)  # 48 possible tuples


@pytest.fixture(scope="module")
def setup():
    ids = hand_ids(n_items=20, sizes=SIZES, seed=1)
    policy = random_policy(SIZES, seed=2, max_len=5)
    items = torch.tensor([[0, 0, 3, 7, 1], [4, 5, 6, 2, 9], [0, 0, 0, 0, 11], [12, 13, 1, 2, 3]])
    return ids, ItemTrie.from_semantic_ids(ids), policy, ids.items_to_tokens(items), items


def all_tuples(sizes=SIZES):
    return torch.tensor(list(itertools.product(*(range(s) for s in sizes))))


def test_constrained_beam_search_only_emits_catalog_items(setup):
    ids, trie, policy, history, _ = setup
    tuples, scores = beam_search(policy, history, beam_size=15, trie=trie)
    items = beam_items(tuples, ids)
    assert tuples.shape == (4, 15, 3) and scores.shape == (4, 15)
    assert (items > 0).all() and hallucination_rate(tuples, ids) == 0.0
    assert all(len(set(row)) == 15 for row in items.tolist())
    assert (scores[:, :-1] >= scores[:, 1:]).all() and torch.isfinite(scores).all()


@pytest.mark.parametrize("renormalize", [False, True])
def test_beam_search_with_all_items_as_beams_is_the_exact_ranking(setup, renormalize):
    """By default the items are ranked by the policy's own tuple log-probs (no trie: nothing renormalized);
    with renormalize, by the constrained sampling distribution, a distribution over the items."""
    ids, trie, policy, history, _ = setup
    tuples, scores = beam_search(policy, history, beam_size=20, trie=trie, renormalize=renormalize)
    catalog = torch.as_tensor(ids.codes[1:]).expand(4, -1, -1)
    exact = tuple_log_probs(policy, history, catalog, trie=trie if renormalize else None).sum(-1)  # [4, 20]
    order = exact.argsort(dim=1, descending=True)
    assert torch.equal(torch.as_tensor(beam_items(tuples, ids)), order + 1)
    torch.testing.assert_close(scores, exact.gather(1, order), atol=1e-5, rtol=1e-5)
    total = exact.exp().sum(1)
    assert torch.allclose(total, torch.ones(4), atol=1e-5) if renormalize else (total < 1 - 1e-3).all()


@pytest.mark.parametrize("constrained", [True, False])
def test_beam_search_returns_the_same_beams_with_and_without_the_cache(setup, constrained):
    ids, trie, policy, history, items = setup
    trie = trie if constrained else None
    exclude = [ids.codes[row[row > 0].numpy()] for row in items]
    for ex in (None, exclude):
        cached, s_cached = beam_search(policy, history, 10, trie=trie, use_cache=True, exclude=ex)
        plain, s_plain = beam_search(policy, history, 10, trie=trie, use_cache=False, exclude=ex)
        assert torch.equal(cached, plain)
        torch.testing.assert_close(s_cached, s_plain, atol=1e-5, rtol=1e-5)


def test_unconstrained_beam_search_can_hallucinate_and_is_counted(setup):
    ids, _, policy, history, _ = setup
    tuples, scores = beam_search(policy, history, beam_size=30)
    items = beam_items(tuples, ids)
    assert hallucination_rate(tuples, ids) == pytest.approx((items == 0).mean())
    assert 0 < hallucination_rate(tuples, ids) < 1
    exact = tuple_log_probs(policy, history, all_tuples().expand(4, -1, -1)).sum(-1)
    torch.testing.assert_close(scores, exact.topk(30, dim=1).values, atol=1e-5, rtol=1e-5)


def test_excluded_items_are_never_generated_even_when_they_fill_a_whole_prefix(setup):
    ids, trie, policy, history, _ = setup
    first = ids.codes[1:, 0]
    under = np.flatnonzero(first == first[0]) + 1  # every item under item 1's first code
    keep = [i for i in range(1, 21) if i not in set(under)]
    exclude = [ids.codes[under]] * 4
    tuples, scores = beam_search(policy, history, beam_size=len(keep), trie=trie, exclude=exclude)
    assert sorted(beam_items(tuples, ids)[0].tolist()) == keep and torch.isfinite(scores).all()
    samples, _ = sample_tuples(policy, history, 50, torch.Generator().manual_seed(0), trie=trie, exclude=exclude)
    assert not np.isin(beam_items(samples, ids), under).any()
    with pytest.raises(ValueError, match=f"row 0 leaves only {len(keep)} admissible items, fewer than beam_size"):
        beam_search(policy, history, beam_size=len(keep) + 1, trie=trie, exclude=exclude)
    unconstrained, _ = beam_search(policy, history, beam_size=40, exclude=exclude)
    assert not np.isin(beam_items(unconstrained, ids), under).any()


def test_excluding_tuples_hands_their_probability_to_no_other_tuple(setup):
    """Beam scores are the policy's own tuple log-probs: the excluded tuples drop out and every other tuple keeps
    its score. Renormalizing each level over what is left (`renormalize=True`, the sampling distribution) would
    raise the excluded tuples' siblings, which without a trie are mostly tuples of no item."""
    ids, _, policy, history, _ = setup
    every = all_tuples().expand(4, -1, -1)
    exact = tuple_log_probs(policy, history, every).sum(-1)  # [4, every tuple], nothing excluded
    excluded = torch.as_tensor(ids.codes[1:4])
    kept = ~(every[0][:, None] == excluded[None]).all(-1).any(-1)
    n = int(kept.sum())
    tuples, scores = beam_search(policy, history, beam_size=n, exclude=[excluded.numpy()] * 4)
    torch.testing.assert_close(scores, exact[:, kept].sort(dim=1, descending=True).values, atol=1e-5, rtol=1e-5)
    _, renormalized = beam_search(policy, history, beam_size=n, exclude=[excluded.numpy()] * 4, renormalize=True)
    assert (renormalized.exp().sum(1) > scores.exp().sum(1) + 1e-3).all()


def test_samples_follow_the_policy_and_their_log_probs():
    ids = hand_ids(n_items=6, sizes=(2, 2, 2), seed=0)
    trie = ItemTrie.from_semantic_ids(ids)
    policy = random_policy((2, 2, 2), seed=5, max_len=3, scale=0.3)
    history = ids.items_to_tokens(torch.tensor([[1, 2]]))
    exact = tuple_log_probs(policy, history, torch.as_tensor(ids.codes[1:])[None], trie=trie).sum(-1).exp()[0]
    for distinct in (False, True):
        g = torch.Generator().manual_seed(0)
        many = history.expand(3000, -1)
        tuples, logp = sample_tuples(policy, many, 1, g, trie=trie, distinct=distinct)
        freq = np.bincount(beam_items(tuples, ids).ravel(), minlength=7)[1:] / 3000
        np.testing.assert_allclose(freq, exact.detach().numpy(), atol=0.03)
        torch.testing.assert_close(logp[:, 0], exact.log()[torch.as_tensor(beam_items(tuples, ids)[:, 0] - 1)])


def test_sampling_is_seeded_and_distinct_sampling_gives_different_tuples(setup):
    ids, trie, policy, history, _ = setup
    draw = lambda seed, **kw: sample_tuples(policy, history, 8, torch.Generator().manual_seed(seed),  # noqa: E731
                                            trie=trie, **kw)
    a, la = draw(3)
    b, lb = draw(3)
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, draw(4)[0])
    torch.testing.assert_close(la, tuple_log_probs(policy, history, a, trie=trie).sum(-1), atol=1e-5, rtol=1e-5)
    d, _ = draw(3, distinct=True)
    assert all(len(set(row)) == 8 for row in beam_items(d, ids).tolist())
    assert (beam_items(d, ids) > 0).all()


def test_decoding_rejects_misaligned_histories_and_bad_exclusions(setup):
    ids, trie, policy, history, _ = setup
    shifted = torch.cat([torch.zeros(4, 1, dtype=torch.long), history[:, :-1]], dim=1)  # codes one slot late
    with pytest.raises(ValueError, match=r"history row 0: token \d+ at position 7 is not of level 1"):
        beam_search(policy, shifted, 3, trie=trie)
    with pytest.raises(ValueError, match="exclude has 1 rows but the histories have 4"):
        beam_search(policy, history, 3, trie=trie, exclude=[ids.codes[[1]]])
    with pytest.raises(ValueError, match=r"exclude row 0 must be \[n, 3\] code tuples"):
        beam_search(policy, history, 3, trie=trie, exclude=[np.array([[1, 2]])] * 4)
    with pytest.raises(ValueError, match=r"exclude row 2, tuple 1 has code 4 outside level 1's 0..3"):
        beam_search(policy, history, 3, trie=trie, exclude=[ids.codes[[1]]] * 2 + [np.array([[0, 1, 0], [0, 4, 0]])] * 2)


def test_exclusions_are_deduplicated_per_row_and_only_items_kept_under_the_trie(setup):
    ids, trie, _, _, _ = setup
    non_item = next(t for t in all_tuples().tolist() if t not in ids.codes[1:].tolist())
    exclude = [np.vstack([ids.codes[[3, 1, 3]], [non_item]]), np.zeros((0, 3), np.int64), ids.codes[[2]]]
    free = build_exclusion(exclude, 3, SIZES, None, "cpu")
    constrained = build_exclusion(exclude, 3, SIZES, trie, "cpu")
    as_sets = lambda e: [{tuple(t) for t, v in zip(row.tolist(), ok.tolist()) if v}  # noqa: E731
                         for row, ok in zip(e.tuples, e.valid)]
    items = lambda *i: {tuple(ids.codes[j].tolist()) for j in i}  # noqa: E731
    assert as_sets(free) == [items(1, 3) | {tuple(non_item)}, set(), items(2)]
    assert as_sets(constrained) == [items(1, 3), set(), items(2)]
    assert free.valid.sum(dim=1).tolist() == [3, 0, 1] and (free.tuples[~free.valid] == -1).all()


def test_hallucination_rate_and_ranks_on_a_hand_made_case():
    ids = hand_ids(n_items=4, sizes=(2, 2, 2), seed=0)
    real = ids.codes[1:]
    fake = [t for t in itertools.product(range(2), range(2), range(2)) if ids.lookup(np.array(t)) == 0]
    tuples = np.array([[real[2], fake[0], real[0]], [fake[1], fake[2], real[3]]])  # [2, 3, 3]
    assert beam_items(tuples, ids).tolist() == [[3, 0, 1], [0, 0, 4]]
    assert hallucination_rate(tuples, ids) == pytest.approx(3 / 6)
    # target 1 is the third beam; target 2 is missing -> K + 1; a hallucinated beam still takes a slot
    assert beam_target_ranks(beam_items(tuples, ids), np.array([1, 2])).tolist() == [3, 4]
    with pytest.raises(ValueError, match=r"tuples must be \[B, K, 3\]"):
        hallucination_rate(np.zeros((2, 3)), ids)


def test_evaluate_beams_masks_the_history_but_not_the_target(setup):
    ids, trie, policy, _, _ = setup
    history = torch.tensor([[0, 3, 7], [5, 6, 2]])
    seen = [np.array([3, 7]), np.array([2, 5, 6])]
    examples = EvalExamples(users=torch.arange(2), history=history, history_rewards=torch.zeros(2, 3),
                            targets=torch.tensor([7, 9]), target_rewards=torch.zeros(2), seen=seen)
    result = evaluate_beams(policy, examples, ids, beam_size=17, trie=trie, batch_size=1)
    assert result.items.shape == (2, 17) and result.hallucination_rate == 0.0
    assert 3 not in result.items[0] and 7 in result.items[0]  # the target stays rankable
    assert not np.isin(result.items[1], seen[1]).any() and 9 in result.items[1]
    assert result.ranks.tolist() == [int(np.flatnonzero(result.items[0] == 7)[0]) + 1,
                                     int(np.flatnonzero(result.items[1] == 9)[0]) + 1]
