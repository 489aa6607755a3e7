"""Post-training: the method losses on hand cases and the shared loop on a tiny learnable data set."""
import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch

from recmodels.evaluation.metrics import ndcg
from recmodels.evaluation.ranking import target_ranks
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.post_training import registry
from recmodels.post_training.exp_rw_sft import ExpRwSFTParams, exp_rw_sft_loss, prepare, user_mean_rewards
from recmodels.post_training.loop import MethodContext, PostTrainConfig, post_train
from recmodels.post_training.registry import METHODS, PostTrainingMethod, get_method
from recmodels.post_training.sft import SFTParams, sft_loss, target_nll
from recmodels.data.sequences import TrainingWindows, build_user_sequences, eval_examples, training_windows
from recmodels.tokenization.atomic_items import AtomicItems
from tests.synthetic import cyclic_interactions

N_USERS, N_ITEMS, EVENTS = 20, 12, 8


def make_interactions(seed: int = 0) -> pd.DataFrame:
    """Each user walks the catalog in cyclic order from a random start: the next item is learnable."""
    return cyclic_interactions(N_USERS, N_ITEMS, EVENTS, (-1, -0.5, 0, 0.5, 1), seed)


def tiny_policy(seed: int = 0) -> GenerativePolicy:
    torch.manual_seed(seed)
    return GenerativePolicy(PolicyConfig(vocab_size=N_ITEMS + 1, max_len=8, d_model=16, n_layers=1, n_heads=1,
                                         dropout=0.0))


