"""The logging simulator: written propensities are the real exposure probabilities, data-contract
compliance, determinism, and the configured noise level / tail weight of the observed rewards."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recmodels.data.interactions import build_interactions
from recmodels.data.quality import BLOCKING_CHECKS, reward_checks
from recmodels.data.raw_logs import validate_catalog, validate_raw_logs
from recmodels.data.rewards import RewardSpec
from recmodels.data.simulator import GENRE_NAMES, SimulatorConfig, sample_exposures, simulate_logs
from recmodels.data.sources import load_raw_logs
from recmodels.data.oracle import Oracle

SMALL = dict(n_users=200, n_items=80, dim=8, events_per_user=(3, 12))


def binomial_tolerance(p: np.ndarray, n: int) -> np.ndarray:
    """Five standard errors of an empirical frequency over n draws (plus a hair for p near 0)."""
    return 5 * np.sqrt(p * (1 - p) / n) + 1e-3


def residuals_near_the_middle(config: SimulatorConfig, band: float = 0.3) -> np.ndarray:
    """reward - mu for the events with |mu| < band, where the clip to [-1, 1] cannot bite."""
    sim = simulate_logs(config)
    mu = sim.oracle.true_reward(sim.logs["user_id"], sim.logs["item_id"])
    reward = (sim.logs["rating"].to_numpy() - 3) / 2
    return (reward - mu)[np.abs(mu) < band]


# --- propensities ---------------------------------------------------------------------------------

def test_logged_propensities_match_exposure_frequencies_across_users():
    # kappa = 0: the logging policy is popularity only, so every user's first event and every
    # second event after the same first item are draws from one shared context.
    sim = simulate_logs(SimulatorConfig(n_users=20_000, n_items=12, dim=4, events_per_user=(2, 2),
                                        kappa=0.0, zipf_exponent=0.8, seed=3))
    logs = sim.logs.assign(step=lambda d: d.groupby("user_id").cumcount())
    first = logs[logs["step"] == 0]
    written = first.groupby("item_id")["propensity"].agg(["min", "max"])
    np.testing.assert_allclose(written["min"], written["max"], rtol=1e-12)  # one context, one value per item
    freq = first["item_id"].value_counts(normalize=True).reindex(written.index)
    assert np.all(np.abs(freq - written["max"]) < binomial_tolerance(written["max"].to_numpy(), len(first)))
    assert written["max"].sum() == pytest.approx(1.0, abs=1e-9)  # every item was drawn first by someone

    after_top = logs[(logs["step"] == 1) & logs["user_id"].isin(first.loc[first["item_id"] == "i01", "user_id"])]
    assert "i01" not in set(after_top["item_id"])  # never shown twice
    written2 = after_top.groupby("item_id")["propensity"].first()
    freq2 = after_top["item_id"].value_counts(normalize=True).reindex(written2.index)
    assert np.all(np.abs(freq2 - written2) < binomial_tolerance(written2.to_numpy(), len(after_top)))
    # renormalized over the unseen items: larger than the same item's first-step propensity
    assert np.all(written2.to_numpy() > written["max"].reindex(written2.index).to_numpy())


def test_replaying_one_context_reproduces_the_written_propensities():
    sim = simulate_logs(SimulatorConfig(n_users=5, n_items=15, dim=4, kappa=3.0, seed=1))
    policy = sim.logging_policy
    n = 100_000
    scores = np.repeat(policy.scores(np.array([2])), n, axis=0)  # one user's context, replayed n times
    items, propensity = sample_exposures(scores, 3, np.random.default_rng(0))
    assert items.shape == propensity.shape == (n, 3)
    assert all(len(set(row)) == 3 for row in items[:1000])  # without replacement

    shown: list[int] = []
    rows = np.ones(n, dtype=bool)
    for step in range(3):
        exact = policy.probabilities(2, shown)
        picked = items[rows, step]
        np.testing.assert_allclose(propensity[rows, step], exact[picked], rtol=1e-9)
        freq = np.bincount(picked, minlength=len(exact)) / len(picked)
        assert np.all(np.abs(freq - exact) < binomial_tolerance(exact, len(picked)))
        top = int(np.argmax(freq))  # condition the next step on the most frequent draw
        shown.append(top)
        rows &= items[:, step] == top
    assert rows.sum() > 1000


def test_logged_propensities_are_the_logging_policy_probabilities_given_the_history():
    sim = simulate_logs(SimulatorConfig(**SMALL, kappa=2.0, seed=4))
    oracle, policy = sim.oracle, sim.logging_policy
    for user_id, events in list(sim.logs.groupby("user_id", sort=True))[:15]:
        user = int(oracle.user_rows([user_id])[0])
        items = oracle.item_rows(events["item_id"])
        expected = [policy.probabilities(user, items[:t])[items[t]] for t in range(len(items))]
        np.testing.assert_allclose(events["propensity"].to_numpy(), expected, rtol=1e-9)


def test_logging_policy_overexposes_popular_and_relevant_items():
    config = SimulatorConfig(n_users=600, n_items=300, dim=8, events_per_user=(10, 20), kappa=2.0, seed=2)
    sim = simulate_logs(config)
    counts = sim.logs["item_id"].value_counts()
    top10_share = counts.reindex(sim.oracle.item_ids[:10]).fillna(0).sum() / len(sim.logs)
    assert top10_share > 5 * 10 / config.n_items  # the 10 most popular items: far above a uniform share
    logged = sim.oracle.true_reward(sim.logs["user_id"], sim.logs["item_id"]).mean()
    everything = sim.oracle.reward_matrix(np.arange(config.n_users)).mean()
    assert logged > everything + 0.1  # exposure follows (noisy) relevance


def test_sample_exposures_rejects_more_steps_than_items():
    with pytest.raises(ValueError, match=r"n_steps must lie in \[1, 4\].*got 5"):
        sample_exposures(np.zeros((2, 4)), 5, np.random.default_rng(0))


# --- contract, determinism ------------------------------------------------------------------------

def test_logs_follow_the_raw_log_contract():
    sim = simulate_logs(SimulatorConfig(**SMALL, seed=5))
    logs = sim.logs
    assert list(logs.columns) == ["user_id", "item_id", "timestamp", "rating", "propensity"]
    pd.testing.assert_frame_equal(validate_raw_logs(logs, where="sim"), logs)
    assert logs["rating"].between(1, 5).all()
    assert ((logs["propensity"] > 0) & (logs["propensity"] <= 1)).all()
    per_user = logs.groupby("user_id")
    assert per_user["timestamp"].apply(lambda t: bool(np.all(np.diff(t.to_numpy()) > 0))).all()
    assert not logs.duplicated(["user_id", "item_id"]).any()
    assert per_user.size().between(3, 12).all() and logs["user_id"].nunique() == 200
    catalog = validate_catalog(sim.catalog, where="sim catalog")
    assert list(catalog["item_id"]) == list(sim.oracle.item_ids) and len(catalog) == 80
    assert set("|".join(catalog["genres"]).split("|")) <= set(GENRE_NAMES[:6])
    assert catalog["year"].notna().all()


def test_integer_ratings_are_on_1_to_5():
    logs = simulate_logs(SimulatorConfig(**SMALL, integer_ratings=True)).logs
    assert logs["rating"].dtype == np.int64 and set(logs["rating"]) <= {1, 2, 3, 4, 5}


def test_same_seed_same_logs_different_seed_different_logs():
    a, b = simulate_logs(SimulatorConfig(**SMALL, seed=7)), simulate_logs(SimulatorConfig(**SMALL, seed=7))
    pd.testing.assert_frame_equal(a.logs, b.logs)
    pd.testing.assert_frame_equal(a.catalog, b.catalog)
    np.testing.assert_array_equal(a.oracle.user_vectors, b.oracle.user_vectors)
    c = simulate_logs(SimulatorConfig(**SMALL, seed=8))
    assert not a.logs["item_id"].equals(c.logs["item_id"])
    assert not np.allclose(a.oracle.item_vectors, c.oracle.item_vectors)


def test_simulator_source_passes_the_data_layer_and_its_blocking_checks(tmp_path):
    raw = load_raw_logs("simulator", cache_dir=tmp_path, simulator={**SMALL, "seed": 6})
    assert raw.name == "simulator" and raw.catalog is not None
    oracle = Oracle.from_dict(raw.oracle)
    assert oracle.n_users == 200 and oracle.n_items == 80
    spec = RewardSpec()
    interactions = build_interactions(raw, spec)
    table = interactions.table
    assert table["reward"].between(-1, 1).all() and "propensity" in table.columns
    outcomes = {o.name: o for o in reward_checks(table, spec)}
    for name in BLOCKING_CHECKS:
        assert outcomes[name].passed, outcomes[name].description
    assert set(table["split"]) == {"train", "valid", "test"}


def test_simulator_source_rejects_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match=r"raw-log source 'simulator': unknown settings \['n_userz'\]"):
        load_raw_logs("simulator", cache_dir=tmp_path, simulator={"n_userz": 10})


@pytest.mark.parametrize("override, message", [
    ({"noise_kind": "cauchy"}, "noise_kind must be one of"),
    ({"noise_kind": "student_t", "student_df": 2.0}, "student_df must be > 2"),
    ({"events_per_user": (5, 2)}, "events_per_user must be"),
    ({"exposure_temperature": 0.0}, "exposure_temperature must be > 0"),
    ({"n_items": 0}, "n_items must be >= 1"),
])
def test_bad_config_is_rejected_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        SimulatorConfig(**override)


# --- observed reward noise ------------------------------------------------------------------------

NOISY = dict(n_users=1500, n_items=200, dim=8, events_per_user=(20, 20), seed=11)


def test_noise_level_sets_the_spread_of_observed_rewards_around_mu():
    exact = residuals_near_the_middle(SimulatorConfig(**NOISY, noise=0.0))
    assert np.abs(exact).max() < 1e-12  # noise 0: the observed reward is mu
    for noise in (0.05, 0.2):
        r = residuals_near_the_middle(SimulatorConfig(**NOISY, noise=noise))
        assert len(r) > 5000
        assert r.std() == pytest.approx(noise, rel=0.05)
        assert abs(r.mean()) < 4 * noise / np.sqrt(len(r))


def test_student_t_noise_has_heavier_tails_at_the_same_scale():
    gauss = residuals_near_the_middle(SimulatorConfig(**NOISY, noise=0.08))
    heavy = residuals_near_the_middle(SimulatorConfig(**NOISY, noise=0.08, noise_kind="student_t",
                                                       student_df=3.0))
    assert gauss.std() == pytest.approx(0.08, rel=0.05)
    assert heavy.std() == pytest.approx(0.08, rel=0.25)  # same std; t(3) has no 4th moment, so loose
    assert abs(stats.kurtosis(gauss)) < 0.3
    assert stats.kurtosis(heavy) > 3.0
    assert np.mean(np.abs(heavy) > 3 * 0.08) > 3 * np.mean(np.abs(gauss) > 3 * 0.08)


def test_reward_noise_changes_only_the_observed_rewards():
    # the robustness study pretrains once for every noise level: that needs the same logged items
    base = simulate_logs(SimulatorConfig(**SMALL, noise=0.1, seed=9)).logs
    for override in ({"noise": 1.0}, {"noise": 0.0}, {"noise": 0.5, "noise_kind": "student_t"}):
        other = simulate_logs(SimulatorConfig(**SMALL, seed=9, **override)).logs
        pd.testing.assert_frame_equal(other[["user_id", "item_id", "propensity"]],
                                      base[["user_id", "item_id", "propensity"]])
        assert not np.allclose(other["rating"], base["rating"])
        same_order = other.groupby("user_id")["timestamp"].rank().equals(base.groupby("user_id")["timestamp"].rank())
        assert same_order  # chronological order (hence the leave-one-out split) is unchanged
