"""Evaluation of semantic-ID policies: constrained ranks and top-10, unconstrained hallucination rate, the
report's decoding section and HR@10 vs hallucination frontier, promotion metrics on valid, the unmasked protocol."""
import json

import numpy as np
import pytest
import torch

from recmodels.evaluation.evaluate import evaluate_policies
from recmodels.evaluation.hallucination import evaluate_beams, history_items_in_beams
from recmodels.evaluation.metrics import MISS_RANK
from recmodels.evaluation.promotion import split_metrics
from recmodels.evaluation.ranking import rank_catalog, target_ranks
from recmodels.evaluation.report import build_report
from recmodels.evaluation.report_output import report_markdown, write_report
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.data.sequences import EvalExamples, build_user_sequences, eval_examples
from recmodels.tokenization import ItemTrie
from tests.synthetic import cyclic_interactions
from tests.test_semantic_policy import hand_ids, random_policy

N_ITEMS, SIZES, MAX_LEN = 30, (5, 4, 3), 6  # 30 items among 60 possible tuples: room to hallucinate


@pytest.fixture(scope="module")
def setup():
    ids = hand_ids(n_items=N_ITEMS, sizes=SIZES, seed=1)
    semantic = random_policy(SIZES, seed=2, max_len=MAX_LEN)
    torch.manual_seed(0)
    atomic = GenerativePolicy(PolicyConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN, d_model=8, n_heads=1,
                                           n_layers=1)).eval()
    ranker = RewardRanker(RankerConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN)).eval()
    data = cyclic_interactions(n_users=25, n_items=N_ITEMS, events=10, rewards=(1.0, -0.5), seed=0)
    evals = evaluate_policies({"pretrained": (atomic, None), "nll_grpo_alpha_0_3": (semantic, "nll_grpo")},
                              data, ranker, MAX_LEN, semantic_ids=ids)
    return ids, semantic, atomic, ranker, data, evals


def test_semantic_policy_gets_hallucination_rate_of_its_unconstrained_top10(setup):
    ids, semantic, _, _, data, evals = setup
    d = evals[1].decoding
    assert d["tokenization"] == "semantic" and d["beam_size"] == 20 and d["hallucination_k"] == 10
    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    free = evaluate_beams(semantic, examples, ids, beam_size=20, trie=None)
    assert d["hallucination_rate"] == pytest.approx((free.items[:, :10] == 0).mean())
    assert 0 < d["hallucination_rate"] < 1  # a random policy over 60 tuples for 30 items does hallucinate
    free_hr10 = float((free.ranks <= 10).mean())
    assert d["unconstrained"]["hr@10"] == pytest.approx(free_hr10)


def test_constrained_ranks_only_point_at_real_unseen_items(setup):
    ids, semantic, _, _, data, evals = setup
    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    beams = evaluate_beams(semantic, examples, ids, beam_size=20, trie=ItemTrie.from_semantic_ids(ids))
    assert (beams.items > 0).all() and beams.hallucination_rate == 0.0
    ranks = evals[1].ranks
    hit = ranks != MISS_RANK
    assert ((ranks[hit] >= 1) & (ranks[hit] <= 20)).all() and set(ranks[~hit]) <= {MISS_RANK}
    rows = np.flatnonzero(hit)
    assert (beams.items[rows, ranks[rows] - 1] == examples.targets.numpy()[rows]).all()
    for row, seen, target in zip(beams.items, examples.seen, examples.targets.numpy()):
        assert not np.isin(row, seen[seen != target]).any()
    assert evals[1].decoding["constrained"]["hr@10"] == pytest.approx(float((ranks <= 10).mean()))


def test_atomic_policies_keep_full_catalog_ranks_and_a_zero_rate(setup):
    _, _, atomic, _, data, evals = setup
    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    np.testing.assert_array_equal(evals[0].ranks, target_ranks(atomic, examples))
    assert evals[0].decoding["tokenization"] == "atomic" and evals[0].decoding["hallucination_rate"] == 0.0


def test_a_semantic_policy_without_its_semantic_ids_is_rejected_naming_it(setup):
    _, semantic, _, ranker, data, _ = setup
    with pytest.raises(ValueError, match="policy 'grpo': a semantic-ID policy needs the semantic_ids"):
        evaluate_policies({"grpo": (semantic, "grpo")}, data, ranker, MAX_LEN)


