"""Promotion gates: should a challenger policy replace the champion?

Both policies are ranked on the current data's `valid` split (never test): the same users, full
catalog, history masked. A policy may have been trained on another catalog (the champion of an
earlier run), so each is evaluated through its own item-id -> token mapping: history events of
items it does not know are dropped, and a held-out item it does not know counts as a miss.

A challenger is promoted when every gate passes:
- `blocking_data_checks`: every blocking data check upstream passed on the data in use;
- `hallucination_rate`: its share of generated items that are no item stays at or under a ceiling
  (atomic tokens cannot hallucinate: an absent rate is 0);
- `beats_champion`: paired per-user difference (challenger - champion) of the main metric has a
  mean above the half width of its bootstrap interval;
- `reward_alignment`: the mean difference of the reward-alignment metric is >= -tolerance.
Without a champion (the first promotion) the two comparison gates pass: the best challenger wins.

Each policy is ranked by its tokenization (`ItemTokenization.rank`, masked protocol only): semantic-ID
policies with constrained beam search (a target outside the beams is a miss) and their hallucination
rate with unconstrained beam search, both on the same split (see `recmodels.evaluation.evaluate`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd

from recmodels.data.sequences import build_user_sequences, eval_examples
from recmodels.evaluation.metrics import MISS_RANK, paired_bootstrap_diff, per_user_metrics
from recmodels.tokenization.items import tokenization_for

GATES = ("blocking_data_checks", "hallucination_rate", "beats_champion", "reward_alignment")


@dataclass
class GateConfig:
    metric: str = "ndcg@10"  # main metric, a column of per_user_metrics
    alignment_metric: str = "reward_weighted_ndcg@10"
    alignment_tolerance: float = 0.0  # the challenger may be at most this much worse on alignment
    hallucination_ceiling: float = 0.05
    n_boot: int = 1000
    alpha: float = 0.05
    seed: int = 0


@dataclass
class Gate:
    name: str
    passed: bool
    detail: str  # what was observed against what was required, one line


@dataclass
class Decision:
    promote: bool
    gates: list[Gate]
    evidence: dict = field(default_factory=dict)  # numbers behind the gates

    @property
    def reasons(self) -> list[str]:
        """One line per failed gate (empty when promoted)."""
        return [f"{g.name}: {g.detail}" for g in self.gates if not g.passed]


def split_metrics(policy, interactions: pd.DataFrame, max_len: int, token_of: Mapping[str, int] | None = None,
                  split: str = "valid", semantic_ids=None) -> pd.DataFrame:
    """Per-user metrics (per_user_metrics columns) of `policy` on each user's `split` event.

    `token_of` maps original item ids (the table's `item_id`) to the policy's tokens; None means the
    policy was trained on this table's `item_idx`. Users come in the table's order either way.
    A semantic-ID policy needs the `semantic_ids` it was trained with (over the same item_idx as
    `token_of`). The frame's `attrs["hallucination_rate"]` is the policy's (0 for atomic tokens).
    """
    tokenization = tokenization_for(policy, semantic_ids, strict=False)
    table = interactions[["user_idx", "item_idx", "reward", "split"]].copy()
    n_items = tokenization.n_items(policy)
    if token_of is not None:
        if "item_id" not in interactions.columns:
            raise ValueError("interactions needs an 'item_id' column to evaluate a policy with its own catalog")
        tokens = interactions["item_id"].astype(str).map(token_of)
        known = tokens.notna().to_numpy()
        table["item_idx"] = tokens.fillna(0).to_numpy(np.int64)
    else:
        known = (table["item_idx"].to_numpy() >= 1) & (table["item_idx"].to_numpy() <= n_items)
    held_out = table["split"].astype(str).to_numpy() == split
    unknown_target = held_out & ~known
    table.loc[unknown_target, "item_idx"] = 1  # a placeholder so the user keeps its row; counted as a miss below
    table = table[known | held_out]
    examples = eval_examples(build_user_sequences(table), split, max_len)
    ranking = tokenization.rank(policy, examples, unmasked=False)
    ranks = ranking.ranks
    missed_users = set(interactions["user_idx"].to_numpy()[unknown_target].tolist())
    missed = np.isin(examples.users.numpy(), list(missed_users))
    ranks[missed] = MISS_RANK
    frame = per_user_metrics(ranks, examples.target_rewards.numpy())
    frame.insert(0, "user_idx", examples.users.numpy())
    frame.attrs["hallucination_rate"] = ranking.decoding["hallucination_rate"]
    return frame


def _column(frame: pd.DataFrame, name: str, who: str) -> np.ndarray:
    if name not in frame.columns:
        metrics = [c for c in frame.columns if c != "user_idx"]
        raise ValueError(f"{who} metrics have no column {name!r}; choose one of {metrics}")
    return frame[name].to_numpy(np.float64)


def decide_promotion(challenger: pd.DataFrame, champion: pd.DataFrame | None, cfg: GateConfig = GateConfig(),
                     hallucination_rate: float | None = None,
                     blocking_checks: Mapping[str, bool] | None = None) -> Decision:
    """Apply the gates to per-user metric frames (from `split_metrics`) of the same users."""
    checks = dict(blocking_checks or {})
    failed = sorted(name for name, ok in checks.items() if not ok)
    gates = [Gate("blocking_data_checks", not failed,
                  f"failed: {', '.join(failed)}" if failed else f"{len(checks)} blocking checks passed")]
    rate = 0.0 if hallucination_rate is None else float(hallucination_rate)
    gates.append(Gate("hallucination_rate", rate <= cfg.hallucination_ceiling,
                      f"{rate:.4f} vs ceiling {cfg.hallucination_ceiling:.4f}"))
    main = _column(challenger, cfg.metric, "challenger")
    align = _column(challenger, cfg.alignment_metric, "challenger")
    evidence = {"metric": cfg.metric, "challenger_mean": float(main.mean()),
                "alignment_metric": cfg.alignment_metric, "challenger_alignment": float(align.mean()),
                "hallucination_rate": rate, "n_users": int(len(main))}
    if champion is None:
        gates.append(Gate("beats_champion", True, "no champion yet: the best challenger is promoted"))
        gates.append(Gate("reward_alignment", True, "no champion yet"))
    else:
        if "user_idx" in challenger and "user_idx" in champion and not np.array_equal(
                challenger["user_idx"].to_numpy(), champion["user_idx"].to_numpy()):
            raise ValueError("challenger and champion must be evaluated on the same users in the same order")
        mean, low, high = paired_bootstrap_diff(main, _column(champion, cfg.metric, "champion"),
                                                n_boot=cfg.n_boot, alpha=cfg.alpha, seed=cfg.seed)
        half = (high - low) / 2
        gates.append(Gate("beats_champion", mean > half,
                          f"{cfg.metric} challenger - champion = {mean:+.4f}, needs > {half:.4f} "
                          f"(half width of the {1 - cfg.alpha:.0%} paired bootstrap interval)"))
        align_diff = float(align.mean() - _column(champion, cfg.alignment_metric, "champion").mean())
        gates.append(Gate("reward_alignment", align_diff >= -cfg.alignment_tolerance,
                          f"{cfg.alignment_metric} challenger - champion = {align_diff:+.4f}, "
                          f"needs >= {-cfg.alignment_tolerance:+.4f}"))
        evidence.update(champion_mean=float(champion[cfg.metric].mean()), diff=mean, diff_low=low, diff_high=high,
                        half_width=half, alignment_diff=align_diff)
    return Decision(promote=all(g.passed for g in gates), gates=gates, evidence=evidence)


def best_challenger(frames: Mapping[str, pd.DataFrame], metric: str) -> str:
    """The name whose mean `metric` is highest (the first one on ties)."""
    if not frames:
        raise ValueError("no challenger to choose from")
    means = {name: float(_column(f, metric, name).mean()) for name, f in frames.items()}
    return max(means, key=lambda name: (means[name], -list(means).index(name)))