def ctx_for(params, state=None) -> MethodContext:
    return MethodContext(params=params, reference=tiny_policy(), ranker=None, state=state or {},
                         device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def interactions():
    return make_interactions()


@pytest.fixture(scope="module")
def windows(interactions):
    return training_windows(build_user_sequences(interactions), max_len=8)


@pytest.fixture(scope="module")
def pretrained(interactions):
    """A policy that has learned the pattern (post-trained with sft from random weights)."""
    cfg = PostTrainConfig(steps=60, batch_size=8, lr=1e-2, eval_every=60)
    return post_train("sft", tiny_policy(), interactions, cfg, device="cpu").policy


def grads(loss_fn, policy, batch, ctx) -> tuple[float, torch.Tensor]:
    policy.zero_grad()
    loss, _ = loss_fn(policy, batch, ctx)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    assert torch.isfinite(g).all()
    return loss.item(), g


def one_window(rewards: list[float]) -> TrainingWindows:
    """One window whose last len(rewards) positions have targets with these rewards (the rest is padding)."""
    T, k = 8, len(rewards)
    inputs = torch.zeros(1, T, dtype=torch.long)
    targets = torch.zeros(1, T, dtype=torch.long)
    r = torch.zeros(1, T)
    inputs[0, T - k:] = torch.arange(1, k + 1)
    targets[0, T - k:] = torch.arange(2, k + 2)
    r[0, T - k:] = torch.tensor(rewards)
    return TrainingWindows(users=torch.tensor([0]), inputs=inputs, targets=targets, rewards=r)


def test_sft_gradient_is_finite_with_padding(windows):
    assert (windows.targets == 0).any()  # padded positions are present
    loss, g = grads(sft_loss, tiny_policy(), windows, ctx_for(SFTParams()))
    assert math.isfinite(loss) and g.abs().sum() > 0


def test_exp_rw_sft_with_huge_lambda_equals_sft(windows):
    policy = tiny_policy()
    l_sft, g_sft = grads(sft_loss, policy, windows, ctx_for(SFTParams()))
    l_rw, g_rw = grads(exp_rw_sft_loss, policy, windows, ctx_for(ExpRwSFTParams(lam=1e9)))
    assert l_rw == pytest.approx(l_sft, rel=1e-6)
    torch.testing.assert_close(g_rw, g_sft, rtol=1e-5, atol=1e-7)


def test_exp_rw_sft_with_tiny_lambda_keeps_only_best_rewards(windows):
    policy = tiny_policy()
    best = windows.rewards[windows.targets != 0].max()
    assert ((windows.rewards == best) & (windows.targets != 0)).sum() < (windows.targets != 0).sum()
    only_best = TrainingWindows(windows.users, windows.inputs,
                                torch.where(windows.rewards == best, windows.targets, 0), windows.rewards)
    _, g_best = grads(sft_loss, policy, only_best, ctx_for(SFTParams()))
    _, g_rw = grads(exp_rw_sft_loss, policy, windows, ctx_for(ExpRwSFTParams(lam=1e-3)))
    _, g_all = grads(sft_loss, policy, windows, ctx_for(SFTParams()))
    torch.testing.assert_close(g_rw, g_best, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(g_rw, g_all, rtol=1e-2)


def test_ess_and_weights_by_hand():
    # rewards 0, 0, ln 2 with lambda 1 -> weights 1, 1, 2 -> ESS = 4^2 / 6 / 3
    loss, tele = exp_rw_sft_loss(tiny_policy(), one_window([0.0, 0.0, math.log(2)]), ctx_for(ExpRwSFTParams()))
    assert tele["ess"] == pytest.approx(16 / 18, rel=1e-5)
    assert tele["max_weight"] == pytest.approx(2.0, rel=1e-5)
    assert tele["mean_weight"] == pytest.approx(4 / 3, rel=1e-5)
    assert tele["weighted_nll"] == pytest.approx(loss.item())
    _, tele = exp_rw_sft_loss(tiny_policy(), one_window([0.3, 0.3, 0.3]), ctx_for(ExpRwSFTParams()))
    assert tele["ess"] == pytest.approx(1.0)


def test_w_max_clips_weights_by_hand():
    policy, batch = tiny_policy(), one_window([0.0, 2.0])
    params = ExpRwSFTParams(lam=1.0, normalization="none", w_max=2.0)
    loss, tele = exp_rw_sft_loss(policy, batch, ctx_for(params))
    nll, mask = target_nll(policy, batch)
    nll0, nll1 = nll[mask].tolist()
    assert loss.item() == pytest.approx((1.0 * nll0 + 2.0 * nll1) / 2, rel=1e-5)  # not e^2 = 7.39
    assert tele["max_weight"] == pytest.approx(2.0)


def test_normalization_none_overflow_is_reported():
    with pytest.raises(FloatingPointError, match="overflow"):
        exp_rw_sft_loss(tiny_policy(), one_window([1.0, 0.0]), ctx_for(ExpRwSFTParams(lam=1e-3, normalization="none")))


def test_user_mean_baseline_uses_train_rewards_only():
    df = pd.DataFrame({"user_idx": [0, 0, 0, 0, 2, 2, 2], "item_idx": [1, 2, 3, 4, 1, 2, 3],
                       "reward": [1.0, 0.0, 0.5, -1.0, -1.0, -0.5, 1.0],
                       "split": ["train", "train", "train", "valid", "train", "train", "test"]})
    torch.testing.assert_close(user_mean_rewards(df), torch.tensor([0.5, 0.0, -0.75]))
    assert prepare(ExpRwSFTParams(baseline=False), df) == {}


def test_baseline_turns_rewards_into_advantages():
    # both targets sit exactly at the user's mean reward: every advantage is 0 -> uniform weights = sft
    policy, batch = tiny_policy(), one_window([0.5, 0.5])
    state = {"user_mean_reward": torch.tensor([0.5])}
    loss_b, tele_b = exp_rw_sft_loss(policy, batch, ctx_for(ExpRwSFTParams(lam=0.1, baseline=True), state))
    assert tele_b["max_weight"] == pytest.approx(1.0) and tele_b["ess"] == pytest.approx(1.0)
    assert loss_b.item() == pytest.approx(sft_loss(policy, batch, None)[0].item(), rel=1e-6)
    batch = one_window([1.0, 0.0])  # advantages +0.5 / -0.5 with lambda 0.1 -> weights e^5, e^-5
    _, tele = exp_rw_sft_loss(policy, batch, ctx_for(ExpRwSFTParams(lam=0.1, baseline=True), state))
    assert tele["max_weight"] == pytest.approx(math.exp(5.0), rel=1e-4)
    assert tele["ess"] == pytest.approx((math.exp(5) + math.exp(-5)) ** 2 / (math.exp(10) + math.exp(-10)) / 2,
                                        rel=1e-4)


@pytest.mark.parametrize("method, params", [("sft", {}), ("exp_rw_sft", {"lambda": 0.5}),
                                            ("exp_rw_sft", {"baseline": True, "w_max": 3.0})])
def test_each_method_lowers_its_loss_and_moves_weights(interactions, method, params):
    start = tiny_policy()
    before = copy.deepcopy(start.state_dict())
    rows = []
    cfg = PostTrainConfig(steps=40, batch_size=8, lr=1e-2, eval_every=10, method_params=params)
    result = post_train(method, start, interactions, cfg, callback=rows.append, device="cpu")
    assert rows == result.history and [r["step"] for r in rows] == [0, 10, 20, 30, 40]
    assert rows[-1]["loss"] < rows[1]["loss"]
    assert rows[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl_to_reference"] > 0
    for name, tensor in start.state_dict().items():  # the pretrained policy is untouched
        assert torch.equal(tensor, before[name]), name
    moved = sum((p - start.state_dict()[k]).abs().sum().item() for k, p in result.policy.state_dict().items())
    assert moved > 0
    if method == "exp_rw_sft":
        assert {"nll", "weighted_nll", "ess", "mean_weight", "max_weight"} <= set(rows[-1])
        assert 0 < rows[-1]["ess"] <= 1


def test_post_train_keeps_best_valid_weights(interactions, pretrained, monkeypatch):
    """A loss that unlearns the data: valid NDCG falls, so the first trained evaluation must be kept."""
    def unlearn(policy, batch, ctx):
        loss, _ = sft_loss(policy, batch, ctx)
        return -loss, {"nll": loss.item()}

    monkeypatch.setitem(METHODS, "unlearn", PostTrainingMethod("unlearn", SFTParams, unlearn))
    cfg = PostTrainConfig(steps=20, batch_size=8, lr=1e-2, eval_every=5)
    result = post_train("unlearn", pretrained, interactions, cfg, device="cpu")
    trained = [r for r in result.history if r["step"] > 0]
    best = max(trained, key=lambda r: r["valid_ndcg@10"])
    assert (result.best_step, result.best_valid_ndcg10) == (best["step"], best["valid_ndcg@10"])
    assert trained[-1]["valid_ndcg@10"] < result.best_valid_ndcg10  # selection mattered
    valid = eval_examples(build_user_sequences(interactions), "valid", 8)
    assert ndcg(target_ranks(result.policy, valid), 10).mean() == pytest.approx(result.best_valid_ndcg10)


def test_patience_ends_the_run_once_the_selection_is_settled(interactions, pretrained, monkeypatch):
    """The unlearning loss: after the first check nothing improves, so patience 2 stops two checks later, with
    the first check's weights; without patience the whole budget runs."""
    def unlearn(policy, batch, ctx):
        loss, _ = sft_loss(policy, batch, ctx)
        return -loss, {"nll": loss.item()}

    monkeypatch.setitem(METHODS, "unlearn", PostTrainingMethod("unlearn", SFTParams, unlearn))
    cfg = PostTrainConfig(steps=40, batch_size=8, lr=1e-2, eval_every=5, patience=2)
    stopped = post_train("unlearn", pretrained, interactions, cfg, device="cpu")
    assert [r["step"] for r in stopped.history] == [0, 5, 10, 15] and stopped.steps == 15
    assert stopped.best_step == 5 and stopped.stopped_by == "patience"
    whole = post_train("unlearn", pretrained, interactions, dataclasses.replace(cfg, patience=None), device="cpu")
    assert whole.steps == 40 and whole.history[:4] == stopped.history[:4] and whole.best_step == 5
    with pytest.raises(ValueError, match="PostTrainConfig.patience must be >= 1 or None, got 0"):
        PostTrainConfig(patience=0)


def test_a_collapsed_method_stops_at_its_first_check_under_the_ratio_of_the_start(interactions, pretrained,
                                                                                   monkeypatch):
    """The unlearning loss collapses: the run ends at the first check whose valid NDCG@10 is under half the
    pretrained start's, with the best check up to there; plain SFT never collapses and runs its whole budget."""
    def unlearn(policy, batch, ctx):
        loss, _ = sft_loss(policy, batch, ctx)
        return -loss, {"nll": loss.item()}

    monkeypatch.setitem(METHODS, "unlearn", PostTrainingMethod("unlearn", SFTParams, unlearn))
    cfg = PostTrainConfig(steps=40, batch_size=8, lr=1e-2, eval_every=5, collapse_ratio=0.5)
    whole = post_train("unlearn", pretrained, interactions, dataclasses.replace(cfg, collapse_ratio=None),
                       device="cpu")
    start = whole.history[0]["valid_ndcg@10"]
    first_collapse = next(r["step"] for r in whole.history[1:] if r["valid_ndcg@10"] < 0.5 * start)
    assert first_collapse < 40  # the loss does collapse within the budget
    stopped = post_train("unlearn", pretrained, interactions, cfg, device="cpu")
    assert stopped.steps == first_collapse and stopped.history == whole.history[:len(stopped.history)]
    assert (stopped.stopped_by, whole.stopped_by) == ("collapse", "budget")
    best = max(stopped.history[1:], key=lambda r: r["valid_ndcg@10"])
    assert stopped.best_step == best["step"]
    healthy = post_train("sft", pretrained, interactions, cfg, device="cpu")
    assert healthy.steps == 40 and min(r["valid_ndcg@10"] for r in healthy.history) >= 0.5 * start
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"PostTrainConfig.collapse_ratio must be in \\(0, 1\\) or None, got {bad}"):
            PostTrainConfig(collapse_ratio=bad)


def test_post_train_is_seeded(interactions):
    cfg = PostTrainConfig(steps=6, batch_size=8, lr=1e-2, eval_every=3, method_params={"lambda": 0.3})
    a = post_train("exp_rw_sft", tiny_policy(), interactions, cfg, device="cpu").history
    b = post_train("exp_rw_sft", tiny_policy(), interactions, cfg, device="cpu").history
    assert a == b


def test_unknown_method_and_knobs_rejected(interactions):
    with pytest.raises(ValueError, match=r"unknown post-training method 'ppo_x'.*\['adagrpo', 'dpo', 'exp_rw_sft', "
                                         r"'grpo', 'ips', 'nll_grpo', 'ppo', 'sft'\]"):
        get_method("ppo_x")
    with pytest.raises(ValueError, match="unknown post-training method"):
        post_train("ppo_x", tiny_policy(), interactions, PostTrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"unknown parameter 'temperature' for post-training method 'exp_rw_sft'"):
        post_train("exp_rw_sft", tiny_policy(), interactions, PostTrainConfig(method_params={"temperature": 2}))
    with pytest.raises(ValueError, match="unknown parameter 'lambda' for post-training method 'sft'"):
        get_method("sft").parse_params({"lambda": 1.0})
    with pytest.raises(ValueError, match="normalization"):
        get_method("exp_rw_sft").parse_params({"normalization": "softmax"})
    with pytest.raises(ValueError, match=r"parameter 'lambda' of post-training method 'exp_rw_sft': Input should be "
                                         r"greater than 0, got 0"):
        get_method("exp_rw_sft").parse_params({"lambda": 0})
    with pytest.raises(ValueError, match="given twice"):
        get_method("exp_rw_sft").parse_params({"lambda": 1.0, "lam": 2.0})
    assert get_method("exp_rw_sft").parse_params({"lambda": 0.1}).lam == 0.1
    assert set(registry.METHODS) >= {"sft", "exp_rw_sft", "ips", "dpo", "ppo", "grpo", "nll_grpo", "adagrpo"}


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="steps"):
        PostTrainConfig(steps=0)


def test_the_one_pass_valid_check_gives_the_separate_measurements_exactly(interactions, pretrained):
    """A valid check scores the policy once and the reference once per run; its row must equal the KL and the
    metrics measured separately, so selection and the reported KL do not change with the shortcut."""
    valid = eval_examples(build_user_sequences(interactions), "valid", max_len=8)
    tokens, reference, cpu = AtomicItems(), tiny_policy(seed=3), torch.device("cpu")
    check = tokens.valid_check(reference, valid, cpu)
    for policy in (pretrained, tiny_policy(seed=4)):
        separate = {"kl_to_reference": tokens.kl_to_reference(policy, reference, valid.history, cpu),
                    **tokens.evaluate(policy, valid, cpu)}
        assert check(policy) == separate
    assert check(pretrained)["kl_to_reference"] > 0 and check(pretrained)["valid_ndcg@10"] > 0


def test_cpu_bf16_post_trains_under_autocast_and_keeps_fp32_weights(interactions, pretrained):
    """`PostTrainConfig.cpu_bf16` (what the chain sets where the CPU multiplies bf16): the steps run under autocast,
    so the losses differ from fp32 by bf16 rounding only, and the stored weights stay fp32."""
    config = PostTrainConfig(steps=10, batch_size=8, lr=1e-3, eval_every=5, method_params={"lambda": 0.5})
    fp32 = post_train("exp_rw_sft", pretrained, interactions, config, device="cpu")
    bf16 = post_train("exp_rw_sft", pretrained, interactions, dataclasses.replace(config, cpu_bf16=True), device="cpu")
    assert bf16.history[1]["loss"] != fp32.history[1]["loss"]  # the flag took effect: bf16 matmuls
    assert bf16.history[1]["loss"] == pytest.approx(fp32.history[1]["loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.policy.parameters())
