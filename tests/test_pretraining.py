"""Pretraining: the loss falls and valid NDCG rises on a learnable pattern; early stopping; seeds."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import recmodels.training.pretraining as pretraining
from recmodels.evaluation.ranking import target_ranks
from recmodels.models.policy import SEEN_BIAS_SCALE, PolicyConfig
from recmodels.training.pretraining import PretrainConfig, pretrain_policy, window_nll
from recmodels.data.sequences import build_user_sequences, eval_examples

N_ITEMS = 40


def cyclic_interactions(n_users=30, length=12, seed=0) -> pd.DataFrame:
    """Each user walks the 40 items in a cycle with step 1 (even users) or 3 (odd users)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        step, item = 1 + 2 * (u % 2), int(rng.integers(N_ITEMS))
        for t in range(length):
            rows.append((u, item + 1, 1000 * u + t, 1.0 if u % 3 else -0.5))
            item = (item + step) % N_ITEMS
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "reward"])
    df = df.astype({"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "reward": "float32"})
    rank_from_end = df.groupby("user_idx").cumcount(ascending=False)
    df["split"] = np.where(rank_from_end == 0, "test", np.where(rank_from_end == 1, "valid", "train"))
    return df


TINY = PolicyConfig(vocab_size=N_ITEMS + 1, max_len=8, d_model=16, n_layers=1, n_heads=1, dropout=0.0)


def test_loss_falls_and_valid_ndcg_rises_on_a_learnable_pattern():
    df = cyclic_interactions()
    rows = []
    result = pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(epochs=20, batch_size=16, lr=1e-2, weight_decay=0.0,
                                                              patience=20), callback=rows.append, device="cpu")
    hist = result.history
    assert rows == hist and [r["epoch"] for r in hist] == list(range(1, 21))
    assert set(hist[0]) == {"epoch", "train_loss", "valid_hr@10", "valid_ndcg@10", "seconds", "sequences_per_s"}
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert result.best_valid_ndcg10 > 0.8 and result.best_valid_ndcg10 > hist[0]["valid_ndcg@10"] + 0.15
    # the returned weights are the best epoch's: re-ranking valid reproduces the best NDCG@10
    valid = eval_examples(build_user_sequences(df), "valid", TINY.max_len)
    ranks = target_ranks(result.policy, valid)
    assert np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0)) == pytest.approx(result.best_valid_ndcg10)
    assert not result.policy.training


def test_cpu_bf16_trains_under_autocast_and_learns_the_pattern_as_fp32_does():
    df = cyclic_interactions()
    config = PretrainConfig(epochs=20, batch_size=16, lr=1e-2, weight_decay=0.0, patience=20)
    fp32 = pretrain_policy(df, N_ITEMS, TINY, config, device="cpu")
    bf16 = pretrain_policy(df, N_ITEMS, TINY, replace(config, cpu_bf16=True), device="cpu")
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]  # the flag took effect: bf16 matmuls
    assert bf16.best_valid_ndcg10 > 0.8 and bf16.best_valid_ndcg10 == pytest.approx(fp32.best_valid_ndcg10, abs=0.1)
    assert next(bf16.policy.parameters()).dtype == torch.float32  # the weights stay fp32


def test_early_stopping_restores_the_best_weights(monkeypatch):
    scripted = iter([0.1, 0.5, 0.3, 0.2, 0.4, 0.9])
    snapshots = []

    def fake_evaluate(policy, examples, device, tokenization):
        snapshots.append({k: v.clone() for k, v in policy.state_dict().items()})
        return {"valid_hr@10": 0.0, "valid_ndcg@10": next(scripted)}

    monkeypatch.setattr(pretraining, "evaluate_valid", fake_evaluate)
    result = pretrain_policy(cyclic_interactions(), N_ITEMS, TINY,
                             PretrainConfig(epochs=6, batch_size=16, lr=1e-2, patience=3), device="cpu")
    assert len(result.history) == 5  # epochs 3, 4, 5 did not beat epoch 2: stop after epoch 5
    assert result.best_epoch == 2 and result.best_valid_ndcg10 == 0.5
    final = result.policy.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)


