"""Semantic IDs: RQ-KMeans codes (deterministic, a bijection), token layout, persistence, item vectors."""
import numpy as np
import pytest
import torch

from recmodels.data.interactions import build_interactions
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import RawLogs
from recmodels.tokenization import (ItemVectorConfig, SemanticIdConfig, SemanticIds, TokenLayout,
                                  build_item_vectors, build_semantic_ids, embedding_item_vectors)
from tests.synthetic import make_synthetic_catalog, make_synthetic_logs


def clustered_vectors(n_items=120, seed=0):
    """[n_items + 1, 6] vectors around 5 centres; items 1, 2, 3 identical and items 4, 5 identical."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(5, 6))
    v = centres[rng.integers(0, 5, n_items + 1)] + rng.normal(size=(n_items + 1, 6))
    v[2] = v[3] = v[1]
    v[5] = v[4]
    return v


@pytest.fixture(scope="module")
def small_interactions():
    logs = make_synthetic_logs(n_users=40, n_items=30, seed=3)
    raw = RawLogs(name="synthetic", logs=logs, catalog=make_synthetic_catalog(30, seed=3), digest="x")
    return build_interactions(raw, RewardSpec())


def test_rq_kmeans_is_deterministic_for_a_seed_and_a_bijection():
    cfg = SemanticIdConfig(n_levels=3, codebook_size=8, seed=4)
    a, b = build_semantic_ids(clustered_vectors(), cfg), build_semantic_ids(clustered_vectors(), cfg)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.codes.shape == (121, 4) and (a.codes[0] == 0).all()
    check = a.check_bijection()
    assert check["passed"] and check["n_distinct_tuples"] == 120 and check["n_duplicate_tuples"] == 0
    table = a.bijection_table()
    assert list(table.columns) == ["item_idx", "tuple"] and table["tuple"].is_unique and len(table) == 120
    assert table["tuple"].iloc[0] == "-".join(map(str, a.codes[1]))
    assert a.level_sizes[:3] == (8, 8, 8) and a.level_sizes[3] == a.stats["max_disambiguation"] + 1
    assert a.stats["tuple_length"] == 4 and len(a.stats["codebook_usage"]) == 3
    assert all(0 < u <= 1 for u in a.stats["codebook_usage"])


def test_identical_items_share_a_prefix_and_get_disambiguation_codes_in_item_order():
    sid = build_semantic_ids(clustered_vectors(), SemanticIdConfig(n_levels=2, codebook_size=6, seed=0))
    assert (sid.codes[1, :2] == sid.codes[2, :2]).all() and (sid.codes[1, :2] == sid.codes[3, :2]).all()
    prefix_123 = sid.codes[:, :2] == sid.codes[1, :2]
    group = np.flatnonzero(prefix_123.all(axis=1))
    group = group[group > 0]
    # every item sharing that prefix is numbered 0, 1, 2, ... in item_idx order
    np.testing.assert_array_equal(sid.codes[group, 2], np.arange(len(group)))
    assert (sid.codes[4, :2] == sid.codes[5, :2]).all() and sid.codes[4, 2] < sid.codes[5, 2]
    _, counts = np.unique(sid.codes[1:, :2], axis=0, return_counts=True)
    assert sid.stats["n_collisions"] == int((counts - 1).sum())
    assert sid.stats["max_disambiguation"] == counts.max() - 1


def _items_per_code(codes: np.ndarray, level: int) -> np.ndarray:
    """How many items share each distinct prefix of length level + 1 (codes [n_items, L + 1])."""
    return np.unique(codes[:, :level + 1], axis=0, return_counts=True)[1]


def test_balanced_tree_gives_every_item_its_own_prefix_in_a_dense_tuple_space():
    v = clustered_vectors(120)
    sid = build_semantic_ids(v, SemanticIdConfig(n_levels=2, codebook_size=32, quantizer="balanced_tree"))
    # the fewest codes with V**2 >= 120 items: 11 (121 tuples), whatever codebook_size allows above it
    assert sid.level_sizes == (11, 11, 1)
    assert sid.stats["n_collisions"] == 0 and (sid.codes[1:, 2] == 0).all() and sid.check_bijection()["passed"]
    assert sid.stats["tuple_density"] == pytest.approx(120 / 121)
    assert _items_per_code(sid.codes[1:], 0).max() <= 11  # a level-0 code holds what level 1 can tell apart
    # clusters stay together: the identical items 4 and 5 share their level-0 code
    assert sid.codes[4, 0] == sid.codes[5, 0]
    again = build_semantic_ids(v, SemanticIdConfig(n_levels=2, codebook_size=32, quantizer="balanced_tree"))
    np.testing.assert_array_equal(again.codes, sid.codes)


def test_balanced_tree_capped_by_codebook_size_falls_back_to_disambiguation_codes():
    sid = build_semantic_ids(clustered_vectors(120), SemanticIdConfig(n_levels=2, codebook_size=5,
                                                                      quantizer="balanced_tree"))
    assert sid.level_sizes[:2] == (5, 5) and sid.check_bijection()["passed"]
    # 120 items in 25 prefixes: balanced, so no prefix holds more than ceil(ceil(120 / 5) / 5) = 5 items
    assert _items_per_code(sid.codes[1:], 1).max() == 5 and sid.level_sizes[2] == 5


def test_balanced_rq_kmeans_holds_at_most_its_share_of_items_per_code():
    sid = build_semantic_ids(clustered_vectors(120), SemanticIdConfig(n_levels=2, codebook_size=8,
                                                                      quantizer="balanced_rq_kmeans"))
    for level in range(2):  # 120 / 8 = 15 items per code at most, at every level
        assert np.bincount(sid.codes[1:, level], minlength=8).max() <= 15
    plain = build_semantic_ids(clustered_vectors(120), SemanticIdConfig(n_levels=2, codebook_size=8))
    assert np.bincount(plain.codes[1:, 0], minlength=8).max() > 15  # five real clusters: plain k-means is not
    assert sid.check_bijection()["passed"]


def test_capacity_kmeans_respects_capacity_and_refuses_what_cannot_fit():
    from recmodels.tokenization.balanced_kmeans import capacity_kmeans

    x = clustered_vectors(60)[1:]
    labels, centers = capacity_kmeans(x, k=4, capacity=16, seed=0)
    assert labels.shape == (60,) and centers.shape == (4, 6) and np.bincount(labels).max() <= 16
    np.testing.assert_allclose(centers[labels[0]], x[labels == labels[0]].mean(axis=0))
    with pytest.raises(ValueError, match="4 clusters of at most 14 points cannot hold 60 points"):
        capacity_kmeans(x, k=4, capacity=14, seed=0)


def test_unknown_quantizer_is_refused_by_name():
    with pytest.raises(ValueError, match="quantizer must be one of .*'kmeans'"):
        SemanticIdConfig(quantizer="kmeans")


def test_rq_vae_learns_codes_that_follow_the_clusters_deterministically_and_leaves_torch_rng_alone():
    rng = np.random.default_rng(1)
    cluster = rng.integers(0, 4, 201)
    v = rng.normal(scale=6.0, size=(4, 8))[cluster] + rng.normal(size=(201, 8))
    v[7] = v[6]
    config = SemanticIdConfig(n_levels=2, codebook_size=8, quantizer="rq_vae")
    torch.manual_seed(123)
    sid = build_semantic_ids(v, config)
    after = torch.rand(3)
    torch.manual_seed(123)
    np.testing.assert_array_equal(torch.rand(3), after)  # the build drew nothing from torch's global stream
    np.testing.assert_array_equal(build_semantic_ids(v, config).codes, sid.codes)
    assert sid.check_bijection()["passed"] and sid.level_sizes[:2] == (8, 8)
    assert (sid.codes[6, :2] == sid.codes[7, :2]).all()  # identical vectors, identical codes
    # a level-0 code holds one cluster: the codes refine the clusters rather than cut across them
    for code in np.unique(sid.codes[1:, 0]):
        assert len(np.unique(cluster[1:][sid.codes[1:, 0] == code])) == 1
    assert min(sid.stats["codebook_usage"]) >= 0.75  # unused codes restart, so most of each codebook is used


def test_fewer_items_than_codes_still_gives_unique_tuples():
    sid = build_semantic_ids(np.random.default_rng(0).normal(size=(6, 3)), SemanticIdConfig(codebook_size=32))
    assert sid.check_bijection()["passed"] and sid.n_items == 5
    assert sid.stats["codebook_usage"][0] == 5 / 32


def test_lookup_maps_item_tuples_back_and_non_items_to_zero():
    sid = SemanticIds(codes=np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]]), level_sizes=(2, 2, 2),
                      config=SemanticIdConfig(n_levels=2, codebook_size=2))
    np.testing.assert_array_equal(sid.lookup(sid.codes[1:]), [1, 2, 3])
    np.testing.assert_array_equal(sid.lookup([[0, 0, 0], [1, 1, 1], [0, 1, 1], [0, 5, 0], [-1, 0, 0]]), [0, 0, 0, 0, 0])
    assert sid.item_to_tuple(3) == (1, 0, 1) and sid.tuple_to_item[(1, 0, 0)] == 2
    with pytest.raises(KeyError, match="item_idx 4"):
        sid.item_to_tuple(4)


def test_codes_out_of_their_level_range_are_rejected():
    with pytest.raises(ValueError, match="item_idx 2 has code 2 at level 1"):
        SemanticIds(codes=np.array([[0, 0], [0, 1], [1, 2]]), level_sizes=(2, 2), config=SemanticIdConfig())


def test_token_layout_gives_each_level_its_own_range():
    layout = TokenLayout((3, 4, 2))
    assert layout.offsets == (1, 4, 8) and layout.vocab_size == 10 and layout.n_levels == 3
    assert layout.token_levels().tolist() == [-1, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    tuples = torch.tensor([[2, 0, 1]])
    assert layout.to_tokens(tuples).tolist() == [[3, 4, 9]]
    assert torch.equal(layout.to_codes(layout.to_tokens(tuples)), tuples)


def test_items_and_training_windows_become_code_tokens():
    sid = SemanticIds(codes=np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]]), level_sizes=(2, 2, 2),
                      config=SemanticIdConfig(n_levels=2, codebook_size=2))
    # offsets (1, 3, 5): item 1 -> (1, 4, 5), item 2 -> (2, 3, 5), item 3 -> (2, 3, 6)
    assert sid.items_to_tokens(torch.tensor([[0, 1, 3]])).tolist() == [[0, 0, 0, 1, 4, 5, 2, 3, 6]]
    inputs, targets = torch.tensor([[0, 1, 3]]), torch.tensor([[0, 3, 2]])
    tokens, token_targets = sid.window_tokens(inputs, targets)
    assert tokens.tolist() == [[0, 0, 0, 1, 4, 5, 2, 3, 6, 2, 3]]
    assert token_targets.tolist() == [[0, 0, 0, 0, 0, 2, 3, 6, 2, 3, 5]]
    with pytest.raises(ValueError, match="window 0: a target must be the next input item"):
        sid.window_tokens(inputs, torch.tensor([[0, 2, 2]]))
    with pytest.raises(ValueError, match="outside 0..3"):
        sid.items_to_tokens(torch.tensor([[4]]))


def test_save_and_load_round_trip_without_pickle(tmp_path):
    sid = build_semantic_ids(clustered_vectors(40), SemanticIdConfig(n_levels=2, codebook_size=4, seed=2))
    path = sid.save(tmp_path / "ids.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) >= {"codes", "level_sizes", "config", "stats"}
    loaded = SemanticIds.load(path)
    np.testing.assert_array_equal(loaded.codes, sid.codes)
    assert loaded.level_sizes == sid.level_sizes and loaded.config == sid.config
    assert loaded.stats == sid.stats
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz is not a readable .npz"):
        SemanticIds.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        SemanticIds.load(tmp_path / "missing.npz")


def test_item_vectors_use_the_train_split_only(small_interactions):
    inter = small_interactions
    cfg = ItemVectorConfig(svd_dim=4, seed=1)
    iv = build_item_vectors(inter.table, inter.catalog, inter.n_items, cfg)
    assert iv.vectors.shape[0] == inter.n_items + 1 and (iv.vectors[0] == 0).all()
    assert set(iv.blocks) == {"collaborative", "genres", "year"} and iv.blocks["collaborative"] == (0, 4)
    assert iv.stats["n_genres"] == 4
    # scrambling the held-out events changes nothing; the train events do
    table = inter.table.copy()
    held_out = table["split"] != "train"
    table.loc[held_out, "item_idx"] = np.int32(1)
    np.testing.assert_array_equal(build_item_vectors(table, inter.catalog, inter.n_items, cfg).vectors, iv.vectors)
    table.loc[~held_out, "item_idx"] = np.roll(table.loc[~held_out, "item_idx"].to_numpy(), 7)
    assert not np.allclose(build_item_vectors(table, inter.catalog, inter.n_items, cfg).vectors, iv.vectors)
    np.testing.assert_array_equal(build_item_vectors(inter.table, inter.catalog, inter.n_items, cfg).vectors,
                                  iv.vectors)


def test_item_vector_blocks_are_scaled_and_weighted(small_interactions):
    inter = small_interactions
    iv = build_item_vectors(inter.table, inter.catalog, inter.n_items,
                            ItemVectorConfig(svd_dim=4, genre_weight=2.0, year_weight=0.0))
    assert "year" not in iv.blocks
    g0, g1 = iv.blocks["genres"]
    genres = iv.vectors[1:, g0:g1]
    np.testing.assert_allclose(genres.mean(axis=0), 0, atol=1e-6)
    assert np.sqrt((genres ** 2).sum(axis=1).mean()) == pytest.approx(2.0, rel=1e-5)
    only_collab = build_item_vectors(inter.table, None, inter.n_items, ItemVectorConfig(svd_dim=4))
    assert set(only_collab.blocks) == {"collaborative"}


def test_item_vectors_reject_bad_input(small_interactions):
    inter = small_interactions
    with pytest.raises(ValueError, match=r"lack columns \['split'\]"):
        build_item_vectors(inter.table.drop(columns="split"), inter.catalog, inter.n_items)
    with pytest.raises(ValueError, match="'item_idx' holds 31, outside 1..30"):
        bad = inter.table.copy()
        bad.loc[bad.index[0], "item_idx"] = 31
        build_item_vectors(bad, inter.catalog, inter.n_items)
    with pytest.raises(ValueError, match=r"catalog lacks columns \['genres'\]"):
        build_item_vectors(inter.table, inter.catalog.drop(columns="genres"), inter.n_items)
    with pytest.raises(ValueError, match="vectors of item_idx 2 are not finite"):
        v = np.zeros((4, 2))
        v[2, 1] = np.nan
        build_semantic_ids(v)


def test_embedding_item_vectors_cluster_items_by_direction_not_by_norm():
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(2, 8))
    scale = rng.uniform(0.5, 20.0, size=(40, 1))  # the norms a popularity-driven embedding might have
    embeddings = np.vstack([np.zeros(8), np.repeat(directions, 20, axis=0) * scale])
    iv = embedding_item_vectors(embeddings)
    assert iv.vectors.shape == (41, 8) and not iv.vectors[0].any() and iv.blocks == {"embedding": (0, 8)}
    np.testing.assert_allclose(iv.vectors[1:].mean(axis=0), 0, atol=1e-6)
    ids = build_semantic_ids(iv.vectors, SemanticIdConfig(n_levels=1, codebook_size=2))
    assert len(set(ids.codes[1:21, 0])) == 1 and len(set(ids.codes[21:, 0])) == 1  # one code per direction
    assert ids.codes[1, 0] != ids.codes[21, 0]


def test_embedding_item_vectors_reject_what_cannot_tell_items_apart():
    with pytest.raises(ValueError, match="the embedding of item_idx 2 is not finite"):
        e = np.ones((4, 3))
        e[2, 0] = np.inf
        embedding_item_vectors(e)
    with pytest.raises(ValueError, match="all equal"):
        embedding_item_vectors(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"must be \[n_items \+ 1, d\]"):
        embedding_item_vectors(np.ones(3))


def test_prefix_keys_are_equal_exactly_where_tuples_share_their_first_codes():
    """TokenLayout.prefix_keys: at l, one number per prefix of codes 0..l-1 (all tuples share the empty one)."""
    layout = TokenLayout((3, 4, 2))
    tuples = torch.cartesian_prod(*(torch.arange(s) for s in layout.level_sizes))  # [24, 3] every tuple
    keys = layout.prefix_keys(tuples)
    assert keys.shape == (24, 4)
    for level in range(4):
        same_prefix = (tuples[:, None, :level] == tuples[None, :, :level]).all(-1)
        assert torch.equal(keys[:, None, level] == keys[None, :, level], same_prefix)
    assert layout.prefix_keys(tuples[:, :0]).shape == (24, 1)  # no codes yet: the empty prefix
