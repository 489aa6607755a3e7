"""Prefix trie of the catalog's code tuples: which code may follow a prefix so that it stays an item.

Stored as dense per-level tables so that a whole batch of beams advances with tensor indexing. The
prefixes of length l are the nodes of level l (level 0: the root, node 0); every level has one extra
"dead" node (id = its number of nodes) that admits nothing, reached by any code that leaves the
catalog. For each level l:
- `children[l]` [n_nodes_l + 1, V_l]: the node of level l+1 reached by appending code c; at the last
  level, the item_idx the completed tuple names (0 = no item);
- `counts[l]`   [n_nodes_l + 1, V_l]: how many items lie under prefix + c (0 = code not admitted).
"""
from __future__ import annotations

import numpy as np
import torch

from recmodels.tokenization.semantic_ids import SemanticIds


class ItemTrie:
    def __init__(self, codes: np.ndarray, level_sizes: tuple[int, ...]):
        codes = np.asarray(codes, dtype=np.int64)
        self.level_sizes = tuple(int(s) for s in level_sizes)
        if codes.ndim != 2 or codes.shape[1] != len(self.level_sizes) or codes.shape[0] < 2:
            raise ValueError(f"codes must be [n_items + 1, {len(self.level_sizes)}], got shape {codes.shape}")
        items = codes[1:]
        if ((items < 0) | (items >= np.asarray(self.level_sizes))).any():
            row, level = np.argwhere((items < 0) | (items >= np.asarray(self.level_sizes)))[0]
            raise ValueError(f"item_idx {row + 1} has code {items[row, level]} outside level {level}'s "
                             f"0..{self.level_sizes[level] - 1}")
        if len(np.unique(items, axis=0)) != len(items):
            raise ValueError("codes are not unique per item: the trie needs a bijection")
        n_items, n_levels = items.shape
        self.n_items = n_items
        node_ids = [np.zeros(n_items, np.int64)]  # node of each item's prefix at every level
        for level in range(1, n_levels):
            node_ids.append(np.unique(items[:, :level], axis=0, return_inverse=True)[1].reshape(-1))
        self.n_nodes = [int(ids.max()) + 1 for ids in node_ids]
        self.children, self.counts = [], []
        for level in range(n_levels):
            last = level == n_levels - 1
            dead_next = 0 if last else self.n_nodes[level + 1]
            child = np.full((self.n_nodes[level] + 1, self.level_sizes[level]), dead_next, np.int64)
            count = np.zeros_like(child)
            target = np.arange(1, n_items + 1) if last else node_ids[level + 1]
            child[node_ids[level], items[:, level]] = target
            np.add.at(count, (node_ids[level], items[:, level]), 1)
            self.children.append(torch.as_tensor(child))
            self.counts.append(torch.as_tensor(count))

    @classmethod
    def from_semantic_ids(cls, semantic_ids: SemanticIds) -> "ItemTrie":
        return cls(semantic_ids.codes, semantic_ids.level_sizes)

    @property
    def n_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def device(self) -> torch.device:
        return self.children[0].device

    def to(self, device) -> "ItemTrie":
        """This trie with its tables on `device` (self when already there)."""
        if torch.device(device) == self.device:
            return self
        moved = object.__new__(ItemTrie)
        moved.__dict__.update(self.__dict__)
        moved.children = [t.to(device) for t in self.children]
        moved.counts = [t.to(device) for t in self.counts]
        return moved

    def root(self, shape, device=None) -> torch.Tensor:
        """Node ids of empty prefixes, of the given shape."""
        return torch.zeros(shape, dtype=torch.long, device=device or self.device)

    def allowed(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """[..., V_level] bool: the codes that keep each prefix node inside the catalog."""
        return self.counts[level][nodes] > 0

    def completions(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """[..., V_level] number of items under each prefix node + code."""
        return self.counts[level][nodes]

    def advance(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Nodes after appending `codes` at `level` (dead when not admitted); item_idx at the last level."""
        return self.children[level][nodes, codes]

    def lookup(self, tuples: torch.Tensor) -> torch.Tensor:
        """item_idx of each tuple [..., L+1] (0 = no item), by walking the trie."""
        tuples = torch.as_tensor(tuples, device=self.device)
        if tuples.shape[-1:] != (self.n_levels,):
            raise ValueError(f"tuples must end in a dimension of {self.n_levels} codes, got {tuple(tuples.shape)}")
        nodes = self.root(tuples.shape[:-1])
        for level, size in enumerate(self.level_sizes):
            code = tuples[..., level]
            inside = (code >= 0) & (code < size)
            dead = self.n_nodes[level + 1] if level + 1 < self.n_levels else 0
            nodes = torch.where(inside, self.advance(level, nodes, code.clamp(0, size - 1)),
                                torch.full_like(nodes, dead))
        return nodes

    def __contains__(self, code_tuple) -> bool:
        return bool(self.lookup(torch.as_tensor([list(code_tuple)]))[0] > 0)