def test_eval_every_skips_validation_between_evaluations():
    result = pretrain_policy(cyclic_interactions(), N_ITEMS, TINY,
                             PretrainConfig(epochs=5, batch_size=32, eval_every=2), device="cpu")
    evaluated = [r["epoch"] for r in result.history if "valid_ndcg@10" in r]
    assert evaluated == [2, 4, 5]


def test_same_seed_same_numbers_other_seed_other_numbers():
    df = cyclic_interactions()
    cfg = PolicyConfig(**{**vars(TINY), "dropout": 0.2})
    runs = [pretrain_policy(df, N_ITEMS, cfg, PretrainConfig(epochs=2, batch_size=16, seed=s), device="cpu")
            for s in (3, 3, 4)]
    losses = [[r["train_loss"] for r in run.history] for run in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    w = [run.policy.tok_emb.weight for run in runs]
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_window_nll_equals_the_policy_loss():
    from recmodels.models.policy import GenerativePolicy

    torch.manual_seed(0)
    policy = GenerativePolicy(TINY).eval()
    x = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]])
    y = torch.tensor([[0, 0, 0, 2, 3, 4, 5, 6], [0, 8, 9, 10, 11, 12, 13, 14]])
    torch.testing.assert_close(window_nll(policy, x, y), policy(x, y)[1])


def test_label_smoothing_spreads_over_the_items_and_not_padding():
    """PyTorch's label smoothing over the real items (columns 1..V), finite although padding's logit is -inf."""
    from recmodels.models.policy import GenerativePolicy

    torch.manual_seed(0)
    policy = GenerativePolicy(TINY).eval()
    x = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13]])
    y = torch.tensor([[0, 0, 0, 2, 3, 4, 5, 6], [0, 8, 9, 10, 11, 12, 13, 14]])
    logits = policy.target_logits(x, y)
    expected = torch.nn.functional.cross_entropy(logits[:, 1:], y[y != 0] - 1, label_smoothing=0.2)
    torch.testing.assert_close(window_nll(policy, x, y, label_smoothing=0.2), expected)

    df = cyclic_interactions()
    smoothed = pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(epochs=2, batch_size=16, label_smoothing=0.1))
    plain = pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(epochs=2, batch_size=16))
    assert smoothed.history[0]["train_loss"] != plain.history[0]["train_loss"]  # the knob reaches the loss
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\), got 1.0"):
        pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(label_smoothing=1.0))
    with pytest.raises(ValueError, match="label_smoothing and distill_weight are both > 0"):
        pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(label_smoothing=0.1, distill_weight=0.5))


def test_bad_input_is_rejected_with_the_reason():
    df = cyclic_interactions()
    with pytest.raises(ValueError, match="missing column"):
        pretrain_policy(df.drop(columns="split"), N_ITEMS, TINY)
    with pytest.raises(ValueError, match=r"item_idx must lie in 1..n_items=10"):
        pretrain_policy(df, 10)
    with pytest.raises(ValueError, match="vocab_size=41 but n_items=50"):
        pretrain_policy(df, 50, TINY)
    with pytest.raises(ValueError, match="PretrainConfig.max_len=5 differs from PolicyConfig.max_len=8"):
        pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(max_len=5))


def test_warmup_then_cosine_schedule():
    cosine = PretrainConfig(epochs=10, lr=1e-3, warmup_epochs=2, schedule="cosine")
    factors = [pretraining.lr_factor(cosine, step, steps_per_epoch=5) for step in range(50)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup over 2 epochs
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1, abs=0.01)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then decays, never rises
    assert pretraining.lr_factor(PretrainConfig(), 123, steps_per_epoch=5) == 1.0  # the constant default
    with pytest.raises(ValueError, match="PretrainConfig.schedule must be one of"):
        pretrain_policy(cyclic_interactions(), N_ITEMS, TINY, PretrainConfig(epochs=1, schedule="linear"))


def test_the_seen_bias_learns_not_to_repeat_where_users_never_repeat():
    """Users here never consume an item twice: training turns the seen bias strongly negative."""
    result = pretrain_policy(cyclic_interactions(), N_ITEMS, replace(TINY, seen_bias=True),
                             PretrainConfig(epochs=10, batch_size=16, lr=1e-2, weight_decay=0.0, patience=10),
                             device="cpu")
    assert SEEN_BIAS_SCALE * result.policy.seen_logit.item() < -2.0


