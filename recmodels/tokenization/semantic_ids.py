"""Semantic IDs: each item becomes a tuple of codes built by residual quantization (RQ-KMeans by default).

Level l = 0..L-1 quantizes the residual left by the levels before it, so similar items share prefixes.
`SemanticIdConfig.quantizer` says how (`QUANTIZERS`):
- "rq_kmeans": one codebook of `codebook_size` codes per level over all items (sklearn KMeans, fixed
  random_state);
- "balanced_rq_kmeans": the same with every code holding at most ceil(n_items / V) items (OneRec's
  balanced k-means; `balanced_kmeans.capacity_kmeans`);
- "balanced_tree": the items under each prefix are clustered on their own (their residual after the
  prefix's centers) into at most V codes, each holding at most what the levels below can tell apart,
  so no two items share L codes; V is the fewest codes with V**L >= n_items (at most `codebook_size`).
  Nearly every code tuple is an item, so an unconstrained decoder has few non-items to invent;
- "rq_vae": an autoencoder whose latent is quantized residually by L learned codebooks of V codes
  (TIGER's RQ-VAE; `rq_vae.rq_vae_codes`), so the codes are trained to rebuild the item vector.
Items that end up with the same L codes get one more, disambiguation code 0, 1, 2, ... in item_idx
order, which makes every item's (L+1)-tuple unique (always 0 under a "balanced_tree" that fits).

Token layout (`TokenLayout`): every level has its own token range, token = 1 + offset_l + code, so
the vocabulary is 1 + sum(level sizes) with 0 = padding, and an item occupies L+1 consecutive
tokens in a sequence, level 0 first.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recmodels.tokenization.balanced_kmeans import capacity_kmeans
from recmodels.tokenization.rq_vae import RQVAEConfig, rq_vae_codes

FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenLayout:
    """Where each code level lives in the token vocabulary (0 = padding)."""

    level_sizes: tuple[int, ...]  # codes per level; the last level holds disambiguation codes

    def __post_init__(self):
        sizes = tuple(int(s) for s in self.level_sizes)
        if len(sizes) < 1 or min(sizes) < 1:
            raise ValueError(f"level_sizes must be positive code counts, got {self.level_sizes}")
        object.__setattr__(self, "level_sizes", sizes)

    @property
    def n_levels(self) -> int:
        """Tokens per item (L + 1)."""
        return len(self.level_sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """First token of each level's range."""
        return tuple(1 + int(s) for s in np.cumsum((0,) + self.level_sizes[:-1]))

    @property
    def vocab_size(self) -> int:
        return 1 + sum(self.level_sizes)

    def token_levels(self) -> torch.Tensor:
        """[vocab] level of each token, -1 for padding."""
        levels = torch.full((self.vocab_size,), -1, dtype=torch.long)
        for level, (start, size) in enumerate(zip(self.offsets, self.level_sizes)):
            levels[start:start + size] = level
        return levels

    def to_tokens(self, tuples: torch.Tensor) -> torch.Tensor:
        """Code tuples [..., L+1] -> tokens [..., L+1]."""
        return tuples + torch.as_tensor(self.offsets, device=tuples.device)

    def to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [..., L+1] of whole items -> code tuples [..., L+1]."""
        return tokens - torch.as_tensor(self.offsets, device=tokens.device)

    def prefix_keys(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., n] of levels 0..n-1 -> [..., n+1]: at l, the mixed-radix number of codes 0..l-1 (0 at l = 0),
        so that two tuples share their first l codes exactly where their keys at l are equal."""
        keys = [codes.new_zeros(codes.shape[:-1])]
        for level in range(codes.shape[-1]):
            keys.append(keys[-1] * self.level_sizes[level] + codes[..., level])
        return torch.stack(keys, dim=-1)


QUANTIZERS = ("rq_kmeans", "balanced_rq_kmeans", "balanced_tree", "rq_vae")


@dataclass
class SemanticIdConfig:
    n_levels: int = 3  # L quantization levels (the disambiguation code comes on top)
    codebook_size: int = 32  # V codes per level ("balanced_tree": at most V)
    seed: int = 0
    n_init: int = 1  # k-means restarts (the k-means quantizers)
    max_iter: int = 100  # k-means iterations (the k-means quantizers)
    quantizer: str = "rq_kmeans"  # one of QUANTIZERS; files saved before the field were built by "rq_kmeans"

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"SemanticIdConfig.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")


