"""Simulated, exposure-biased logs with known ground truth (docs/design.md §6).

The world, drawn from `seed`:
- latent vectors p_u, q_i ~ N(0, I / sqrt(d)) (so p_u . q_i has unit variance) and biases
  b_u, b_i ~ N(0, bias_std^2);
- true mean reward on the reward scale r = (rating - 3) / 2, held by the `Oracle`:
  mu(u, i) = tanh(affinity_scale * (p_u . q_i + b_u + b_i)) in (-1, 1), i.e. rating 3 + 2 mu;
- Zipf item popularity: the item of popularity rank k (item_id "i..k", k = 1 the most popular)
  has pop_k proportional to k ** -zipf_exponent.

The logging policy (the production recommender that decides what users are shown) knows relevance
only noisily: its vectors are p_u + e_u and q_i + e_i with e ~ N(0, relevance_noise^2 I / sqrt(d)),
giving relevance_hat(u, i) = tanh(affinity_scale * ((p_u + e_u) . (q_i + e_i) + b_u + b_i)).
Its score is s(u, i) = (log pop_i + kappa * relevance_hat(u, i)) / exposure_temperature, and each
logged event's item is drawn from the softmax of s(u, .) over the items u has not been shown yet:

    P(a_t = i | a_1..a_{t-1}) = exp(s(u, i)) / sum_{j not in {a_1..a_{t-1}}} exp(s(u, j))

That probability is written as `propensity`. All draws of a user at once are the Gumbel-top-k of
s(u, .) + Gumbel noise (sorting the perturbed scores is exactly sequential sampling without
replacement), computed for a chunk of users at a time: no Python loop over events.

Observed feedback: reward = clip(mu + eps, -1, 1) with eps of standard deviation `noise` (Gaussian,
or Student t with `student_df` degrees of freedom rescaled to the same std: heavier tails), and
rating = 3 + 2 * reward, continuous in [1, 5] (or rounded to 1..5 with `integer_ratings`). The
clip makes E[reward] differ slightly from mu near the ends of the scale. Timestamps increase per
user by 1 minute to 2 days. The catalog gives every item a title, one or two genres (the genre
directions its q_i points to most) and a year.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recmodels.data.oracle import RATING_CENTER, RATING_SCALE, Oracle

NOISE_KINDS = ("gaussian", "student_t")
GENRE_NAMES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Documentary", "Animation",
               "Thriller", "Western")
CHUNK_ENTRIES = 2_000_000  # users x items scored at once while sampling exposures
START_TIME = 1_600_000_000  # first events fall in the 180 days after this (epoch seconds)
GAP_SECONDS = (60, 2 * 86_400)  # time between a user's consecutive events


@dataclass
class SimulatorConfig:
    n_users: int = 3000
    n_items: int = 1500
    dim: int = 16  # latent dimension d
    events_per_user: tuple[int, int] = (10, 57)  # inclusive range; default mean 33.5 -> ~100k events
    zipf_exponent: float = 1.0
    affinity_scale: float = 1.0  # mu = tanh(affinity_scale * (p.q + b_u + b_i))
    bias_std: float = 0.3
    noise: float = 0.3  # std of the observed reward noise, on the reward scale
    noise_kind: str = "gaussian"  # "gaussian" | "student_t"
    student_df: float = 3.0  # degrees of freedom of the Student t noise (> 2)
    kappa: float = 2.0  # weight of the noisy relevance in the logging policy
    relevance_noise: float = 0.5  # noise of the logging policy's latent vectors (relative to theirs)
    exposure_temperature: float = 1.0
    integer_ratings: bool = False  # round ratings to 1..5
    n_genres: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        self.events_per_user = tuple(int(n) for n in self.events_per_user)
        for name in ("n_users", "n_items", "dim", "n_genres"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SimulatorConfig.{name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.events_per_user
        if not 1 <= lo <= hi:
            raise ValueError(f"SimulatorConfig.events_per_user must be (low, high) with 1 <= low <= high, "
                             f"got {self.events_per_user}")
        if self.n_genres > len(GENRE_NAMES):
            raise ValueError(f"SimulatorConfig.n_genres must be <= {len(GENRE_NAMES)}, got {self.n_genres}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"SimulatorConfig.noise_kind must be one of {list(NOISE_KINDS)}, "
                             f"got {self.noise_kind!r}")
        if self.noise_kind == "student_t" and not self.student_df > 2:
            raise ValueError(f"SimulatorConfig.student_df must be > 2 (finite variance), got {self.student_df}")
        for name in ("noise", "zipf_exponent", "bias_std", "relevance_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SimulatorConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.exposure_temperature > 0:
            raise ValueError(f"SimulatorConfig.exposure_temperature must be > 0, got {self.exposure_temperature}")


@dataclass
class LoggingPolicy:
    """The logging policy's scores; users and items are rows of the oracle's user_ids / item_ids."""

    log_popularity: np.ndarray  # [I]
    user_vectors: np.ndarray  # [U, d] p_u + e_u
    item_vectors: np.ndarray  # [I, d] q_i + e_i
    user_bias: np.ndarray  # [U]
    item_bias: np.ndarray  # [I]
    affinity_scale: float
    kappa: float
    temperature: float

    def relevance(self, users: np.ndarray) -> np.ndarray:
        """relevance_hat of every item for each user row: [n] -> [n, I]."""
        logits = self.user_vectors[users] @ self.item_vectors.T
        logits += self.user_bias[users, None] + self.item_bias[None, :]
        return np.tanh(self.affinity_scale * logits)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """s(u, i) = (log pop_i + kappa * relevance_hat(u, i)) / temperature: [n] -> [n, I]."""
        return (self.log_popularity[None, :] + self.kappa * self.relevance(users)) / self.temperature

    def probabilities(self, user: int, shown) -> np.ndarray:
        """The distribution of user row `user`'s next logged item given the item rows already shown: [I]."""
        s = self.scores(np.array([user]))[0]
        s[np.asarray(shown, dtype=np.int64)] = -np.inf
        w = np.exp(s - s.max())
        return w / w.sum()