def test_rotary_positions_train_and_former_architectures_keep_the_resume_key_they_had():
    """A policy with rotary positions pretrains; adding the `positions` and `block` knobs left a former run's resumable
    state key as it was (the key below was computed before the knobs existed)."""
    from recmodels.tokenization.items import AtomicItems
    from recmodels.training.pretraining import pretrain_fingerprint
    from tests.synthetic import cyclic_interactions as synthetic_interactions

    rotary = replace(TINY, positions="rotary")
    result = pretrain_policy(cyclic_interactions(), N_ITEMS, rotary, PretrainConfig(epochs=3, batch_size=16))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]

    data = synthetic_interactions(n_users=10, n_items=N_ITEMS, events=6, rewards=(1.0,), seed=0)
    windows = torch.arange(16).view(2, 8)
    key = lambda cfg: pretrain_fingerprint(data, N_ITEMS, cfg, PretrainConfig(), AtomicItems(),  # noqa: E731
                                           windows, windows, torch.device("cpu"))
    assert key(TINY) == "a045fb8d4ffbc679b8e480cca2f6a8971c332a37d9a8adab9d8458883eb0b7c2"
    assert key(rotary) != key(TINY) != key(replace(TINY, block="hstu"))


def test_the_weight_average_is_what_is_evaluated_kept_and_resumed(monkeypatch, tmp_path):
    """With `ema_decay`, each evaluation ranks the exponential moving average of the weights after every optimizer
    step (the formula by hand), the best average is returned, training itself is unchanged, and a run stopped
    half-way resumes to the same average."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    df, decay = cyclic_interactions(), 0.7
    config = PretrainConfig(epochs=4, batch_size=16, lr=1e-2, patience=4, ema_decay=decay)
    trained, evaluated = [], []  # the parameters (in the optimizer's order) after each step; at each evaluation
    real_evaluate = pretraining.evaluate_valid

    def recording_evaluate(policy, examples, device, tokenization):
        evaluated.append([p.detach().clone() for p in policy.parameters()])
        return real_evaluate(policy, examples, device, tokenization)

    monkeypatch.setattr(pretraining, "evaluate_valid", recording_evaluate)
    handle = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: trained.append([p.detach().clone() for p in optimizer.param_groups[0]["params"]]))
    try:
        averaged = pretrain_policy(df, N_ITEMS, TINY, config, device="cpu")
    finally:
        handle.remove()
    assert len(evaluated) == 4 and len(trained) % 4 == 0
    steps_per_epoch, average = len(trained) // 4, trained[0]
    for t, weights in enumerate(trained[1:], start=2):
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
        if t % steps_per_epoch == 0:  # the end of an epoch: what was evaluated is the average by hand
            for got, want in zip(evaluated[t // steps_per_epoch - 1], average):
                torch.testing.assert_close(got, want)
    best = evaluated[averaged.best_epoch - 1]
    assert all(torch.equal(p, b) for p, b in zip(averaged.policy.parameters(), best))
    assert not all(torch.equal(p, w) for p, w in zip(averaged.policy.parameters(), trained[-1]))

    plain = pretrain_policy(df, N_ITEMS, TINY, replace(config, ema_decay=0.0), device="cpu")
    assert [r["train_loss"] for r in plain.history] == [r["train_loss"] for r in averaged.history]
    assert [r["valid_ndcg@10"] for r in plain.history] != [r["valid_ndcg@10"] for r in averaged.history]

    def stop_at_epoch_3(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # epoch 3 stops before its save: the state holds epochs 1-2
        pretrain_policy(df, N_ITEMS, TINY, config, device="cpu", resume_dir=tmp_path, callback=stop_at_epoch_3)
    resumed = pretrain_policy(df, N_ITEMS, TINY, config, device="cpu", resume_dir=tmp_path)
    assert resumed.resumed_from_epoch == 2
    assert [r["valid_ndcg@10"] for r in resumed.history] == [r["valid_ndcg@10"] for r in averaged.history]
    assert all(torch.equal(p, b) for p, b in zip(resumed.policy.parameters(), best))
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\), got 1.0"):
        pretrain_policy(df, N_ITEMS, TINY, replace(config, ema_decay=1.0))
