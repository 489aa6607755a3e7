"""The findings section of the robustness study: plain sentences computed from its tables.

Inputs are the tidy table and the head-to-head table of robustness.py, so findings can be
recomputed from the saved CSV/JSON files. "Significant" means a 95% bootstrap interval that
excludes 0. A claim is judged per noise level (and per rival): it HELD when its criterion is met
everywhere, PARTLY HELD when somewhere, DID NOT HOLD when nowhere.

Claims under test (from the literature the project follows):
1. exp_rw_sft is robust to reward noise and beats RLHF-style PPO/DPO/GRPO trained against a learned
   reward model. Criterion at each noise level: the exp_rw_sft λ selected on valid raises the true
   top-10 reward significantly over the pretrained policy, and its paired true top-10 difference
   against each ppo / dpo / grpo variant is significantly positive.
2. AdaGRPO improves HR@10 by ~10% relative over NLL-anchored baselines (sft, nll_grpo). Criterion
   at each noise level and baseline: a significant paired HR@10 gain of at least half the claimed
   size (+5% relative).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recmodels.evaluation.report import format_interval
from recmodels.post_training.registry import methods_of_family

HELD, PARTLY, NOT_HELD = "held", "partly held", "did not hold"
CLAIMED_RELATIVE_HR = 0.10


def fmt_interval(mean: float, low: float, high: float, percent: bool = False) -> str:
    """'+0.012 [+0.004, +0.020]' (or '+2.1% [-5.0%, +9.2%]'): `format_interval` of a signed difference."""
    return format_interval({"mean": mean, "low": low, "high": high}, signed=True, percent=percent)


def _levels(values) -> str:
    return ", ".join(f"{x:g}" for x in values)


def verdict_of(checks: list[bool]) -> str:
    """held (all met), partly held (some) or did not hold (none); an empty list cannot be judged."""
    if not checks:
        raise ValueError("verdict_of needs at least one criterion")
    return HELD if all(checks) else NOT_HELD if not any(checks) else PARTLY


def _variant_order(table: pd.DataFrame) -> list[str]:
    first = table.drop_duplicates("variant")
    is_exp = first["method"] == "exp_rw_sft"
    exp = first[is_exp].sort_values("lambda")["variant"].tolist()
    return exp + first[~is_exp]["variant"].tolist()


def variant_sentences(table: pd.DataFrame) -> list[str]:
    """Per variant: at how many noise levels its true top-10 gain is significant, and the gain at each level."""
    n = table["noise"].nunique()
    out = []
    for variant in _variant_order(table):
        rows = table[table["variant"] == variant].sort_values("noise")
        significant = rows.loc[rows["true_top10_diff_low"] > 0, "noise"].tolist()
        harmful = rows.loc[rows["true_top10_diff_high"] < 0, "noise"].tolist()
        where = f" (noise {_levels(significant)})" if significant else ""
        hurt = f"; it lowered it significantly at noise {_levels(harmful)}" if harmful else ""
        per_level = "; ".join(
            f"noise {r.noise:g}: {fmt_interval(r.true_top10_diff, r.true_top10_diff_low, r.true_top10_diff_high)}"
            for r in rows.itertuples())
        out.append(f"`{variant}` improved the true top-10 reward over the pretrained policy significantly at "
                   f"{len(significant)} of {n} noise levels{where}{hurt}; by level: {per_level}.")
    return out


def claim_exp_rw_sft(table: pd.DataFrame, head_to_head: pd.DataFrame) -> str:
    """Claim 1: exp_rw_sft is robust to reward noise and beats PPO/DPO/GRPO (see the module doc)."""
    claim = ("Claim 1 (exp_rw_sft is robust to reward noise and beats RLHF-style PPO/DPO/GRPO trained against "
             "the learned reward model)")
    chosen = table[table["selected_lambda"].astype(bool)].sort_values("noise")
    if chosen.empty:
        return f"{claim} cannot be judged: the study has no exp_rw_sft variant."
    n = table["noise"].nunique()
    robust = (chosen["true_top10_diff_low"] > 0).tolist()
    lam = "; ".join(f"noise {r['noise']:g}: λ={r['lambda']:g}" for _, r in chosen.iterrows())
    parts = [f"the λ selected on valid ({lam}) raised the true top-10 reward significantly at "
             f"{sum(robust)} of {n} noise levels"]
    vs = head_to_head[(head_to_head["metric"] == "true_top10") & head_to_head["a"].isin(chosen["variant"])]
    wins = []
    for b, rows in vs.groupby("b", sort=False):
        rows = rows.sort_values("noise")
        won, lost = (rows["diff_low"] > 0).tolist(), int((rows["diff_high"] < 0).sum())
        wins += won
        top = rows.iloc[-1]
        parts.append(f"vs `{b}` it won at {sum(won)} of {len(rows)} levels and lost at {lost} "
                     f"(noise {top['noise']:g}: {fmt_interval(top['diff'], top['diff_low'], top['diff_high'])})")
    method_of_variant = dict(zip(table["variant"], table["method"]))
    studied = {method_of_variant.get(b) for b in vs["b"]}
    missing = [m for m in methods_of_family("rlhf") if m not in studied]  # exp_rw_sft's rivals
    note = f" ({', '.join(missing)} not in the study)" if missing else ""
    if vs.empty:
        return (f"{claim} {verdict_of(robust)} for its robustness part only; no rival was in the study{note}: "
                f"{parts[0]}.")
    return (f"{claim}: {verdict_of(robust + wins)} on this data{note}; {parts[0]}; paired true top-10 differences "
            "(exp_rw_sft minus the rival; the interval at the highest noise): " + "; ".join(parts[1:]) + ".")


def claim_adagrpo(head_to_head: pd.DataFrame, claimed: float = CLAIMED_RELATIVE_HR) -> str:
    """Claim 2: AdaGRPO improves HR@10 ~10% relative over NLL-anchored baselines (see the module doc)."""
    claim = f"Claim 2 (AdaGRPO improves HR@10 ~{100 * claimed:.0f}% relative over NLL-anchored baselines)"
    rows = head_to_head[head_to_head["metric"] == "hr@10"]
    if rows.empty:
        return (f"{claim} cannot be judged: the study needs an adagrpo variant and an NLL-anchored baseline "
                "(sft or nll_grpo) among its methods.")
    checks = ((rows["diff_low"] > 0) & (rows["relative"] >= claimed / 2)).tolist()
    parts = []
    for (a, b), pair in rows.groupby(["a", "b"], sort=False):
        levels = "; ".join(
            f"noise {r.noise:g}: {fmt_interval(r.relative, r.relative_low, r.relative_high, percent=True)} "
            f"(HR@10 {fmt_interval(r.diff, r.diff_low, r.diff_high)})" for r in pair.sort_values("noise").itertuples())
        parts.append(f"`{a}` vs `{b}`: {levels}")
    return (f"{claim}: {verdict_of(checks)} on this data (criterion: a significant HR@10 gain of at least "
            f"{100 * claimed / 2:.0f}% relative, met in {sum(checks)} of {len(checks)} comparisons); "
            + "; ".join(parts) + ".")


def lambda_sentence(table: pd.DataFrame) -> str | None:
    """The λ trade-off: which λ gained most true reward per noise level, and whether valid picked it."""
    exp = table[table["method"] == "exp_rw_sft"]
    if exp.empty or exp.groupby("noise")["lambda"].nunique().max() < 2:  # one λ per level (tuned): no trade-off
        return None
    parts, matched, levels = [], 0, sorted(exp["noise"].unique())
    for noise in levels:
        rows = exp[exp["noise"] == noise]
        best = rows.loc[rows["true_top10_diff"].idxmax()]
        picked = rows[rows["selected_lambda"].astype(bool)]
        matched += int(not picked.empty and picked["variant"].iloc[0] == best["variant"])
        parts.append(f"noise {noise:g}: λ={best['lambda']:g} ({best['true_top10_diff']:+.3f})")
    return (f"λ trade-off of exp_rw_sft: the λ with the largest true top-10 gain was {'; '.join(parts)}; the λ "
            f"selected on valid NDCG@10 was that λ at {matched} of {len(levels)} levels.")


def hacking_sentence(table: pd.DataFrame) -> str | None:
    """At the highest noise level: the variant whose reward-hacking gap (judged minus true) grew the most."""
    if table.empty or table["hacking_gap_top10_diff"].isna().all():
        return None
    top_noise = table["noise"].max()
    rows = table[table["noise"] == top_noise]
    worst = rows.loc[rows["hacking_gap_top10_diff"].idxmax()]
    gap = fmt_interval(*(worst[f"hacking_gap_top10_diff{end}"] for end in ("", "_low", "_high")))
    return (f"Reward hacking at the highest noise ({top_noise:g}): `{worst['variant']}` widened the gap between the "
            f"ranker-judged and the true top-10 reward the most: {gap} vs the pretrained policy.")


def robustness_findings(table: pd.DataFrame, head_to_head: pd.DataFrame) -> list[str]:
    """The findings section: both claims first, then the λ trade-off, reward hacking and every variant."""
    if table.empty:
        return ["No post-trained variant was evaluated: nothing to report."]
    table = table.assign(**{"lambda": pd.to_numeric(table["lambda"], errors="coerce").astype(np.float64)})
    out = [claim_exp_rw_sft(table, head_to_head), claim_adagrpo(head_to_head)]
    out += [s for s in (lambda_sentence(table), hacking_sentence(table)) if s]
    return out + variant_sentences(table)
