"""The prefix trie admits exactly the catalog's tuples."""
import itertools

import numpy as np
import pytest
import torch

from recmodels.tokenization import ItemTrie

# level sizes (2, 3, 2); items 1..4
CODES = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 2, 0], [1, 1, 0]])
SIZES = (2, 3, 2)


def random_catalog(n_items=300, sizes=(8, 8, 8, 4), seed=0):
    rng = np.random.default_rng(seed)
    space = np.array(list(itertools.product(*(range(s) for s in sizes))))
    picked = space[rng.choice(len(space), n_items, replace=False)]
    return np.vstack([np.zeros((1, len(sizes)), np.int64), picked]), space


def test_trie_admits_exactly_the_catalog():
    codes, space = random_catalog()
    trie = ItemTrie(codes, (8, 8, 8, 4))
    np.testing.assert_array_equal(trie.lookup(torch.as_tensor(codes[1:])).numpy(), np.arange(1, 301))
    item_of = {tuple(row): i + 1 for i, row in enumerate(codes[1:].tolist())}
    expected = np.array([item_of.get(tuple(row), 0) for row in space.tolist()])
    np.testing.assert_array_equal(trie.lookup(torch.as_tensor(space)).numpy(), expected)
    assert (expected == 0).sum() == len(space) - 300  # every non-item tuple rejected
    assert tuple(codes[7]) in trie and (9, 0, 0, 0) not in trie and (0, 0, 0, -1) not in trie


def test_walking_the_trie_gives_the_admitted_codes_and_item_counts():
    trie = ItemTrie(CODES, SIZES)
    root = trie.root(())
    assert trie.allowed(0, root).tolist() == [True, True]
    assert trie.completions(0, root).tolist() == [3, 1]
    node0 = trie.advance(0, root, torch.tensor(0))
    assert trie.allowed(1, node0).tolist() == [True, False, True]
    assert trie.completions(1, node0).tolist() == [2, 0, 1]
    node00 = trie.advance(1, node0, torch.tensor(0))
    assert trie.allowed(2, node00).tolist() == [True, True]
    assert int(trie.advance(2, node00, torch.tensor(1))) == 2  # the last level names the item
    dead = trie.advance(1, node0, torch.tensor(1))  # (0, 1) is no prefix of an item
    assert not trie.allowed(2, dead).any() and int(trie.advance(2, dead, torch.tensor(0))) == 0


def test_batched_walk_matches_lookup():
    codes, space = random_catalog(n_items=20, sizes=(4, 4, 3), seed=1)
    trie = ItemTrie(codes, (4, 4, 3))
    nodes = trie.root((len(space),))
    for level in range(3):
        nodes = trie.advance(level, nodes, torch.as_tensor(space[:, level]))
    assert torch.equal(nodes, trie.lookup(torch.as_tensor(space)))


def test_trie_rejects_duplicate_or_out_of_range_codes():
    with pytest.raises(ValueError, match="not unique per item"):
        ItemTrie(np.array([[0, 0], [1, 1], [1, 1]]), (2, 2))
    with pytest.raises(ValueError, match="item_idx 2 has code 3 outside level 1's 0..1"):
        ItemTrie(np.array([[0, 0], [1, 1], [1, 3]]), (2, 2))
    with pytest.raises(ValueError, match="end in a dimension of 3 codes"):
        ItemTrie(CODES, SIZES).lookup(torch.zeros(2, 2, dtype=torch.long))
