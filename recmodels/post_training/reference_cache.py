"""The reference policy's next-item log-probs, memoized per context: one cache for every method that needs pi_ref.

pi_ref (the pretrained policy) is frozen and runs in eval mode, so its next-item distribution is a
pure function of the context's history tokens. The cache is keyed by those tokens (the [T] row of
item ids, padding included), which makes it valid whichever window positions a method picks as
contexts and whichever batch a context shows up in: the same window's last position comes back
every epoch, and PPO's inner epochs re-read the same contexts.

Entries are the *unmasked* log-softmax over the vocabulary ([V] float32, padding -inf); callers
renormalize over their own mask with `rollouts.masked_log_probs`. Memory is bounded: one
preallocated [slots, V] table on the reference's device (`max_mib` MiB), least recently used
entries evicted first.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from recmodels.runtime import eval_mode


class ReferenceCache:
    def __init__(self, reference, max_mib: float = 64.0):
        if not max_mib > 0:
            raise ValueError(f"ReferenceCache.max_mib must be > 0, got {max_mib}")
        self.reference = reference
        self.max_mib = max_mib
        self.table: torch.Tensor | None = None  # [slots, V], allocated on first use
        self.slot_of: OrderedDict[bytes, int] = OrderedDict()  # key -> slot, least recently used first
        self.hits = 0
        self.misses = 0
        self.last_hit_rate = 0.0  # share of the latest call's contexts found in the cache

    def __len__(self) -> int:
        return len(self.slot_of)

    def state_dict(self) -> dict:
        """The entries as tensors, for a resumable training state: keys (history bytes, least recently used
        first), their slots, the rows in use and the counters."""
        keys = list(self.slot_of)
        return {"keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8) if keys else None,
                "key_sizes": torch.tensor([len(k) for k in keys], dtype=torch.int64),
                "slots": torch.tensor(list(self.slot_of.values()), dtype=torch.int64),
                "table": self.table[:len(keys)] if self.table is not None else None,  # slots in use are 0..n-1
                "capacity": self.table.shape[0] if self.table is not None else 0,
                "hits": self.hits, "misses": self.misses, "last_hit_rate": self.last_hit_rate}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Refill from `state_dict()`: the same entries in the same slots and LRU order."""
        if state["table"] is not None:
            table = state["table"]
            self.table = torch.empty(state["capacity"], table.shape[1], dtype=table.dtype, device=device)
            self.table[:len(table)] = table.to(device)
        blob = state["keys"].numpy().tobytes() if state["keys"] is not None else b""
        ends = state["key_sizes"].cumsum(0).tolist()
        keys = [blob[start:end] for start, end in zip([0, *ends[:-1]], ends)]
        self.slot_of = OrderedDict(zip(keys, state["slots"].tolist()))
        self.hits, self.misses, self.last_hit_rate = state["hits"], state["misses"], state["last_hit_rate"]

    def _allocate(self, vocab_size: int, device: torch.device) -> None:
        slots = max(1, int(self.max_mib * 2**20 // (4 * vocab_size)))
        self.table = torch.empty(slots, vocab_size, dtype=torch.float32, device=device)

    @torch.no_grad()
    def _compute(self, histories: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.reference):
            return F.log_softmax(self.reference.next_item_logits(histories).float(), dim=-1)

    @torch.no_grad()
    def log_probs(self, histories: torch.Tensor) -> torch.Tensor:
        """[N, V] unmasked next-item log-probs of the reference after each history [N, T] (no grad)."""
        if histories.dim() != 2:
            raise ValueError(f"histories must be [N, T] item ids, got shape {tuple(histories.shape)}")
        rows = histories.detach().cpu().numpy()
        keys = [row.tobytes() for row in rows]
        slots = [self.slot_of.get(k) for k in keys]
        todo = [i for i, s in enumerate(slots) if s is None]
        fresh = None
        if todo:
            fresh = self._compute(histories[todo])  # [M, V]
            if self.table is None:
                self._allocate(fresh.shape[1], fresh.device)
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        self.last_hit_rate = (len(keys) - len(todo)) / max(len(keys), 1)
        out = torch.empty(len(keys), self.table.shape[1], dtype=torch.float32, device=self.table.device)
        hit_rows = [i for i, s in enumerate(slots) if s is not None]
        if hit_rows:
            out[hit_rows] = self.table[[slots[i] for i in hit_rows]]
            for i in hit_rows:
                self.slot_of.move_to_end(keys[i])
        if todo:
            out[todo] = fresh
            self._store([keys[i] for i in todo], fresh)
        return out

    def _store(self, keys: list[bytes], values: torch.Tensor) -> None:
        """Insert new rows, evicting the least recently used ones when the table is full."""
        for key, value in zip(keys, values):
            if key in self.slot_of:  # a context repeated within the batch
                continue
            if len(self.slot_of) < self.table.shape[0]:
                slot = len(self.slot_of)  # still filling: slots 0..len-1 are taken
            else:
                _, slot = self.slot_of.popitem(last=False)
            self.table[slot] = value
            self.slot_of[key] = slot