@dataclass
class SemanticIds:
    codes: np.ndarray  # [n_items + 1, L + 1] int64; row 0 is padding (item 0 has no tuple)
    level_sizes: tuple[int, ...]  # (V, ..., V, D): codes per level, D = disambiguation codes
    config: SemanticIdConfig
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        self.codes = np.asarray(self.codes, dtype=np.int64)
        self.level_sizes = tuple(int(s) for s in self.level_sizes)
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.level_sizes) or self.codes.shape[0] < 2:
            raise ValueError(f"codes must be [n_items + 1, {len(self.level_sizes)}] with n_items >= 1, "
                             f"got shape {self.codes.shape}")
        bad = (self.codes[1:] < 0) | (self.codes[1:] >= np.asarray(self.level_sizes))
        if bad.any():
            row, level = np.argwhere(bad)[0]
            raise ValueError(f"item_idx {row + 1} has code {self.codes[row + 1, level]} at level {level}, "
                             f"outside 0..{self.level_sizes[level] - 1}")
        self._keys = self._encode(self.codes[1:])
        self._order = np.argsort(self._keys, kind="stable")

    @property
    def n_items(self) -> int:
        return self.codes.shape[0] - 1

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(self.level_sizes)

    def _encode(self, tuples: np.ndarray) -> np.ndarray:
        """Mixed-radix integer key of each tuple [..., L+1] (codes assumed in range)."""
        key = np.zeros(tuples.shape[:-1], dtype=np.int64)
        for level, size in enumerate(self.level_sizes):
            key = key * size + tuples[..., level]
        return key

    # --- item <-> tuple ---------------------------------------------------------------------
    def item_to_tuple(self, item: int) -> tuple[int, ...]:
        if not 1 <= int(item) <= self.n_items:
            raise KeyError(f"item_idx {item} is outside 1..{self.n_items}")
        return tuple(int(c) for c in self.codes[int(item)])

    @property
    def tuple_to_item(self) -> dict[tuple[int, ...], int]:
        return {tuple(int(c) for c in row): i + 1 for i, row in enumerate(self.codes[1:])}

    def lookup(self, tuples) -> np.ndarray:
        """item_idx of each code tuple [..., L+1]; 0 where the tuple is no item (hallucination)."""
        t = np.asarray(tuples.detach().cpu() if isinstance(tuples, torch.Tensor) else tuples, dtype=np.int64)
        if t.shape[-1:] != (len(self.level_sizes),):
            raise ValueError(f"tuples must end in a dimension of {len(self.level_sizes)} codes, got shape {t.shape}")
        in_range = ((t >= 0) & (t < np.asarray(self.level_sizes))).all(axis=-1)
        keys = self._encode(np.where(in_range[..., None], t, 0))
        sorted_keys = self._keys[self._order]
        pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
        found = in_range & (sorted_keys[pos] == keys)
        return np.where(found, self._order[pos] + 1, 0)

    # --- tokens -----------------------------------------------------------------------------
    def token_table(self) -> torch.Tensor:
        """[n_items + 1, L + 1] tokens of each item; row 0 (padding) is all 0."""
        table = self.layout.to_tokens(torch.as_tensor(self.codes))
        table[0] = 0
        return table

    def items_to_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """Item histories [B, T] (0 = padding) -> token sequences [B, T * (L + 1)]."""
        if items.numel() and (int(items.min()) < 0 or int(items.max()) > self.n_items):
            raise ValueError(f"items hold ids outside 0..{self.n_items} "
                             f"(min {int(items.min())}, max {int(items.max())})")
        return self.token_table().to(items.device)[items].flatten(start_dim=-2)

    def window_tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item training windows (see `training_windows`) -> next-token (tokens, targets).

        inputs [N, T] and targets [N, T] (0 = nothing to predict) give tokens [N, (T+1)(L+1) - 1]:
        the input items then the last target item, shifted by one token; a target token is set
        wherever its item is a target, so every target item costs its L+1 code tokens.
        """
        if inputs.shape != targets.shape or inputs.dim() != 2:
            raise ValueError(f"inputs and targets must both be [N, T]; got {tuple(inputs.shape)} "
                             f"and {tuple(targets.shape)}")
        follows = targets[:, :-1] != 0
        if (follows & (targets[:, :-1] != inputs[:, 1:])).any():
            row = int(torch.nonzero(follows & (targets[:, :-1] != inputs[:, 1:]))[0, 0])
            raise ValueError(f"window {row}: a target must be the next input item (targets[t] == inputs[t + 1])")
        seq = self.items_to_tokens(torch.cat([inputs, targets[:, -1:]], dim=1))  # [N, (T+1)(L+1)]
        tgt = torch.cat([torch.zeros_like(inputs[:, :1]), targets], dim=1)  # item i's target flag
        tgt_tokens = self.items_to_tokens(tgt)  # [N, (T+1)(L+1)], 0 where not a target
        return seq[:, :-1], tgt_tokens[:, 1:]

    # --- checks -----------------------------------------------------------------------------
    def bijection_table(self) -> pd.DataFrame:
        """One row per item: item_idx and its tuple as text ("3-17-5-0"), for a uniqueness check."""
        return pd.DataFrame({"item_idx": np.arange(1, self.n_items + 1, dtype=np.int64),
                             "tuple": ["-".join(map(str, row)) for row in self.codes[1:].tolist()]})

    def check_bijection(self) -> dict:
        """Observed values of the item <-> tuple bijection; `passed` when every tuple maps back."""
        n_distinct = int(np.unique(self._keys).size)
        round_trip = self.lookup(self.codes[1:])
        mismatches = int((round_trip != np.arange(1, self.n_items + 1)).sum())
        return {"n_items": self.n_items, "n_distinct_tuples": n_distinct,
                "n_duplicate_tuples": self.n_items - n_distinct, "n_round_trip_mismatches": mismatches,
                "passed": n_distinct == self.n_items and mismatches == 0}

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write an .npz (no pickled objects): codes, level sizes, config and stats as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, codes=self.codes, level_sizes=np.asarray(self.level_sizes, np.int64),
                     config=np.asarray(json.dumps(asdict(self.config))),
                     stats=np.asarray(json.dumps(self.stats)), format_version=np.asarray(FORMAT_VERSION))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SemanticIds":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"semantic IDs file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:
            raise ValueError(f"semantic IDs file {path} is not a readable .npz: {exc}") from exc
        missing = {"codes", "level_sizes", "config", "stats"} - arrays.keys()
        if missing:
            raise ValueError(f"semantic IDs file {path} lacks {sorted(missing)}")
        try:
            return cls(codes=arrays["codes"], level_sizes=tuple(arrays["level_sizes"].tolist()),
                       config=SemanticIdConfig(**json.loads(str(arrays["config"]))),
                       stats=json.loads(str(arrays["stats"])))
        except ValueError as exc:
            raise ValueError(f"semantic IDs file {path}: {exc}") from exc


def _disambiguate(prefixes: np.ndarray) -> np.ndarray:
    """[n, L] codes -> [n] index of each row among the rows sharing its prefix, in row order."""
    return pd.DataFrame(prefixes).groupby(list(range(prefixes.shape[1])), sort=False).cumcount().to_numpy(np.int64)


def _rq_kmeans(x: np.ndarray, config: SemanticIdConfig, balanced: bool) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """One codebook per level over all items: (codes per level, residual after each level, V)."""
    from sklearn.cluster import KMeans  # heavy import, only when building
    from sklearn.exceptions import ConvergenceWarning

    n = x.shape[0]
    k = min(config.codebook_size, n)
    residual, levels, residuals = x.copy(), [], []
    for level in range(config.n_levels):
        if balanced:
            labels, centers = capacity_kmeans(residual, k, -(-n // k), seed=config.seed + level)
        else:
            km = KMeans(n_clusters=k, random_state=config.seed + level, n_init=config.n_init,
                        max_iter=config.max_iter)
            with warnings.catch_warnings():  # duplicate vectors leave fewer distinct clusters than k
                warnings.simplefilter("ignore", ConvergenceWarning)
                labels, centers = km.fit_predict(residual).astype(np.int64), km.cluster_centers_
        residual = residual - centers[labels]
        levels.append(labels)
        residuals.append(residual)
    return levels, residuals, config.codebook_size


def _tree_codebook_size(n_items: int, config: SemanticIdConfig) -> int:
    """V of a "balanced_tree": the fewest codes per level with V**L >= n_items, at most `codebook_size`."""
    v = 2
    while v ** config.n_levels < n_items and v < config.codebook_size:
        v += 1
    return v


def _balanced_tree(x: np.ndarray, config: SemanticIdConfig) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """The items under each prefix clustered on their own: (codes per level, residual after each level, V)."""
    n, L = x.shape[0], config.n_levels
    v = _tree_codebook_size(n, config)
    codes, residual, residuals = np.zeros((L, n), np.int64), x.copy(), []
    nodes = [np.arange(n)]  # the items under each prefix of the level being built
    for level in range(L):
        below = v ** (L - 1 - level)  # items the levels below can tell apart under one code
        children = []
        for members in nodes:
            capacity = max(below, -(-len(members) // v))  # more than `below` only when V**L < n_items
            labels, centers = capacity_kmeans(residual[members], min(v, len(members)), capacity,
                                              seed=config.seed + level)
            codes[level, members] = labels
            residual[members] -= centers[labels]
            children += [members[labels == c] for c in np.unique(labels)]
        nodes = children
        residuals.append(residual.copy())
    return list(codes), residuals, v


def build_semantic_ids(vectors: np.ndarray, config: SemanticIdConfig = SemanticIdConfig()) -> SemanticIds:
    """Residual quantization (the quantizer `config` names) over item vectors [n_items + 1, d] (row i = item_idx
    i, row 0 ignored)."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"vectors must be [n_items + 1, d] with n_items >= 1, got shape {x.shape}")
    if not np.isfinite(x[1:]).all():
        row = int(np.argwhere(~np.isfinite(x[1:]))[0, 0]) + 1
        raise ValueError(f"vectors of item_idx {row} are not finite")
    if config.n_levels < 1 or config.codebook_size < 2:
        raise ValueError(f"need n_levels >= 1 and codebook_size >= 2, got {config}")
    started = time.perf_counter()
    n_items = x.shape[0] - 1
    if config.quantizer == "balanced_tree":
        levels, residuals, v = _balanced_tree(x[1:], config)
    elif config.quantizer == "rq_vae":
        vae = RQVAEConfig(n_levels=config.n_levels, codebook_size=config.codebook_size, seed=config.seed)
        levels, residuals = rq_vae_codes(x[1:], vae)
        v = config.codebook_size
    else:
        levels, residuals, v = _rq_kmeans(x[1:], config, balanced=config.quantizer == "balanced_rq_kmeans")
    prefixes = np.stack(levels, axis=1)
    extra = _disambiguate(prefixes)
    codes = np.zeros((n_items + 1, config.n_levels + 1), dtype=np.int64)
    codes[1:] = np.column_stack([prefixes, extra])
    n_disambiguation = int(extra.max()) + 1
    level_sizes = (v,) * config.n_levels + (n_disambiguation,)
    stats = {
        "n_items": n_items,
        "tuple_length": config.n_levels + 1,
        "codebook_usage": [len(np.unique(labels)) / v for labels in levels],  # distinct codes used / V, per level
        "n_collisions": int((extra > 0).sum()),  # items that needed a disambiguation code > 0
        "n_shared_prefixes": int((extra == 1).sum()),  # prefixes that two or more items share
        "max_disambiguation": n_disambiguation - 1,
        "tuple_density": n_items / float(np.prod(level_sizes, dtype=np.float64)),  # items / possible tuples
        # after each level (rq_vae: in its latent space)
        "residual_rmse": [float(np.sqrt((r ** 2).sum(axis=1).mean())) for r in residuals],
        "build_seconds": time.perf_counter() - started,
    }
    return SemanticIds(codes=codes, level_sizes=level_sizes, config=config, stats=stats)
