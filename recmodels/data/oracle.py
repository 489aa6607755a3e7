"""The simulator's ground truth: every user's true expected reward for every item (docs/design.md §5, §6).

True mean reward on the reward scale r = (rating - 3) / 2:

    mu(u, i) = tanh(affinity_scale * (p_u . q_i + b_u + b_i))        in (-1, 1)

and on the rating scale 3 + 2 * mu. Users and items are keyed by the original `user_id` /
`item_id` strings of the raw logs. The oracle is stored as plain arrays: `to_dict()` (lists, JSON
friendly) or `save(path)` (an `.npz` file read back without pickle).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ARRAY_KEYS = ("user_ids", "item_ids", "user_vectors", "item_vectors", "user_bias", "item_bias")
RATING_CENTER, RATING_SCALE = 3.0, 2.0  # rating = 3 + 2 * reward
CHUNK_ENTRIES = 2_000_000  # users x items scored at once by the list methods


@dataclass
class Oracle:
    user_ids: np.ndarray  # [U] str
    item_ids: np.ndarray  # [I] str
    user_vectors: np.ndarray  # [U, d] p_u
    item_vectors: np.ndarray  # [I, d] q_i
    user_bias: np.ndarray  # [U] b_u
    item_bias: np.ndarray  # [I] b_i
    affinity_scale: float

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids).astype(str)
        self.item_ids = np.asarray(self.item_ids).astype(str)
        for name in ARRAY_KEYS[2:]:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        U, I = len(self.user_ids), len(self.item_ids)
        if self.user_vectors.ndim != 2 or self.item_vectors.ndim != 2 \
                or self.user_vectors.shape[1] != self.item_vectors.shape[1]:
            raise ValueError(f"oracle: user_vectors {self.user_vectors.shape} and item_vectors "
                             f"{self.item_vectors.shape} must be 2-D with the same latent dimension")
        expected = {"user_vectors": U, "user_bias": U, "item_vectors": I, "item_bias": I}
        for name, n in expected.items():
            if len(getattr(self, name)) != n:
                raise ValueError(f"oracle: {name} has {len(getattr(self, name))} rows, expected {n} "
                                 f"(one per {'user' if name.startswith('user') else 'item'} id)")
        for name, ids in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            dup = pd.Index(ids).duplicated()
            if dup.any():
                raise ValueError(f"oracle: {name} has duplicated ids (e.g. {str(ids[dup][0])!r})")
        self.affinity_scale = float(self.affinity_scale)
        self._users, self._items = pd.Index(self.user_ids), pd.Index(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # --- id lookup ---------------------------------------------------------------------------------

    def user_rows(self, user_ids) -> np.ndarray:
        """Row of each user id; KeyError naming the first unknown id."""
        return _rows(self._users, user_ids, "user")

    def item_rows(self, item_ids) -> np.ndarray:
        """Row of each item id; KeyError naming the first unknown id."""
        return _rows(self._items, item_ids, "item")

    # --- true rewards ------------------------------------------------------------------------------

    def reward_from_rows(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """mu for aligned integer rows: users [N], items [N] -> [N]."""
        logits = np.einsum("nd,nd->n", self.user_vectors[users], self.item_vectors[items])
        return np.tanh(self.affinity_scale * (logits + self.user_bias[users] + self.item_bias[items]))

    def reward_matrix(self, users: np.ndarray, items: np.ndarray | None = None) -> np.ndarray:
        """mu of every (user row, item row) pair: users [N], items [M] (default all) -> [N, M]."""
        items = np.arange(self.n_items) if items is None else np.asarray(items)
        logits = self.user_vectors[users] @ self.item_vectors[items].T
        logits += self.user_bias[users, None] + self.item_bias[None, items]
        return np.tanh(self.affinity_scale * logits)

    def true_reward(self, user_ids, item_ids) -> np.ndarray:
        """True expected reward mu(u, i) on the reward scale, one per (user_ids[n], item_ids[n]) pair."""
        users, items = self.user_rows(user_ids), self.item_rows(item_ids)
        if users.shape != items.shape:
            raise ValueError(f"true_reward: {len(users)} user ids but {len(items)} item ids; pass one per pair")
        return self.reward_from_rows(users, items)

    def list_true_reward(self, user_ids, lists_of_item_ids) -> np.ndarray:
        """Mean true reward of each user's list: user_ids [N], lists [N] of item-id lists (any length >= 1)."""
        lists = [np.asarray(items).astype(str).ravel() for items in lists_of_item_ids]
        users = self.user_rows(user_ids)
        if len(lists) != len(users):
            raise ValueError(f"list_true_reward: {len(users)} user ids but {len(lists)} lists")
        lengths = np.array([len(items) for items in lists], dtype=np.int64)
        if len(lengths) and lengths.min() == 0:
            empty = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"list_true_reward: the list of user {str(self.user_ids[users[empty]])!r} is empty")
        flat = np.concatenate(lists) if lists else np.empty(0, dtype=str)
        rewards = self.reward_from_rows(np.repeat(users, lengths), self.item_rows(flat))
        owner = np.repeat(np.arange(len(users)), lengths)
        return np.bincount(owner, weights=rewards, minlength=len(users)) / np.maximum(lengths, 1)

    def best_lists(self, user_ids, k: int, exclude=None, candidates: Sequence[str] | None = None
                   ) -> tuple[list[list[str]], np.ndarray]:
        """Each user's best top-k list and its mean true reward: (ids [N][k], reward [N]).

        `exclude`: items a user may not get (e.g. everything already seen), as a mapping
        user_id -> item ids (users absent exclude nothing) or a sequence aligned with user_ids.
        `candidates`: the items any list may hold (default: every item, e.g. pass the catalog a
        policy can emit). ValueError when a user has fewer than k items left.
        """
        if int(k) < 1:
            raise ValueError(f"best_lists: k must be >= 1, got {k}")
        k = int(k)
        users = self.user_rows(user_ids)
        pool = np.arange(self.n_items) if candidates is None else np.unique(self.item_rows(candidates))
        position = np.full(self.n_items, -1, dtype=np.int64)
        position[pool] = np.arange(len(pool))
        excluded = _exclusions(exclude, user_ids, len(users), self)
        chunk = max(1, CHUNK_ENTRIES // max(len(pool), 1))
        best_rows, best_reward = [], np.empty(len(users))
        for s in range(0, len(users), chunk):
            rewards = self.reward_matrix(users[s:s + chunk], pool)  # [n, |pool|]
            for j, rows in enumerate(excluded[s:s + chunk]):
                cols = position[rows]
                rewards[j, cols[cols >= 0]] = -np.inf
            left = np.isfinite(rewards).sum(axis=1)
            if (left < k).any():
                bad = s + int(np.flatnonzero(left < k)[0])
                raise ValueError(f"best_lists: user {str(self.user_ids[users[bad]])!r} has only "
                                 f"{int(left[bad - s])} candidate items left, fewer than k={k}")
            top = np.argpartition(-rewards, k - 1, axis=1)[:, :k]
            values = np.take_along_axis(rewards, top, axis=1)
            order = np.argsort(-values, axis=1, kind="stable")
            best_rows.append(pool[np.take_along_axis(top, order, axis=1)])
            best_reward[s:s + chunk] = values.mean(axis=1)
        rows = np.concatenate(best_rows) if best_rows else np.empty((0, k), dtype=np.int64)
        return [list(self.item_ids[r]) for r in rows], best_reward

    def best_list_reward(self, user_ids, k: int, exclude=None,
                         candidates: Sequence[str] | None = None) -> np.ndarray:
        """Mean true reward of each user's best possible top-k list: the upper bound for any policy."""
        return self.best_lists(user_ids, k, exclude=exclude, candidates=candidates)[1]

    # --- storage -----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain Python lists and floats (JSON friendly)."""
        out = {name: getattr(self, name).tolist() for name in ARRAY_KEYS}
        out["affinity_scale"] = self.affinity_scale
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Oracle:
        missing = [k for k in ARRAY_KEYS + ("affinity_scale",) if k not in data]
        if missing:
            raise ValueError(f"oracle dict is missing keys {missing} (keys present: {sorted(data)})")
        return cls(**{k: data[k] for k in ARRAY_KEYS}, affinity_scale=float(data["affinity_scale"]))

    def save(self, path: str | Path) -> Path:
        """Write the oracle as an `.npz` file at exactly `path` (no pickled objects)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in ARRAY_KEYS}
        with open(path, "wb") as fh:
            np.savez(fh, **arrays, affinity_scale=np.float64(self.affinity_scale))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Oracle:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"oracle file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as exc:  # not an npz, truncated, holds pickled objects...
            raise ValueError(f"oracle file {path} is corrupt or unreadable: {exc}") from exc
        try:
            return cls.from_dict(arrays)
        except ValueError as exc:
            raise ValueError(f"oracle file {path}: {exc}") from exc


def _rows(index: pd.Index, ids, kind: str) -> np.ndarray:
    ids = np.asarray(ids if not isinstance(ids, str) else [ids]).astype(str).ravel()
    rows = index.get_indexer(ids)
    if (rows < 0).any():
        bad = ids[rows < 0]
        raise KeyError(f"oracle: unknown {kind} id {str(bad[0])!r} ({len(bad)} unknown of {len(ids)})")
    return rows


def _exclusions(exclude, user_ids, n_users: int, oracle: Oracle) -> list[np.ndarray]:
    """Item rows to exclude per user, aligned with user_ids."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * n_users
    if isinstance(exclude, Mapping):
        ids = np.asarray(user_ids if not isinstance(user_ids, str) else [user_ids]).astype(str).ravel()
        per_user: list[Iterable] = [exclude.get(u, ()) for u in ids]
    else:
        per_user = list(exclude)
        if len(per_user) != n_users:
            raise ValueError(f"best_lists: exclude has {len(per_user)} entries but there are {n_users} users")
    out = []
    for items in per_user:
        items = np.asarray(list(items)).astype(str)
        out.append(oracle.item_rows(items) if len(items) else np.empty(0, dtype=np.int64))
    return out
