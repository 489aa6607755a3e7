"""Training of the ranker reward model by MSE regression on logged rewards.

Training examples are every train-split event with the (up to `max_len`) events before it; the
validation examples are each user's `valid` event with its whole train history. Early stopping on
valid RMSE keeps the best weights. The naive baselines of docs/design.md §3 (global, item-mean and
user-mean reward, fitted on train rewards) are reported next to the model's RMSE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from recmodels.training.early_stopping import BestWeights
from recmodels.training.pretraining import check_interactions
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.runtime import default_device, seed_everything
from recmodels.data.sequences import SPLIT_CODES, EvalExamples, build_user_sequences, eval_examples


@dataclass
class RankerTrainConfig:
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.5
    patience: int = 4  # epochs without a lower valid RMSE before stopping
    seed: int = 0
    max_len: int = 50
    d_model: int = 16
    dropout: float = 0.1


@dataclass
class RankerResult:
    ranker: RewardRanker
    config: RankerConfig
    history: list[dict] = field(default_factory=list)
    valid_rmse: float = float("inf")
    baselines: dict[str, float] = field(default_factory=dict)


@dataclass
class EventHistories:
    """Every train event as (history before it, item, reward), histories cut on the fly per batch."""

    flat_items: torch.Tensor  # [E] all events of all users, chronological per user
    flat_rewards: torch.Tensor  # [E]
    user_start: torch.Tensor  # [E] flat index of the first event of the event's user
    positions: torch.Tensor  # [N] flat index of each training event

    def batch(self, idx: torch.Tensor, max_len: int):
        """idx [b] into `positions` -> history [b, T], history_rewards [b, T], item [b, 1], reward [b, 1]."""
        pos = self.positions[idx]
        window = pos[:, None] - max_len + torch.arange(max_len)  # [b, T] flat indices, left to right
        valid = window >= self.user_start[pos][:, None]
        window = window.clamp(min=0)
        history = torch.where(valid, self.flat_items[window], 0)
        rewards = torch.where(valid, self.flat_rewards[window], 0.0)
        return history, rewards, self.flat_items[pos][:, None], self.flat_rewards[pos][:, None]


def train_event_histories(interactions: pd.DataFrame) -> EventHistories:
    seqs = build_user_sequences(interactions)
    lengths = np.array([len(items) for items in seqs.items])
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    splits = np.concatenate(seqs.splits)
    return EventHistories(
        flat_items=torch.as_tensor(np.concatenate(seqs.items)),
        flat_rewards=torch.as_tensor(np.concatenate(seqs.rewards)),
        user_start=torch.as_tensor(starts),
        positions=torch.as_tensor(np.flatnonzero(splits == SPLIT_CODES["train"])),
    )


def baseline_rmses(interactions: pd.DataFrame, valid: EvalExamples) -> dict[str, float]:
    """RMSE on `valid` of the global-mean, item-mean and user-mean train reward (fallback: global mean)."""
    train = interactions[interactions["split"].astype(str) == "train"]
    mu = float(train["reward"].mean())
    item_mean = train.groupby("item_idx")["reward"].mean()
    user_mean = train.groupby("user_idx")["reward"].mean()
    truth = valid.target_rewards.numpy().astype(np.float64)
    preds = {
        "global_mean_rmse": np.full_like(truth, mu),
        "item_mean_rmse": item_mean.reindex(valid.targets.numpy()).fillna(mu).to_numpy(),
        "user_mean_rmse": user_mean.reindex(valid.users.numpy()).fillna(mu).to_numpy(),
    }
    return {name: float(np.sqrt(np.mean((p - truth) ** 2))) for name, p in preds.items()}


def valid_rmse(ranker: RewardRanker, valid: EvalExamples, device: torch.device, batch_size: int = 1024) -> float:
    ranker.eval()
    sq = 0.0
    with torch.no_grad():
        for s in range(0, len(valid), batch_size):
            rows = slice(s, s + batch_size)
            r_hat, _ = ranker(valid.history[rows].to(device), valid.history_rewards[rows].to(device),
                              valid.targets[rows, None].to(device))
            sq += float(((r_hat[:, 0].cpu() - valid.target_rewards[rows]) ** 2).sum())
    return float(np.sqrt(sq / len(valid)))


def train_ranker(interactions: pd.DataFrame, n_items: int, config: RankerTrainConfig | None = None,
                 callback: Callable[[dict], None] | None = None,
                 device: torch.device | str | None = None) -> RankerResult:
    """Fit a RewardRanker on train events; early-stop on valid RMSE and keep the best weights."""
    config = config or RankerTrainConfig()
    for name in ("epochs", "batch_size", "patience", "max_len"):
        if getattr(config, name) < 1:
            raise ValueError(f"RankerTrainConfig.{name} must be >= 1, got {getattr(config, name)}")
    check_interactions(interactions, n_items)
    device = torch.device(device) if device is not None else default_device()

    events = train_event_histories(interactions)
    if len(events.positions) == 0:
        raise ValueError("interactions has no train-split event: nothing to fit the ranker on")
    valid = eval_examples(build_user_sequences(interactions), "valid", config.max_len)
    mu = float(events.flat_rewards[events.positions].double().mean())
    model_cfg = RankerConfig(vocab_size=n_items + 1, max_len=config.max_len, d_model=config.d_model,
                             dropout=config.dropout, global_mean=mu)

    gen = seed_everything(config.seed)
    ranker = RewardRanker(model_cfg).to(device)
    optimizer = torch.optim.AdamW(ranker.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = RankerResult(ranker=ranker, config=model_cfg, baselines=baseline_rmses(interactions, valid))
    best = BestWeights(ranker, config.patience, minimize=True)
    for epoch in range(1, config.epochs + 1):
        ranker.train()
        total, count = 0.0, 0
        for idx in torch.randperm(len(events.positions), generator=gen).split(config.batch_size):
            hist, hist_r, item, reward = (t.to(device) for t in events.batch(idx, config.max_len))
            _, loss = ranker(hist, hist_r, item, reward)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        rmse = valid_rmse(ranker, valid, device)
        row = {"epoch": epoch, "train_mse": total / count, "valid_rmse": rmse}
        result.history.append(row)
        if callback is not None:
            callback(dict(row))
        if best.improved(rmse, result.valid_rmse):
            result.valid_rmse = rmse
        elif best.should_stop:
            break
    best.restore()
    return result
