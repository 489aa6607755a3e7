"""Per-user chronological sequences and the tensors that models train and evaluate on.

Everything here reads the `interactions` table (docs/design.md §2): one row per event with
`user_idx`, `item_idx` (1..n_items, 0 is padding), `reward` and `split`, already sorted
chronologically within each user, and the optional `propensity` (the logging policy's probability
of each logged item). Histories are left-padded with 0 to `max_len`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


@dataclass
class UserSequences:
    """Chronological item / reward / split arrays for every user."""

    users: np.ndarray  # [U] user_idx
    items: list[np.ndarray]  # per user, int64 item_idx in time order
    rewards: list[np.ndarray]  # per user, float32
    splits: list[np.ndarray]  # per user, int8 codes of SPLIT_CODES
    propensities: list[np.ndarray] | None = None  # per user, float32, when the table has `propensity`


def build_user_sequences(interactions: pd.DataFrame) -> UserSequences:
    """Group the interactions table by user, keeping its (chronological) row order."""
    has_propensity = "propensity" in interactions.columns
    df = interactions[["user_idx", "item_idx", "reward", "split"] + (["propensity"] if has_propensity else [])]
    codes = df["split"].astype(str).map(SPLIT_CODES).to_numpy(np.int8)
    users, starts = np.unique(df["user_idx"].to_numpy(), return_index=True)
    order = np.argsort(starts)
    users, starts = users[order], starts[order]
    ends = np.append(starts[1:], len(df))
    if not (np.diff(df["user_idx"].to_numpy()[starts]) != 0).all() and len(users) > 1:
        raise ValueError("interactions must be grouped by user_idx (sorted within users by time)")
    items = df["item_idx"].to_numpy(np.int64)
    rewards = df["reward"].to_numpy(np.float32)
    propensities = None
    if has_propensity:
        p = df["propensity"].to_numpy(np.float32)
        bad = ~(p > 0) | ~(p <= 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"interactions column 'propensity' must lie in (0, 1]; row {row} "
                             f"(user_idx {int(df['user_idx'].iloc[row])}) has {p[row]}")
        propensities = [p[s:e] for s, e in zip(starts, ends)]
    return UserSequences(
        users=users,
        items=[items[s:e] for s, e in zip(starts, ends)],
        rewards=[rewards[s:e] for s, e in zip(starts, ends)],
        splits=[codes[s:e] for s, e in zip(starts, ends)],
        propensities=propensities,
    )


@dataclass
class TrainingWindows:
    """Next-item training windows: position t of `inputs` predicts `targets[t]` (0 = ignore)."""

    users: torch.Tensor  # [N] user_idx of each window
    inputs: torch.Tensor  # [N, T] item_idx, left-padded with 0
    targets: torch.Tensor  # [N, T] next item_idx, 0 where there is nothing to predict
    rewards: torch.Tensor  # [N, T] observed reward of each target (0 where target is 0)
    propensities: torch.Tensor | None = None  # [N, T] logging propensity of each target (1 where target is 0)

    def __len__(self) -> int:
        return self.inputs.shape[0]


def training_windows(seqs: UserSequences, max_len: int, stride: int | None = None) -> TrainingWindows:
    """Cut each user's train-split events into windows of `max_len` inputs.

    Every train event but the first is a prediction target exactly once: windows of length
    `max_len + 1` are taken from the end backwards with step `stride` (default `max_len`).
    `propensities` is filled when the sequences carry them.
    """
    stride = stride or max_len
    rows_u, rows_x, rows_y, rows_r, rows_p = [], [], [], [], []
    all_props = seqs.propensities if seqs.propensities is not None else [None] * len(seqs.users)
    for user, items, rewards, splits, props in zip(seqs.users, seqs.items, seqs.rewards, seqs.splits, all_props):
        train = splits == SPLIT_CODES["train"]
        it, rw = items[train], rewards[train]
        pr = props[train] if props is not None else None
        n = len(it)
        if n < 2:
            continue
        end = n
        first_target = n  # targets already covered start here
        while end > 1:
            start = max(0, end - max_len - 1)
            seg_items, seg_rewards = it[start:end], rw[start:end]
            x = np.zeros(max_len, np.int64)
            y = np.zeros(max_len, np.int64)
            r = np.zeros(max_len, np.float32)
            k = len(seg_items) - 1
            x[max_len - k:] = seg_items[:-1]
            y[max_len - k:] = seg_items[1:]
            r[max_len - k:] = seg_rewards[1:]
            # targets at absolute positions start+1 .. end-1; keep only those not yet covered
            covered = np.arange(start + 1, end) >= first_target
            y[max_len - k:][covered] = 0
            r[max_len - k:][covered] = 0.0
            if pr is not None:
                p = np.ones(max_len, np.float32)
                p[max_len - k:] = pr[start + 1:end]
                p[max_len - k:][covered] = 1.0
                rows_p.append(p)
            rows_u.append(user)
            rows_x.append(x)
            rows_y.append(y)
            rows_r.append(r)
            first_target = start + 1
            if start == 0:
                break
            end = max(end - stride, 1)
    if not rows_x:
        raise ValueError("no user has two or more train interactions: nothing to train on")
    return TrainingWindows(
        users=torch.as_tensor(np.array(rows_u, np.int64)),
        inputs=torch.as_tensor(np.stack(rows_x)),
        targets=torch.as_tensor(np.stack(rows_y)),
        rewards=torch.as_tensor(np.stack(rows_r)),
        propensities=torch.as_tensor(np.stack(rows_p)) if seqs.propensities is not None else None,
    )


@dataclass
class EvalExamples:
    """One held-out event per user: the history before it and the item to rank."""

    users: torch.Tensor  # [N] user_idx
    history: torch.Tensor  # [N, T] last max_len items before the target, left-padded with 0
    history_rewards: torch.Tensor  # [N, T] their observed rewards
    targets: torch.Tensor  # [N] held-out item_idx
    target_rewards: torch.Tensor  # [N] its observed reward
    seen: list[np.ndarray]  # per example, every item in the full history (masked when ranking)

    def __len__(self) -> int:
        return self.targets.shape[0]


def eval_examples(seqs: UserSequences, split: str, max_len: int) -> EvalExamples:
    """The `split` ("valid" or "test") event of each user with its whole history before it."""
    code = SPLIT_CODES[split]
    users, hist, hist_r, targets, target_r, seen = [], [], [], [], [], []
    for user, items, rewards, splits in zip(seqs.users, seqs.items, seqs.rewards, seqs.splits):
        pos = np.flatnonzero(splits == code)
        if len(pos) == 0:
            continue
        p = int(pos[0])
        h, hr = items[:p][-max_len:], rewards[:p][-max_len:]
        x = np.zeros(max_len, np.int64)
        xr = np.zeros(max_len, np.float32)
        if len(h):
            x[-len(h):] = h
            xr[-len(h):] = hr
        users.append(user)
        hist.append(x)
        hist_r.append(xr)
        targets.append(items[p])
        target_r.append(rewards[p])
        seen.append(np.unique(items[:p]))
    if not users:
        raise ValueError(f"no user has a {split!r} interaction")
    return EvalExamples(
        users=torch.as_tensor(np.array(users, np.int64)),
        history=torch.as_tensor(np.stack(hist)),
        history_rewards=torch.as_tensor(np.stack(hist_r)),
        targets=torch.as_tensor(np.array(targets, np.int64)),
        target_rewards=torch.as_tensor(np.array(target_r, np.float32)),
        seen=seen,
    )
