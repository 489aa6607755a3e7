"""Ranking metrics, bootstrap intervals and reward alignment on hand-computed cases."""
import numpy as np
import pytest

from recmodels.evaluation.metrics import (bootstrap_ci, hit_rate, mrr, ndcg, paired_bootstrap_diff,
                                          per_user_metrics, reward_alignment)

RANKS = np.array([1, 3, 11, 25])


def test_hit_rate_by_hand():
    assert hit_rate(RANKS, 5).tolist() == [1, 1, 0, 0]
    assert hit_rate(RANKS, 10).tolist() == [1, 1, 0, 0]
    assert hit_rate(RANKS, 20).tolist() == [1, 1, 1, 0]


def test_ndcg_by_hand():
    np.testing.assert_allclose(ndcg(RANKS, 10), [1.0, 0.5, 0.0, 0.0])  # 1/log2(4) = 0.5
    np.testing.assert_allclose(ndcg(RANKS, 20), [1.0, 0.5, 1 / np.log2(12), 0.0])
    assert ndcg(RANKS, 20).mean() == pytest.approx((1.5 + 1 / np.log2(12)) / 4)


def test_mrr_truncated_and_full():
    np.testing.assert_allclose(mrr(RANKS), [1, 1 / 3, 1 / 11, 1 / 25])
    np.testing.assert_allclose(mrr(RANKS, 10), [1, 1 / 3, 0, 0])
    np.testing.assert_allclose(mrr(RANKS, 20), [1, 1 / 3, 1 / 11, 0])


def test_per_user_metrics_columns_and_values():
    df = per_user_metrics(RANKS, [1.0, -1.0, 0.5, 0.0])
    for k in (5, 10, 20):
        assert {f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"} <= set(df.columns)
    assert len(df) == 4
    assert df["hr@20"].mean() == pytest.approx(0.75)
    np.testing.assert_allclose(df["reward_weighted_ndcg@10"], [1.0, -0.5, 0.0, 0.0])


@pytest.mark.parametrize("bad", [[0, 2], [1.5, 2], [np.nan, 1], [[1, 2]]])
def test_bad_ranks_rejected(bad):
    with pytest.raises(ValueError, match="rank"):
        hit_rate(np.array(bad), 10)


def test_rewards_must_match_users():
    with pytest.raises(ValueError, match="target_rewards"):
        per_user_metrics(RANKS, [1.0, 0.0])


def test_bootstrap_ci_contains_mean_and_is_seeded():
    values = np.random.default_rng(3).random(200)
    mean, low, high = bootstrap_ci(values, n_boot=500, seed=7)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert high - low < 0.2  # about 4 standard errors of a U(0,1) mean over 200 users
    assert bootstrap_ci(values, n_boot=500, seed=7) == (mean, low, high)
    assert bootstrap_ci(values, n_boot=500, seed=8) != (mean, low, high)


def test_bootstrap_ci_of_constant_has_zero_width():
    assert bootstrap_ci(np.full(50, 0.1)) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1))
    mean, low, high = bootstrap_ci(np.full(50, 0.1))
    assert low == high == mean


def test_bootstrap_ci_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.1, np.nan])


def test_paired_diff_with_itself_is_exactly_zero():
    values = np.random.default_rng(0).random(100)
    assert paired_bootstrap_diff(values, values) == (0.0, 0.0, 0.0)


def test_paired_diff_sign_and_length_check():
    rng = np.random.default_rng(1)
    b = rng.random(300)
    mean, low, high = paired_bootstrap_diff(b + 0.05 + 0.01 * rng.standard_normal(300), b)
    assert 0 < low < mean < high
    assert mean == pytest.approx(0.05, abs=0.005)
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap_diff(b, b[:-1])


def test_reward_alignment_by_hand():
    # liked: ranks 1 (hit), 11 (miss); disliked: rank 3 (hit); neutral: rank 25
    out = reward_alignment(RANKS, [1.0, -0.5, 0.5, 0.0], k=10)
    assert out["hr@10_liked"] == pytest.approx(0.5)
    assert out["hr@10_disliked"] == pytest.approx(1.0)
    assert (out["n_liked"], out["n_disliked"]) == (2, 1)
    assert out["reward_weighted_ndcg@10"] == pytest.approx((1.0 * 1.0 - 0.5 * 0.5) / 4)


def test_reward_alignment_without_disliked_items_gives_none():
    out = reward_alignment([1, 2], [1.0, 0.5])
    assert out["hr@10_disliked"] is None and out["n_disliked"] == 0
