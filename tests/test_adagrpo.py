"""adagrpo: the gate's extremes reduce to NLL and to nll_grpo; its diagnostics match hand computations."""
import math

import pytest
import torch

from recmodels.post_training.adagrpo import AdaGRPOParams, adagrpo_loss, gate_diagnostics
from recmodels.post_training.loop import PostTrainConfig, post_train
from recmodels.post_training.nll_grpo import NLLGRPOParams, nll_grpo_loss
from recmodels.post_training.sft import SFTParams, sft_loss
from recmodels.data.sequences import build_user_sequences, training_windows
from tests.test_rl_methods import MAX_LEN, grads, item_ranker, make_ctx, make_interactions, tiny_policy


@pytest.fixture(scope="module")
def interactions():
    return make_interactions()


@pytest.fixture(scope="module")
def windows(interactions):
    return training_windows(build_user_sequences(interactions), max_len=MAX_LEN)


def test_every_gate_closed_is_exactly_the_nll_gradient(windows):
    policy = tiny_policy()
    _, _, g_nll = grads(sft_loss, policy, windows, make_ctx(SFTParams()))
    loss, tele, g_ada = grads(adagrpo_loss, policy, windows, make_ctx(AdaGRPOParams(alpha=1.0, tau_h=2.0)))
    assert tele["gate_open_rate"] == 0.0 and tele["hard_rate"] == 0.0
    assert loss.item() == pytest.approx(tele["nll"])
    torch.testing.assert_close(g_ada, g_nll, rtol=0, atol=0)


def test_every_gate_open_is_nll_grpo_with_the_same_alpha(windows):
    policy = tiny_policy()
    loss_a, tele_a, g_a = grads(adagrpo_loss, policy, windows,
                                make_ctx(AdaGRPOParams(alpha=0.7, tau_h=0.0, delta=-math.inf), seed=5))
    loss_n, tele_n, g_n = grads(nll_grpo_loss, policy, windows, make_ctx(NLLGRPOParams(alpha=0.7), seed=5))
    assert tele_a["gate_open_rate"] == 1.0
    assert tele_a["rollout_reward"] == tele_n["rollout_reward"]  # the same rollouts
    assert loss_a.item() == pytest.approx(loss_n.item(), rel=1e-6)
    torch.testing.assert_close(g_a, g_n, rtol=1e-5, atol=1e-8)
    _, _, g_nll = grads(sft_loss, policy, windows, make_ctx(SFTParams()))
    assert not torch.allclose(g_a, g_nll, rtol=1e-3)  # the GRPO term does contribute


def test_a_mixed_gate_adds_grpo_for_open_samples_only(windows):
    policy = tiny_policy()
    loss, tele = adagrpo_loss(policy, windows, make_ctx(AdaGRPOParams(alpha=0.5, tau_h=0.0, delta=0.0)))
    assert 0 < tele["gate_open_rate"] < 1 and tele["hard_rate"] == 1.0
    assert tele["gate_open_rate"] == tele["disc_rate"]
    assert loss.item() == pytest.approx(tele["nll"] + 0.5 * tele["gated_grpo"], rel=1e-6)


def test_diagnostics_by_hand():
    # catalog of 8 items (V = 9 with padding). Context 0: uniform over 4 unmasked items; context 1: 0.9 / 0.1
    inf = float("-inf")
    p0 = [0.0, 0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0]
    p1 = [0.0, 0.9, 0.1, 0, 0, 0, 0, 0, 0]
    log_probs = torch.log(torch.tensor([p0, p1]))
    assert log_probs[0, 0] == inf
    items = torch.tensor([[1, 2], [1, 2]])
    rewards = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    truth, truth_reward = torch.tensor([3, 2]), torch.tensor([2.0, 0.5])
    d = gate_diagnostics(log_probs, items, rewards, truth, truth_reward, AdaGRPOParams())
    h1 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(d.normalized_entropy, torch.tensor([math.log(4) / math.log(8), h1 / math.log(8)]))
    # z of the truth: (2 - 0.5) / (0.5 + 1e-4) and (0.5 - 0.5) / (0 + 1e-4)
    torch.testing.assert_close(d.truth_zscore, torch.tensor([1.5 / 0.5001, 0.0]))
    assert d.hard.tolist() == [True, False]  # 2/3 >= 0.5; 0.156 < 0.5
    assert d.disc.tolist() == [True, False]
    assert d.gate.tolist() == [True, False]
    alt = AdaGRPOParams(hard="truth_not_sampled", disc="truth_first")
    d = gate_diagnostics(log_probs, items, rewards, truth, truth_reward, alt)
    assert d.hard.tolist() == [True, False]  # item 3 was not sampled; item 2 was
    assert d.disc.tolist() == [True, True]  # 2.0 beats 0 and 1; 0.5 ties the best rollout (itself)


def test_the_quantile_difficulty_test_keeps_the_most_uncertain_share_of_a_batch():
    # 8 contexts over a catalog of 100 items, each sharper than the last: every normalized entropy is >= 0.5
    # (tau_H = 0.5 keeps them all), the quantile test keeps the most uncertain quarter / half
    logits = torch.randn(8, 101, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 0.8, 8)[:, None]
    log_probs = torch.log_softmax(logits.index_fill(1, torch.tensor([0]), float("-inf")), dim=1)
    items, rewards = torch.ones(8, 2, dtype=torch.long), torch.zeros(8, 2)
    truth, truth_reward = torch.full((8,), 5), torch.zeros(8)
    fixed = gate_diagnostics(log_probs, items, rewards, truth, truth_reward, AdaGRPOParams())
    assert fixed.hard.all() and (fixed.normalized_entropy >= 0.5).all()
    entropy_order = fixed.normalized_entropy.argsort(descending=True)
    for share, n_hard in ((0.25, 2), (0.5, 4), (1.0, 8)):
        params = AdaGRPOParams(hard="entropy_quantile", hard_share=share)
        d = gate_diagnostics(log_probs, items, rewards, truth, truth_reward, params)
        assert int(d.hard.sum()) == n_hard
        assert d.hard[entropy_order[:n_hard]].all()  # the most uncertain ones
    with pytest.raises(ValueError, match="hard_share"):
        AdaGRPOParams(hard="entropy_quantile", hard_share=0.0)


def test_adagrpo_trains_and_logs_its_gate(interactions):
    cfg = PostTrainConfig(steps=20, batch_size=16, lr=1e-2, eval_every=10, method_params={"tau_H": 0.3})
    result = post_train("adagrpo", tiny_policy(dropout=0.1), interactions, cfg, ranker=item_ranker(), device="cpu")
    rows = result.history
    assert rows[-1]["loss"] < rows[1]["loss"]
    for key in ("gate_open_rate", "hard_rate", "disc_rate"):
        assert 0 <= rows[-1][key] <= 1
    assert rows[-1]["gate_open_rate"] <= min(rows[-1]["hard_rate"], rows[-1]["disc_rate"])
    assert result.params["tau_h"] == 0.3


def test_bad_gate_knobs_are_rejected():
    with pytest.raises(ValueError, match=r"for adagrpo\nhard\n  Input should be 'entropy', 'entropy_quantile' or 'truth_not_sampled'"):
        AdaGRPOParams(hard="loss")
    with pytest.raises(ValueError, match=r"for adagrpo\ndisc\n  Input should be 'zscore' or 'truth_first'"):
        AdaGRPOParams(disc="margin")
    with pytest.raises(ValueError, match=r"for adagrpo\nalpha\n  Input should be greater than or equal to 0"):
        AdaGRPOParams(alpha=-1.0)
