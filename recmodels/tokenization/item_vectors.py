"""Item vectors for semantic IDs: collaborative factors from the train split plus content features.

Blocks, each centered per column, scaled to a mean squared row norm of 1 (so that no block
dominates by its width or units) and then multiplied by its weight (its share of squared distances
grows with weight**2):
- `collaborative`: truncated SVD of the binary user x item matrix of TRAIN interactions only (valid
  and test events never leak into the tokenizer), item rows U*S, optionally L2-normalized so that
  items cluster by who watches them rather than by how popular they are;
- `genres`: multi-hot of the catalog's "A|B" genres;
- `year`: the catalog year, standardized, missing years at the mean.
A block with no variance (no catalog, one genre, no years) is left out.

`embedding_item_vectors` builds them instead from a trained model's item embeddings (the pretrained atomic
policy's: the items it learned to treat alike), one block scaled the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class ItemVectorConfig:
    svd_dim: int = 32
    collaborative_weight: float = 1.0
    genre_weight: float = 0.5
    year_weight: float = 0.25
    normalize_collaborative: bool = True  # L2-normalize each item's factors before scaling the block
    seed: int = 0


@dataclass
class ItemVectors:
    vectors: np.ndarray  # [n_items + 1, d] float32, row i = item_idx i, row 0 (padding) = 0
    blocks: dict[str, tuple[int, int]]  # block name -> (first column, end column)
    stats: dict = field(default_factory=dict)


def _scaled(block: np.ndarray, weight: float) -> np.ndarray | None:
    """Center columns, scale to mean squared row norm 1, weight; None for a constant block."""
    centered = block - block.mean(axis=0, keepdims=True)
    scale = np.sqrt((centered ** 2).sum(axis=1).mean())
    if block.shape[1] == 0 or scale < 1e-12 or weight == 0:
        return None
    return weight * centered / scale


def collaborative_factors(train: pd.DataFrame, n_items: int, dim: int, seed: int,
                          normalize: bool) -> tuple[np.ndarray, float]:
    """[n_items, k] item factors U*S of the binary item x user matrix, and the explained variance share."""
    from sklearn.decomposition import TruncatedSVD  # heavy import, only when building

    users = pd.factorize(train["user_idx"], sort=True)[0]
    items = train["item_idx"].to_numpy(np.int64) - 1
    n_users = int(users.max()) + 1 if len(users) else 0
    matrix = sp.csr_matrix((np.ones(len(items)), (items, users)), shape=(n_items, n_users))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # an item a user met several times counts once
    k = min(dim, min(matrix.shape) - 1)
    if k < 1:
        return np.zeros((n_items, 0)), 0.0
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=seed)
    factors = svd.fit_transform(matrix)
    if normalize:
        norms = np.linalg.norm(factors, axis=1, keepdims=True)
        factors = np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)
    return factors, float(svd.explained_variance_ratio_.sum())


def catalog_item_idx(catalog: pd.DataFrame, n_items: int, columns: set[str]) -> np.ndarray:
    """The catalog's item_idx column, checked: the catalog has `columns` and every id is inside 1..n_items."""
    missing = ({"item_idx"} | columns) - set(catalog.columns)
    if missing:
        raise ValueError(f"catalog lacks columns {sorted(missing)}")
    idx = catalog["item_idx"].to_numpy(np.int64)
    if len(idx) and (idx.min() < 1 or idx.max() > n_items):
        bad = int(idx[(idx < 1) | (idx > n_items)][0])
        raise ValueError(f"catalog column 'item_idx' holds {bad}, outside 1..{n_items}")
    return idx


