"""The ranker reward model: shapes, padding candidates, learning a user x item pattern, baselines."""
import numpy as np
import pandas as pd
import pytest
import torch

from recmodels.storage.checkpoints import load_checkpoint, save_checkpoint
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.training.ranker_training import RankerTrainConfig, baseline_rmses, train_event_histories, train_ranker
from recmodels.data.sequences import build_user_sequences, eval_examples

N_ITEMS = 20


def genre_interactions(n_users=60, length=15, seed=0) -> pd.DataFrame:
    """Items have one of 4 genres (item % 4); a user rates items of their favourite genre +1, others -0.5."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        favourite = u % 4
        for t, item in enumerate(rng.permutation(N_ITEMS)[:length] + 1):
            reward = 1.0 if item % 4 == favourite else -0.5
            rows.append((u, item, 100 * u + t, reward + rng.normal(0, 0.1)))
    df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "reward"])
    df = df.astype({"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "reward": "float32"})
    rank_from_end = df.groupby("user_idx").cumcount(ascending=False)
    df["split"] = np.where(rank_from_end == 0, "test", np.where(rank_from_end == 1, "valid", "train"))
    return df


def tiny_ranker(seed=0):
    torch.manual_seed(seed)
    return RewardRanker(RankerConfig(vocab_size=N_ITEMS + 1, max_len=6, d_model=8, global_mean=0.2))


def test_shapes_and_finite_score_for_padding_candidate():
    ranker = tiny_ranker().eval()
    history = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0]])
    rewards = torch.tensor([[0, 0, 0, 1.0, -0.5, 1.0], [0.0] * 6])
    candidates = torch.tensor([[4, 5, 0], [0, 7, 8]])
    r_hat, loss = ranker(history, rewards, candidates, torch.tensor([[1.0, -1.0, 9.0], [9.0, 0.5, 0.5]]))
    assert r_hat.shape == (2, 3) and torch.isfinite(r_hat).all()
    assert r_hat[1, 0].item() == pytest.approx(0.2)  # empty history, padding candidate: the global mean
    # the loss ignores padding candidates (their target 9.0 would dominate it)
    expected = ((r_hat[0, :2] - torch.tensor([1.0, -1.0])) ** 2).sum() + ((r_hat[1, 1:] - 0.5) ** 2).sum()
    assert loss.item() == pytest.approx(expected.item() / 4, rel=1e-5)
    assert ranker(history, rewards, candidates)[1] is None


def test_mismatched_shapes_are_rejected():
    ranker = tiny_ranker()
    with pytest.raises(ValueError, match="history_rewards"):
        ranker(torch.ones(2, 6, dtype=torch.long), torch.ones(2, 5), torch.ones(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="candidates must be"):
        ranker(torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6), torch.ones(3, 1, dtype=torch.long))


def test_training_events_carry_the_history_before_each_event():
    df = genre_interactions(n_users=2, length=5)
    events = train_event_histories(df)
    assert len(events.positions) == 6  # 3 train events per user
    hist, hist_r, item, reward = events.batch(torch.tensor([2, 3]), max_len=4)  # user 0's third, user 1's first
    items = df["item_idx"].to_numpy()
    np.testing.assert_array_equal(hist[0].numpy(), [0, 0, items[0], items[1]])
    np.testing.assert_array_equal(hist[1].numpy(), [0, 0, 0, 0])  # user 1 has no history yet
    assert item[:, 0].tolist() == [items[2], items[5]]
    assert reward[0, 0] == pytest.approx(df["reward"].iloc[2]) and hist_r[1].abs().sum() == 0


def test_baselines_on_a_hand_made_case():
    df = pd.DataFrame({"user_idx": [0, 0, 0, 1, 1, 1], "item_idx": [1, 2, 3, 1, 3, 4],
                       "reward": [1.0, 0.0, 0.5, -1.0, 0.5, 0.0],
                       "split": ["train", "valid", "test", "train", "valid", "test"]})
    valid = eval_examples(build_user_sequences(df), "valid", max_len=4)
    got = baseline_rmses(df, valid)
    # train: (u0, i1, 1.0), (u1, i1, -1.0): global mean 0, item 1 mean 0, users' means 1 and -1
    # valid: (u0, i2, 0.0), (u1, i3, 0.5); items 2 and 3 unseen -> global mean
    assert got["global_mean_rmse"] == pytest.approx(np.sqrt((0 + 0.25) / 2))
    assert got["item_mean_rmse"] == pytest.approx(np.sqrt((0 + 0.25) / 2))
    assert got["user_mean_rmse"] == pytest.approx(np.sqrt((1.0 + 2.25) / 2))


def test_training_lowers_mse_and_beats_the_item_mean_baseline():
    df = genre_interactions()
    rows = []
    cfg = RankerTrainConfig(epochs=40, batch_size=64, lr=3e-2, weight_decay=0.0, patience=40, max_len=16,
                            d_model=8, dropout=0.0)
    result = train_ranker(df, N_ITEMS, cfg, callback=rows.append, device="cpu")
    assert rows == result.history and set(rows[0]) == {"epoch", "train_mse", "valid_rmse"}
    assert result.history[-1]["train_mse"] < 0.5 * result.history[0]["train_mse"]
    assert result.valid_rmse == min(r["valid_rmse"] for r in result.history)
    assert result.valid_rmse < 0.7 * result.baselines["item_mean_rmse"]
    assert result.valid_rmse < 0.7 * result.baselines["user_mean_rmse"]
    assert result.config.global_mean == pytest.approx(df[df["split"] == "train"]["reward"].mean(), abs=1e-5)


def test_checkpoint_round_trip_and_seed_determinism(tmp_path):
    df = genre_interactions(n_users=20)
    cfg = RankerTrainConfig(epochs=2, batch_size=32, seed=5, max_len=8, d_model=8)
    first, second = (train_ranker(df, N_ITEMS, cfg, device="cpu") for _ in range(2))
    assert first.history == second.history
    other = train_ranker(df, N_ITEMS, RankerTrainConfig(**{**vars(cfg), "seed": 6}), device="cpu")
    assert other.history != first.history

    path = save_checkpoint(tmp_path / "ranker.pt", first.ranker, first.config)
    payload = load_checkpoint(path)
    fresh = RewardRanker(RankerConfig(**payload["config"]))
    fresh.load_state_dict(payload["state_dict"])
    fresh.eval()
    valid = eval_examples(build_user_sequences(df), "valid", max_len=8)
    args = (valid.history, valid.history_rewards, valid.targets[:, None])
    with torch.no_grad():
        torch.testing.assert_close(fresh(*args)[0], first.ranker(*args)[0])


def test_bad_input_is_rejected_with_the_reason():
    df = genre_interactions(n_users=4)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['reward'\]"):
        train_ranker(df.drop(columns="reward"), N_ITEMS)
    with pytest.raises(ValueError, match="RankerTrainConfig.batch_size must be >= 1"):
        train_ranker(df, N_ITEMS, RankerTrainConfig(batch_size=0))
