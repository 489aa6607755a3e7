"""Small synthetic raw logs and catalogs with learnable structure, for tests.

Items belong to one of four genres; each user has a favourite genre. Users mostly pick items of
their favourite genre (popular ones more often), rate those high and others low, so both the
next item and the rating are predictable from the history.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ("Action", "Comedy", "Drama", "Horror")


def item_genre(item: int) -> int:
    return item % len(GENRES)


def make_synthetic_logs(n_users: int = 60, n_items: int = 40, events_per_user: tuple[int, int] = (5, 20),
                        seed: int = 0) -> pd.DataFrame:
    """Raw logs: user_id ("u000"), item_id ("m000"), timestamp (int s), rating (1..5 int64)."""
    rng = np.random.default_rng(seed)
    items = np.arange(n_items)
    genre = np.array([item_genre(i) for i in items])
    popularity = 1.0 / (1.0 + np.arange(n_items)) ** 0.7  # Zipf-like: low ids are popular
    rows = []
    for u in range(n_users):
        favourite = int(rng.integers(len(GENRES)))
        weights = popularity * np.where(genre == favourite, 6.0, 1.0)
        n = int(rng.integers(events_per_user[0], events_per_user[1] + 1))
        replace = n > n_items
        picked = rng.choice(items, size=n, replace=replace, p=weights / weights.sum())
        t = 1_600_000_000 + int(rng.integers(0, 86_400))
        for i in picked:
            t += int(rng.integers(60, 7_200))
            liked = genre[i] == favourite
            rating = int(np.clip(round((4.5 if liked else 2.0) + rng.normal(0, 0.7)), 1, 5))
            rows.append((f"u{u:03d}", f"m{i:03d}", t, rating))
    logs = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    return logs.astype({"user_id": str, "item_id": str, "timestamp": np.int64, "rating": np.int64})


def make_synthetic_catalog(n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    """Catalog: item_id ("m000"), title, genres ("A|B": main genre, sometimes a second), year (Int64)."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i in range(n_items):
        names = [GENRES[item_genre(i)]]
        if rng.random() < 0.3:
            names.append(GENRES[(item_genre(i) + 1) % len(GENRES)])
        rows.append((f"m{i:03d}", f"Movie {i}", "|".join(names), 1970 + int(rng.integers(0, 50))))
    catalog = pd.DataFrame(rows, columns=["item_id", "title", "genres", "year"])
    return catalog.astype({"item_id": str, "title": str, "genres": str, "year": "Int64"})


def write_synthetic_dataset(directory: str | Path, n_users: int = 60, n_items: int = 40,
                            events_per_user: tuple[int, int] = (5, 20), seed: int = 0) -> tuple[Path, Path]:
    """Write logs.parquet and catalog.parquet into `directory`; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    logs_path, catalog_path = directory / "logs.parquet", directory / "catalog.parquet"
    make_synthetic_logs(n_users, n_items, events_per_user, seed).to_parquet(logs_path, index=False)
    make_synthetic_catalog(n_items, seed).to_parquet(catalog_path, index=False)
    return logs_path, catalog_path


def cyclic_interactions(n_users: int, n_items: int, events: int, rewards: tuple[float, ...], seed: int = 0,
                        propensity: bool = False) -> pd.DataFrame:
    """An interactions table where each user walks the catalog in cyclic order from a random start
    (the next item is learnable), with rewards drawn from `rewards` and, optionally, propensities."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for j in range(events):
            split = "test" if j == events - 1 else "valid" if j == events - 2 else "train"
            row = (u, (start + j) % n_items + 1, 1000 * u + j, float(rng.choice(rewards)), split)
            rows.append(row + ((float(rng.uniform(0.05, 1.0)),) if propensity else ()))
    columns = ["user_idx", "item_idx", "timestamp", "reward", "split"] + (["propensity"] if propensity else [])
    df = pd.DataFrame(rows, columns=columns)
    return df.astype({"user_idx": np.int32, "item_idx": np.int32, "timestamp": np.int64, "reward": np.float32})