def content_features(catalog: pd.DataFrame, n_items: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Multi-hot genres [n_items, G], standardized year [n_items, 1] and the genre names, by item_idx."""
    idx = catalog_item_idx(catalog, n_items, {"genres", "year"})
    genre_lists = catalog["genres"].fillna("").astype(str).map(lambda g: [x for x in g.split("|") if x])
    names = sorted({g for gs in genre_lists for g in gs})
    column = {g: j for j, g in enumerate(names)}
    genres = np.zeros((n_items, len(names)))
    for i, gs in zip(idx, genre_lists):
        genres[i - 1, [column[g] for g in gs]] = 1.0
    year = np.full(n_items, np.nan)
    year[idx - 1] = pd.to_numeric(catalog["year"], errors="coerce").astype(float).to_numpy()
    known = np.isfinite(year)
    if known.any():
        mean, std = year[known].mean(), year[known].std()
        year = np.where(known, (year - mean) / (std if std > 0 else 1.0), 0.0)
    else:
        year = np.zeros(n_items)
    return genres, year[:, None], names


def build_item_vectors(interactions: pd.DataFrame, catalog: pd.DataFrame | None, n_items: int,
                       config: ItemVectorConfig = ItemVectorConfig()) -> ItemVectors:
    """Item vectors from the interactions table's train split and the (optional) catalog."""
    missing = {"user_idx", "item_idx", "split"} - set(interactions.columns)
    if missing:
        raise ValueError(f"interactions lack columns {sorted(missing)}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    train = interactions[interactions["split"].astype(str) == "train"]
    item_idx = train["item_idx"].to_numpy(np.int64)
    if len(item_idx) and (item_idx.min() < 1 or item_idx.max() > n_items):
        bad = int(item_idx[(item_idx < 1) | (item_idx > n_items)][0])
        raise ValueError(f"interactions column 'item_idx' holds {bad}, outside 1..{n_items}")
    factors, explained = collaborative_factors(train, n_items, config.svd_dim, config.seed,
                                               config.normalize_collaborative)
    raw = {"collaborative": (factors, config.collaborative_weight)}
    n_genres = 0
    if catalog is not None:
        genres, year, names = content_features(catalog, n_items)
        raw["genres"] = (genres, config.genre_weight)
        raw["year"] = (year, config.year_weight)
        n_genres = len(names)
    parts, blocks, start = [], {}, 0
    for name, (block, weight) in raw.items():
        scaled = _scaled(block, weight)
        if scaled is None:
            continue
        parts.append(scaled)
        blocks[name] = (start, start + scaled.shape[1])
        start += scaled.shape[1]
    if not parts:
        raise ValueError("no item features: the train split has no interactions and the catalog no genres/years")
    vectors = np.zeros((n_items + 1, start), dtype=np.float32)
    vectors[1:] = np.concatenate(parts, axis=1)
    seen = np.zeros(n_items, bool)
    seen[item_idx - 1] = True
    stats = {"svd_dim": int(factors.shape[1]), "svd_explained_variance": explained, "n_genres": n_genres,
             "n_train_events": int(len(train)), "items_without_train_events": int((~seen).sum()),
             "dim": int(start)}
    return ItemVectors(vectors=vectors, blocks=blocks, stats=stats)


def embedding_item_vectors(embeddings: np.ndarray, normalize: bool = True) -> ItemVectors:
    """Item vectors from a trained model's item embeddings [n_items + 1, d] (row i = item_idx i, row 0 padding),
    e.g. the pretrained atomic policy's token embeddings: items that model treats alike get close codes.

    Each row is L2-normalized when `normalize` (items cluster by direction, not by how popular the model
    made them), then the block is centered and scaled as the feature blocks are (`_scaled`).
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"embeddings must be [n_items + 1, d] with n_items >= 1, got shape {e.shape}")
    if not np.isfinite(e[1:]).all():
        row = int(np.argwhere(~np.isfinite(e[1:]))[0, 0]) + 1
        raise ValueError(f"the embedding of item_idx {row} is not finite")
    rows = e[1:]
    if normalize:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    scaled = _scaled(rows, 1.0)
    if scaled is None:
        raise ValueError("the item embeddings are all equal: they cannot tell items apart")
    vectors = np.zeros((e.shape[0], e.shape[1]), dtype=np.float32)
    vectors[1:] = scaled
    return ItemVectors(vectors=vectors, blocks={"embedding": (0, e.shape[1])},
                       stats={"dim": int(e.shape[1]), "normalized": normalize})