@dataclass
class SimulatedLogs:
    logs: pd.DataFrame  # user_id, item_id, timestamp, rating, propensity; sorted by user then time
    catalog: pd.DataFrame  # item_id, title, genres, year
    oracle: Oracle
    logging_policy: LoggingPolicy


def sample_exposures(scores: np.ndarray, n_steps: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`n_steps` draws without replacement from softmax(scores[u]) for every row u at once.

    scores [n, I] -> (items [n, n_steps] in draw order, propensity [n, n_steps]), where
    propensity[u, t] = exp(scores[u, a_t]) / sum over items not among a_<t of exp(scores[u, .]).
    """
    n, m = scores.shape
    if not 1 <= n_steps <= m:
        raise ValueError(f"sample_exposures: n_steps must lie in [1, {m}] (the number of items), got {n_steps}")
    shifted = scores - scores.max(axis=1, keepdims=True)
    keys = rng.random(size=(n, m))  # u ~ U[0, 1); keys become -(shifted + Gumbel) = log(-log u) - shifted
    with np.errstate(divide="ignore"):  # u == 0 gives key +inf: never drawn (probability 2^-53)
        np.log(keys, out=keys)
        np.negative(keys, out=keys)
        np.log(keys, out=keys)
    keys -= shifted  # the smallest keys are the draws, in order
    top = np.argpartition(keys, n_steps - 1, axis=1)[:, :n_steps] if n_steps < m \
        else np.tile(np.arange(m), (n, 1))
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    items = np.take_along_axis(top, order, axis=1)  # [n, n_steps]
    weights = np.exp(shifted)  # [n, I]
    drawn = np.take_along_axis(weights, items, axis=1)  # [n, n_steps]
    np.put_along_axis(weights, items, 0.0, axis=1)
    never_drawn = weights.sum(axis=1, keepdims=True)  # [n, 1]
    # mass still available at step t = never-drawn mass + mass of the items drawn at steps >= t
    available = never_drawn + np.cumsum(drawn[:, ::-1], axis=1)[:, ::-1]
    propensity = np.minimum(drawn / available, 1.0)
    if not (propensity > 0).all():
        raise ValueError("sample_exposures: a propensity underflowed to 0; the score spread is too large "
                         "for float64 (raise exposure_temperature)")
    return items, propensity


def _draw_world(config: SimulatorConfig, rng: np.random.Generator) -> tuple[Oracle, LoggingPolicy, np.ndarray]:
    U, I, d = config.n_users, config.n_items, config.dim
    latent_std = d ** -0.25  # p.q = sum of d products of variance d^-1 each
    user_vectors = rng.normal(0.0, latent_std, size=(U, d))
    item_vectors = rng.normal(0.0, latent_std, size=(I, d))
    user_bias = rng.normal(0.0, config.bias_std, size=U)
    item_bias = rng.normal(0.0, config.bias_std, size=I)
    noise_std = config.relevance_noise * latent_std
    policy_users = user_vectors + rng.normal(0.0, noise_std, size=(U, d))
    policy_items = item_vectors + rng.normal(0.0, noise_std, size=(I, d))
    genre_directions = rng.normal(size=(config.n_genres, d))
    genre_directions /= np.linalg.norm(genre_directions, axis=1, keepdims=True)
    popularity = np.arange(1, I + 1, dtype=np.float64) ** -config.zipf_exponent
    user_ids = _names("u", U)
    item_ids = _names("i", I)
    oracle = Oracle(user_ids=user_ids, item_ids=item_ids, user_vectors=user_vectors, item_vectors=item_vectors,
                    user_bias=user_bias, item_bias=item_bias, affinity_scale=config.affinity_scale)
    policy = LoggingPolicy(log_popularity=np.log(popularity / popularity.sum()), user_vectors=policy_users,
                           item_vectors=policy_items, user_bias=user_bias, item_bias=item_bias,
                           affinity_scale=config.affinity_scale, kappa=config.kappa,
                           temperature=config.exposure_temperature)
    return oracle, policy, genre_directions


def _names(prefix: str, n: int) -> np.ndarray:
    width = len(str(n))
    return np.array([f"{prefix}{k:0{width}d}" for k in range(1, n + 1)])


def _reward_noise(config: SimulatorConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """n noise draws of standard deviation config.noise."""
    if config.noise_kind == "gaussian":
        return config.noise * rng.standard_normal(n)
    df = config.student_df
    return config.noise * rng.standard_t(df, size=n) / np.sqrt(df / (df - 2.0))


def _catalog(config: SimulatorConfig, oracle: Oracle, genre_directions: np.ndarray,
             rng: np.random.Generator) -> pd.DataFrame:
    """Genres: the direction q_i points to most, plus the runner-up when it scores >= 0.8 of the best."""
    affinity = oracle.item_vectors @ genre_directions.T  # [I, G]
    ranked = np.argsort(-affinity, axis=1)
    first = ranked[:, 0]
    names = np.array(GENRE_NAMES[:config.n_genres])
    genres = names[first].astype(object)
    if config.n_genres > 1:
        second = ranked[:, 1]
        best = affinity[np.arange(len(first)), first]
        runner = affinity[np.arange(len(first)), second]
        two = (runner > 0) & (runner >= 0.8 * best)
        genres[two] = genres[two] + "|" + names[second[two]]
    years = rng.integers(1960, 2025, size=config.n_items)
    return pd.DataFrame({
        "item_id": pd.Series(oracle.item_ids, dtype=str),
        "title": pd.Series([f"Item {k}" for k in range(1, config.n_items + 1)], dtype=str),
        "genres": pd.Series(genres, dtype=str),
        "year": pd.Series(years, dtype="Int64"),
    })


def simulate_logs(config: SimulatorConfig | None = None) -> SimulatedLogs:
    """Raw logs (in the raw-log contract), the item catalog, the oracle and the logging policy.

    Deterministic for a config (seed included).
    """
    config = config or SimulatorConfig()
    rng = np.random.default_rng(config.seed)
    oracle, policy, genre_directions = _draw_world(config, rng)
    U, I = config.n_users, config.n_items
    lo, hi = config.events_per_user
    n_events = np.minimum(rng.integers(lo, hi + 1, size=U), I)  # a user cannot be shown more than I items
    start = START_TIME + rng.integers(0, 180 * 86_400, size=U)

    chunk = max(1, CHUNK_ENTRIES // I)
    users, items, propensity = [], [], []
    for s in range(0, U, chunk):
        rows = np.arange(s, min(s + chunk, U))
        steps = n_events[rows]
        drawn, prop = sample_exposures(policy.scores(rows), int(steps.max()), rng)
        keep = np.arange(drawn.shape[1])[None, :] < steps[:, None]  # [n, k]: row-major = user then step
        users.append(np.broadcast_to(rows[:, None], drawn.shape)[keep])
        items.append(drawn[keep])
        propensity.append(prop[keep])
    users, items, propensity = np.concatenate(users), np.concatenate(items), np.concatenate(propensity)

    mu = oracle.reward_from_rows(users, items)
    reward = np.clip(mu + _reward_noise(config, len(mu), rng), -1.0, 1.0)
    rating = RATING_CENTER + RATING_SCALE * reward
    if config.integer_ratings:
        rating = np.clip(np.rint(rating), 1, 5).astype(np.int64)

    gaps = rng.integers(GAP_SECONDS[0], GAP_SECONDS[1] + 1, size=len(users))
    elapsed = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(n_events)[:-1]])  # each user's first event row
    timestamp = start[users] + elapsed - np.repeat(elapsed[first] - gaps[first], n_events)

    logs = pd.DataFrame({
        "user_id": pd.Series(oracle.user_ids[users], dtype=str),
        "item_id": pd.Series(oracle.item_ids[items], dtype=str),
        "timestamp": timestamp.astype(np.int64),
        "rating": rating,
        "propensity": propensity.astype(np.float64),
    })
    catalog = _catalog(config, oracle, genre_directions, rng)
    return SimulatedLogs(logs=logs, catalog=catalog, oracle=oracle, logging_policy=policy)