def test_report_has_the_decoding_section_and_the_frontier_plot(setup, tmp_path):
    *_, evals = setup
    report = build_report(evals, n_boot=50)
    pols = report["policies"]
    assert pols["pretrained"]["hallucination_rate"] == 0.0
    assert pols["nll_grpo_alpha_0_3"]["hallucination_rate"] == evals[1].decoding["hallucination_rate"]
    frontier = {r["policy"]: r for r in report["hallucination_frontier"]}
    assert set(frontier) == {"pretrained", "nll_grpo_alpha_0_3"} and frontier["nll_grpo_alpha_0_3"]["alpha"] == 0.3
    assert frontier["nll_grpo_alpha_0_3"]["hr@10"] == pols["nll_grpo_alpha_0_3"]["metrics"]["hr@10"]["mean"]
    markdown = report_markdown(report)
    assert "## Decoding: constrained vs unconstrained" in markdown
    rate = f"{evals[1].decoding['hallucination_rate']:.2%}"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    assert any(row[:3] == ["nll_grpo_alpha_0_3", "semantic", "20"] and row[-1] == rate for row in rows)
    files = write_report(report, tmp_path)
    assert files["frontier_png"].name == "hr10_vs_hallucination.png"
    assert files["frontier_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["json"].read_text())["policies"]["nll_grpo_alpha_0_3"]["decoding"]["tokenization"] == \
        "semantic"


def test_a_user_with_fewer_unseen_items_than_beams_gets_only_real_beams():
    ids = hand_ids(n_items=12, sizes=SIZES, seed=3)
    policy = random_policy(SIZES, seed=4, max_len=MAX_LEN)
    seen = [np.arange(1, 10), np.array([1, 2])]  # user 0 leaves items 10, 11, 12 only
    examples = EvalExamples(users=torch.arange(2), history=torch.tensor([[4, 5, 6, 7, 8, 9], [0, 0, 0, 0, 1, 2]]),
                            history_rewards=torch.zeros(2, MAX_LEN), targets=torch.tensor([11, 5]),
                            target_rewards=torch.zeros(2), seen=seen)
    beams = evaluate_beams(policy, examples, ids, beam_size=10, trie=ItemTrie.from_semantic_ids(ids))
    assert beams.n_beams.tolist() == [3, 10]
    assert sorted(beams.items[0, :3]) == [10, 11, 12] and np.isinf(beams.scores[0, 3:]).all()
    assert 1 <= beams.ranks[0] <= 3 and beams.hallucination_rate == 0.0


def test_promotion_metrics_of_a_semantic_policy_carry_its_valid_hallucination_rate(setup):
    ids, semantic, atomic, _, data, _ = setup
    frame = split_metrics(semantic, data, MAX_LEN, semantic_ids=ids)
    valid = eval_examples(build_user_sequences(data), "valid", MAX_LEN)
    free = evaluate_beams(semantic, valid, ids, beam_size=20, trie=None)
    assert frame.attrs["hallucination_rate"] == pytest.approx((free.items[:, :10] == 0).mean())
    assert split_metrics(atomic, data, MAX_LEN).attrs["hallucination_rate"] == 0.0
    with pytest.raises(ValueError, match="needs the semantic_ids"):
        split_metrics(semantic, data, MAX_LEN)


def test_semantic_unmasked_ranks_come_from_a_beam_search_that_keeps_the_history(setup):
    ids, semantic, _, _, data, evals = setup
    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    beams = evaluate_beams(semantic, examples, ids, beam_size=20, trie=ItemTrie.from_semantic_ids(ids),
                           exclude_history=False)
    np.testing.assert_array_equal(evals[1].ranks_unmasked, np.where(beams.ranks <= 20, beams.ranks, MISS_RANK))
    history_in_top10 = [int(np.isin(row[:10], seen[seen != t]).sum())
                        for row, seen, t in zip(beams.items, examples.seen, examples.targets.tolist())]
    assert evals[1].seen_in_top10_unmasked.tolist() == history_in_top10
    assert evals[1].seen_in_top10_unmasked.min() >= 1  # seen items do come back once the history is not excluded
    hr10 = float((evals[1].ranks <= 10).mean())
    hr10_unmasked = float((evals[1].ranks_unmasked <= 10).mean())
    assert (hr10, hr10_unmasked) == (11 / 25, 7 / 25)


def test_history_items_in_beams_counted_by_hand():
    examples = EvalExamples(users=torch.arange(3), history=torch.zeros(3, 2, dtype=torch.long),
                            history_rewards=torch.zeros(3, 2), targets=torch.tensor([4, 4, 9]),
                            target_rewards=torch.zeros(3), seen=[np.array([1, 4, 7]), np.array([2]), np.array([9])])
    items = np.array([[4, 7, 1, 3], [5, 6, 8, 2], [9, 1, 2, 3]])
    # row 0: 7 and 1 (4 is the target); row 1: only 2 real beams, item 2 is a filler slot; row 2: the target only
    counts = history_items_in_beams(items, n_beams=np.array([4, 2, 4]), examples=examples, k=3)
    assert counts.tolist() == [2, 0, 0]


def test_atomic_unmasked_ranks_come_from_the_same_scoring_pass(setup):
    _, _, atomic, _, data, evals = setup
    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    both = rank_catalog(atomic, examples)
    np.testing.assert_array_equal(evals[0].ranks_unmasked, both.ranks_unmasked)
    np.testing.assert_array_equal(evals[0].seen_in_top10_unmasked, both.seen_in_top10_unmasked)
    assert (evals[0].ranks_unmasked >= evals[0].ranks).all() and (evals[0].ranks_unmasked > evals[0].ranks).any()
    report = build_report(evals, n_boot=50)
    assert report["policies"]["nll_grpo_alpha_0_3"]["unmasked"]["metrics"]["hr@10"]["mean"] == pytest.approx(7 / 25)
