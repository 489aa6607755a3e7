"""The oracle: hand-computed true rewards, list rewards, the best-list upper bound and its storage."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from recmodels.data.simulator import SimulatorConfig, simulate_logs
from recmodels.data.oracle import Oracle


def tiny_oracle() -> Oracle:
    # mu = tanh(0.5 * (p.q + b_u + b_i))
    return Oracle(user_ids=["7", "alice"], item_ids=["a", "b", "c"],
                  user_vectors=[[1.0, 0.0], [0.0, 2.0]], item_vectors=[[1.0, 1.0], [-1.0, 0.5], [2.0, -1.0]],
                  user_bias=[0.0, -0.5], item_bias=[0.2, 0.0, 0.0], affinity_scale=0.5)


def test_true_reward_matches_hand_computation():
    oracle = tiny_oracle()
    got = oracle.true_reward(["7", "7", "alice", "alice"], ["a", "c", "b", "c"])
    expected = np.tanh(0.5 * np.array([1.0 + 0.2, 2.0, 1.0 - 0.5, -2.0 - 0.5]))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(oracle.reward_matrix(np.array([1]))[0],
                               np.tanh(0.5 * np.array([2.0 - 0.5 + 0.2, 1.0 - 0.5, -2.0 - 0.5])))


def test_list_true_reward_is_each_lists_mean_and_accepts_ragged_lists():
    oracle = tiny_oracle()
    got = oracle.list_true_reward(["7", "alice"], [["a", "b", "c"], ["b"]])
    np.testing.assert_allclose(got, [oracle.true_reward(["7"] * 3, ["a", "b", "c"]).mean(),
                                     oracle.true_reward(["alice"], ["b"])[0]])
    with pytest.raises(ValueError, match="the list of user 'alice' is empty"):
        oracle.list_true_reward(["7", "alice"], [["a"], []])
    with pytest.raises(ValueError, match="2 user ids but 1 lists"):
        oracle.list_true_reward(["7", "alice"], [["a"]])


def test_best_list_is_the_brute_force_best_with_exclusions_and_candidates():
    oracle = tiny_oracle()
    rewards = oracle.reward_matrix(np.array([0, 1]))
    for user in (0, 1):
        brute = max(np.mean(rewards[user, list(c)]) for c in itertools.combinations(range(3), 2))
        assert oracle.best_list_reward([oracle.user_ids[user]], 2)[0] == pytest.approx(brute)
    lists, value = oracle.best_lists(["7"], 2, exclude={"7": ["c"]})
    assert lists == [["a", "b"]]  # c (the best for "7") is excluded; a before b by true reward
    assert value[0] == pytest.approx(rewards[0, :2].mean())
    lists, _ = oracle.best_lists(["7", "alice"], 1, exclude=[[], ["a"]], candidates=["a", "b"])
    assert lists == [["a"], ["b"]]


def test_best_list_reward_bounds_random_and_logged_lists():
    sim = simulate_logs(SimulatorConfig(n_users=150, n_items=60, dim=8, events_per_user=(12, 20), seed=0))
    oracle, logs = sim.oracle, sim.logs
    users = oracle.user_ids
    k = 10
    best = oracle.best_list_reward(users, k)
    rng = np.random.default_rng(0)
    for _ in range(20):
        random_lists = [rng.choice(oracle.item_ids, size=k, replace=False) for _ in users]
        assert np.all(best >= oracle.list_true_reward(users, random_lists) - 1e-12)
    logged = logs.groupby("user_id", sort=True)["item_id"].apply(list)
    assert np.all(best >= oracle.list_true_reward(logged.index, [items[:k] for items in logged]) - 1e-12)
    # excluding what each user has seen can only lower the bound, and the lists avoid the seen items
    seen = {u: items for u, items in logged.items()}
    lists, unseen_best = oracle.best_lists(users, k, exclude=seen)
    assert np.all(unseen_best <= best + 1e-12)
    assert all(not set(lst) & set(seen[u]) for u, lst in zip(users, lists))


def test_unknown_ids_and_too_few_items_are_rejected():
    oracle = tiny_oracle()
    with pytest.raises(KeyError, match="unknown user id 'bob'"):
        oracle.true_reward(["bob"], ["a"])
    with pytest.raises(KeyError, match="unknown item id 'zz'"):
        oracle.list_true_reward(["7"], [["a", "zz"]])
    with pytest.raises(ValueError, match="user 'alice' has only 1 candidate items left, fewer than k=2"):
        oracle.best_list_reward(["7", "alice"], 2, exclude={"alice": ["a", "b"]})
    with pytest.raises(ValueError, match="item_vectors has 2 rows, expected 3"):
        Oracle(user_ids=["u"], item_ids=["a", "b", "c"], user_vectors=[[1.0]], item_vectors=[[1.0], [2.0]],
               user_bias=[0.0], item_bias=[0.0, 0.0, 0.0], affinity_scale=1.0)


def test_save_load_round_trip(tmp_path):
    oracle = simulate_logs(SimulatorConfig(n_users=30, n_items=20, dim=4, seed=2)).oracle
    path = oracle.save(tmp_path / "sub" / "oracle.npz")
    assert path == tmp_path / "sub" / "oracle.npz" and path.is_file()
    loaded = Oracle.load(path)
    for name in ("user_ids", "item_ids", "user_vectors", "item_vectors", "user_bias", "item_bias"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(oracle, name))
    assert loaded.affinity_scale == oracle.affinity_scale
    users, items = oracle.user_ids[[0, 5, 9]], oracle.item_ids[[3, 3, 7]]
    np.testing.assert_array_equal(loaded.true_reward(users, items), oracle.true_reward(users, items))


def test_dict_round_trip_is_json_friendly():
    oracle = tiny_oracle()
    again = Oracle.from_dict(json.loads(json.dumps(oracle.to_dict())))
    np.testing.assert_array_equal(again.reward_matrix(np.arange(2)), oracle.reward_matrix(np.arange(2)))
    with pytest.raises(ValueError, match=r"missing keys \['item_bias'\]"):
        Oracle.from_dict({k: v for k, v in oracle.to_dict().items() if k != "item_bias"})


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="oracle file .*nope.npz does not exist"):
        Oracle.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="oracle file .*bad.npz is corrupt or unreadable"):
        Oracle.load(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, user_ids=np.array(["u"]))
    with pytest.raises(ValueError, match="oracle file .*partial.npz: oracle dict is missing keys"):
        Oracle.load(partial)
