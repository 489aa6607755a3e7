"""The evaluation report (docs/design.md §5): every policy on the same test users, side by side.

`build_report` turns per-user ranks into a JSON-serializable dict: each metric's mean with a
95% percentile-bootstrap interval over users, the paired difference against the baseline
policy (same users resampled for both), reward alignment, the ranker-judged top-10 score, each
post-trained policy's training record (knobs, selected step, telemetry), the λ sweep of
exp_rw_sft, head-to-head paired differences between methods, skipped methods and a verdict.
Ranking metrics come under two protocols (`PROTOCOLS`): masked (primary, history items excluded)
and unmasked (RecBole-comparable, history items included), the latter under each policy's `unmasked`.
Rendering (Markdown, the comparison table, the files on disk) lives in report_output.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from recmodels.evaluation.metrics import (KS, METRIC_NAMES, bootstrap_ci, paired_bootstrap_diff, per_user_metrics,
                                         reward_alignment)
from recmodels.post_training.contexts import SIGNAL_KEYS
from recmodels.post_training.registry import METHODS, get_method, methods_of_family, needs_ranker
from recmodels.post_training.variants import variant_knobs, variants_table

ALPHA = 0.05
REPORTED = (*METRIC_NAMES, "mrr", "reward_weighted_ndcg@10")  # every metric with an interval and a paired diff
JUDGED = "ranker_top10_score"
RW_NDCG = "reward_weighted_ndcg@10"
TELEMETRY = ("ess", "rollout_reward", "gate_open_rate", "hard_rate", "disc_rate")

PROTOCOL = (
    "Each user's held-out test item is ranked against the full catalog given the whole history before it; "
    "items already in the history are masked out (the target never is); no sampled negatives. "
    "HR@K = target in the top K; NDCG@K = 1/log2(rank+1) inside the top K; MRR@K = 1/rank inside the top K "
    "(mrr = untruncated 1/rank); K in {{5, 10, 20}}. Intervals are 95% percentile bootstraps over users "
    "({n_boot} resamples, seed {seed}); paired differences resample users jointly for both policies. "
    "Reward alignment: HR@10 on test items with reward > 0 (liked) and < 0 (disliked), and reward-weighted "
    "NDCG@10 = mean_u r_u * NDCG@10_u. ranker_top10_score = the ranker reward model's mean score of each "
    "user's top-10 list (a judged metric a policy can hack). Post-trained policies are selected on valid only; "
    "so is the best λ of exp_rw_sft (valid NDCG@10 at its selected step). Head-to-head differences between two "
    "policies are paired bootstraps over the same users. The reward-hacking hint compares the changes of the "
    "ranker's top-10 score and of NDCG@10 vs the baseline, each in units of the baseline's per-user std. "
    "Semantic-ID policies generate items with beam search ({beam_size} beams, history excluded): their accuracy, "
    "top-10 list and judged score come from constrained decoding (prefix trie of real items; a target outside "
    "the beams is a miss, so mrr is truncated at the beam size), their hallucination rate is the share of the "
    "top-10 tuples of unconstrained decoding that are no item. Atomic policies cannot hallucinate (rate 0). "
    "Ties in a score are broken at random (seeded): rank = 1 + #items scoring higher + a uniform draw from "
    "0..#items tied with the target. "
    "Unmasked (RecBole-comparable): the same test ranking with the history items left in the catalog (RecBole's "
    "protocol for sequential models; semantic-ID policies: constrained beam search without excluding the history), "
    "reported beside the masked metrics under `unmasked.metrics`, with `seen_in_top10_unmasked` = the number of "
    "history items in a user's unmasked top 10. The masked protocol stays the primary one (selection and promotion use it)."
)
SPLIT = "test (chronological leave-one-out: each user's last interaction is held out)"
PROTOCOLS = {
    "masked": "full ranking over the catalog, the user's history items excluded (primary)",
    "unmasked": "full ranking over the catalog, history items included (RecBole's protocol for sequential models)",
    "split": SPLIT,
}
UNMASKED_METRICS = METRIC_NAMES  # hr / ndcg / mrr @5/10/20 under the unmasked protocol


@dataclass
class PolicyEvaluation:
    name: str
    ranks: np.ndarray  # [N] 1-based rank of each user's test item
    target_rewards: np.ndarray  # [N] observed reward of that item
    ranker_top10_score: np.ndarray  # [N] ranker's mean score of the user's top-10 list
    method: str | None = None
    extra: dict = field(default_factory=dict)  # post-trained: {"params": {...}, "best_step": int, "history": [...]}
    users: np.ndarray | None = None  # [N] user_idx, checked across policies when given
    per_user: dict = field(default_factory=dict)  # more per-user metrics (e.g. oracle true reward), same keys for all
    decoding: dict = field(default_factory=dict)  # tokenization, hallucination_rate, constrained/unconstrained accuracy
    ranks_unmasked: np.ndarray | None = None  # [N] rank under the unmasked protocol (history items compete)
    seen_in_top10_unmasked: np.ndarray | None = None  # [N] history items in the user's unmasked top 10


def _interval(mean: float, low: float, high: float) -> dict[str, float]:
    return {"mean": mean, "low": low, "high": high}


def _jsonable(value):
    """Numpy scalars/arrays to Python, non-finite floats to None: the report must survive json.dumps."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _check_same_users(evals: list[PolicyEvaluation], baseline: str) -> int:
    if not evals:
        raise ValueError("build_report needs at least one policy evaluation")
    names = [e.name for e in evals]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    if baseline not in names:
        raise ValueError(f"baseline policy {baseline!r} is not among the evaluated policies {names}")
    first = evals[0]
    n = len(first.ranks)
    for e in evals:
        for what in ("ranks", "target_rewards", "ranker_top10_score", "ranks_unmasked", "seen_in_top10_unmasked"):
            if getattr(e, what) is not None and len(getattr(e, what)) != n:
                raise ValueError(f"policy {e.name!r}: {what} covers {len(getattr(e, what))} users but policy "
                                 f"{first.name!r} covers {n}: all policies must be evaluated on the same users")
        if not np.array_equal(np.asarray(e.target_rewards), np.asarray(first.target_rewards)):
            raise ValueError(f"policy {e.name!r} has other test rewards than {first.name!r}: "
                             "all policies must be evaluated on the same users in the same order")
        if e.users is not None and first.users is not None and not np.array_equal(e.users, first.users):
            raise ValueError(f"policy {e.name!r} was evaluated on other users (or another order) than {first.name!r}")
    return n


def _check_skipped(skipped: dict | None, names: list[str]) -> dict[str, str]:
    skipped = dict(skipped or {})
    for name, reason in skipped.items():
        if not isinstance(name, str) or not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"skipped must map a method name to a non-empty reason string, got {name!r}: {reason!r}")
        if name in names:
            raise ValueError(f"method {name!r} is listed as skipped ({reason!r}) but was also evaluated")
    return skipped


def method_of(name: str, method: str | None) -> str | None:
    """The post-training method a policy comes from: its recorded `method`, else its variant's in the variants table."""
    if method is not None:
        return method
    variant = variants_table().get(name)
    return variant.method if variant is not None else None


def _known_knobs(name: str, method: str | None, params: dict) -> dict[str, Any]:
    """The policy's knobs by knob name: its training record's params (aliases resolved) over its variant's."""
    spec = METHODS.get(method)
    return {**variant_knobs(name), **(spec.canonical_knobs(params) if spec is not None else params)}


def knob_value(name: str, method: str | None, params: dict, knob: str,
               default: float | None = None) -> float | None:
    """A numeric knob (λ, α) of a policy: from its record's params, else its variant's in the table, else `default`."""
    value = _known_knobs(name, method, params).get(knob)
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"policy {name!r}: params[{knob!r}] must be a number, got {value!r}") from None


def shown_knobs(name: str, method: str | None, params: dict) -> dict[str, Any]:
    """The knobs the report's tables show, by label ({"λ": 0.3}): the method's key knobs (registry) from the record
    or the variants table; every recorded knob, by name, for a method that is not registered."""
    method = method_of(name, method)
    spec = METHODS.get(method)
    if spec is None:
        return {k: v for k, v in params.items() if v is not None}
    knobs = _known_knobs(name, method, params)
    keys = spec.key_knobs if spec.key_knobs is not None else tuple(knobs)
    return {spec.label(k): knobs[k] for k in keys if knobs.get(k) is not None}


def _training_section(e: PolicyEvaluation) -> dict | None:
    """method, params, best_step, the history row at best_step and the full history (None if not post-trained)."""
    extra = e.extra or {}
    if not any(k in extra for k in ("params", "best_step", "history")):
        return None
    params = extra.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"policy {e.name!r}: extra['params'] must be a dict of method knobs, "
                         f"got {type(params).__name__}")
    history = extra.get("history") or []
    if not isinstance(history, (list, tuple)) or not all(isinstance(r, dict) and "step" in r for r in history):
        raise ValueError(f"policy {e.name!r}: extra['history'] must be a list of rows (dicts with a 'step'), "
                         "as in PostTrainResult.history")
    history = [_jsonable(r) for r in history]
    best, at_best = extra.get("best_step"), None
    if best is not None:
        best = int(best)
        rows = [r for r in history if r["step"] == best]
        if history and not rows:
            raise ValueError(f"policy {e.name!r}: best_step {best} is not a step of its history "
                             f"(steps {[r['step'] for r in history]})")
        at_best = rows[-1] if rows else None
    return {"method": e.method, "params": _jsonable(params), "best_step": best, "at_best_step": at_best,
            "signal_per_step": signal_per_step(history), "grpo_weight": grpo_weight(params, history),
            "history": history}


def _mean_over_training(history: list[dict], key: str) -> float | None:
    """The mean of a telemetry value over the training rows (each the mean of its steps), None if never logged."""
    values = [row[key] for row in history if row["step"] > 0 and row.get(key) is not None]
    return sum(values) / len(values) if values else None


def signal_per_step(history: list[dict]) -> dict[str, float | None]:
    """What a step learned from, on average (`recmodels.post_training.contexts.SIGNAL_KEYS`): logged targets in an
    NLL term, new RL contexts, scored rollouts."""
    return {key: _mean_over_training(history, key) for key in SIGNAL_KEYS}


def grpo_weight(params: dict, history: list[dict]) -> float | None:
    """The weight the GRPO term gets on average: α (nll_grpo), α x the mean gate-open rate (adagrpo's effective
    α, what its comparison with nll_grpo at the same α must take into account); None without an α."""
    if params.get("alpha") is None:
        return None
    open_rate = _mean_over_training(history, "gate_open_rate")
    return params["alpha"] * (open_rate if open_rate is not None else 1.0)


def _lambda_sweep(policies: dict, baseline: str) -> list[dict]:
    """One row per exp_rw_sft policy, sorted by λ: paired gains vs the baseline and the KL at the selected step."""
    rows = []
    for name, p in policies.items():
        if name == baseline or method_of(name, p["method"]) != "exp_rw_sft":
            continue
        training = p["training"] or {}
        at_best = training.get("at_best_step") or {}
        lam = knob_value(name, "exp_rw_sft", training.get("params") or {}, "lam",
                         default=get_method("exp_rw_sft").default("lam"))
        rows.append({"policy": name, "lambda": lam,
                     f"diff_{RW_NDCG}": p["diff_vs_baseline"][RW_NDCG],
                     "diff_ndcg@10": p["diff_vs_baseline"]["ndcg@10"],
                     "kl_to_reference": at_best.get("kl_to_reference"), "valid_ndcg@10": at_best.get("valid_ndcg@10")})
    return sorted(rows, key=lambda r: (r["lambda"], r["policy"]))


def _best_lambda(sweep: list[dict]) -> dict | None:
    """The exp_rw_sft policy to compare with other methods: best valid NDCG@10 (test only if valid is missing)."""
    if not sweep:
        return None
    if all(r["valid_ndcg@10"] is not None for r in sweep):
        row, on = max(sweep, key=lambda r: r["valid_ndcg@10"]), "valid NDCG@10"
    else:
        row, on = max(sweep, key=lambda r: r[f"diff_{RW_NDCG}"]["mean"]), "test reward-weighted NDCG@10 (optimistic)"
    return {"policy": row["policy"], "lambda": row["lambda"], "selected_on": on}


def _judged_vs_accuracy(df: pd.DataFrame, base: pd.DataFrame) -> dict:
    """Changes of the judged top-10 score and of NDCG@10 vs the baseline, in baseline per-user stds."""
    def effect(col):
        sd = float(base[col].std(ddof=0))
        return float((df[col] - base[col]).mean()) / sd if sd > 0 else None

    judged, accuracy = effect(JUDGED), effect("ndcg@10")
    gap = judged - accuracy if judged is not None and accuracy is not None else None
    return {"judged_sd": judged, "ndcg@10_sd": accuracy, "gap_sd": gap}


def _head_to_head(frames: dict, methods: dict, best: dict | None, n_boot: int, seed: int) -> list[dict]:
    """Paired differences a - b: best exp_rw_sft vs each rival (the "rlhf" family: dpo/ppo/grpo), adagrpo vs
    every nll_grpo α. `methods`: policy -> method."""
    pairs = []
    rivals = methods_of_family("rlhf")
    if best is not None:
        pairs += [(best["policy"], b, m) for b, f in methods.items() if f in rivals for m in ("ndcg@10", RW_NDCG)]
    pairs += [(a, b, "hr@10") for a, fa in methods.items() if fa == "adagrpo"
              for b, fb in methods.items() if fb == "nll_grpo"]
    return [{"a": a, "b": b, "metric": m,
             "diff": _interval(*paired_bootstrap_diff(frames[a][m], frames[b][m], n_boot, ALPHA, seed))}
            for a, b, m in pairs]


def _decoding(e: PolicyEvaluation, frame: pd.DataFrame) -> dict:
    """The policy's decoding record; atomic (rate 0, one decoding mode) when the evaluation has none."""
    d = dict(e.decoding or {})
    if not d:
        acc = {"hr@10": float(frame["hr@10"].mean()), "ndcg@10": float(frame["ndcg@10"].mean())}
        d = {"tokenization": "atomic", "beam_size": None, "hallucination_rate": 0.0, "constrained": acc,
             "unconstrained": dict(acc)}
    rate = d.get("hallucination_rate")
    if rate is None or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"policy {e.name!r}: decoding['hallucination_rate'] must be a share in [0, 1], got {rate!r}")
    return d


def _frontier(policies: dict, baseline: str) -> list[dict]:
    """HR@10 vs hallucination rate of the baseline and of every policy of the "nll_plus_rl" family (each nll_grpo α,
    adagrpo), one point each."""
    rows = []
    frontier = methods_of_family("nll_plus_rl")
    for name, p in policies.items():
        method = method_of(name, p["method"])
        if name != baseline and method not in frontier:
            continue
        params = (p.get("training") or {}).get("params") or {}
        rows.append({"policy": name, "method": method, "alpha": knob_value(name, method, params, "alpha"),
                     "hallucination_rate": p["hallucination_rate"], "hr@10": p["metrics"]["hr@10"]["mean"],
                     "hr@10_low": p["metrics"]["hr@10"]["low"], "hr@10_high": p["metrics"]["hr@10"]["high"]})
    return rows


def _beam_sizes(policies: dict) -> str:
    sizes = sorted({p["decoding"].get("beam_size") for p in policies.values()} - {None})
    return "/".join(str(s) for s in sizes) or "20"


def _extra_metrics(evals: list[PolicyEvaluation]) -> tuple[str, ...]:
    """The names of `PolicyEvaluation.per_user`, which every policy must carry alike."""
    keys = [tuple(sorted(e.per_user)) for e in evals]
    if len(set(keys)) > 1:
        raise ValueError(f"every policy must carry the same per-user metrics, got {dict(zip((e.name for e in evals), keys))}")
    return keys[0] if keys else ()


def _unmasked(e: PolicyEvaluation, n_boot: int, seed: int) -> dict:
    """The unmasked-protocol block ({"metrics": means with 95% CIs}, shaped as the policy's masked `metrics`) and
    the mean number of history items in the unmasked top 10; None for both without unmasked ranks."""
    if e.ranks_unmasked is None:
        return {"unmasked": None, "seen_in_top10_unmasked": None}
    df = per_user_metrics(e.ranks_unmasked, e.target_rewards)
    seen = e.seen_in_top10_unmasked
    metrics = {m: _interval(*bootstrap_ci(df[m], n_boot, ALPHA, seed)) for m in UNMASKED_METRICS}
    return {"unmasked": {"metrics": metrics},
            "seen_in_top10_unmasked": None if seen is None else _interval(*bootstrap_ci(seen, n_boot, ALPHA, seed))}


def unmasked_metrics(policy: dict) -> dict[str, dict]:
    """A report policy's unmasked-protocol metrics {metric: {mean, low, high}}; {} when it has none."""
    return (policy.get("unmasked") or {}).get("metrics") or {}


def build_report(evals: list[PolicyEvaluation], baseline: str = "pretrained", n_boot: int = 1000,
                 seed: int = 0, skipped: dict[str, str] | None = None) -> dict:
    """Per policy: metric means with 95% CIs (masked protocol, primary; and under `unmasked` the unmasked
    protocol's, with `seen_in_top10_unmasked`), paired differences vs `baseline`, reward alignment, judged
    score, training record; plus the `protocols`, skipped methods ({name: reason}), the λ sweep, head-to-head
    comparisons, verdict."""
    n = _check_same_users(evals, baseline)
    skipped = _check_skipped(skipped, [e.name for e in evals])
    frames = {e.name: per_user_metrics(e.ranks, e.target_rewards) for e in evals}
    for e in evals:
        frames[e.name][JUDGED] = np.asarray(e.ranker_top10_score, dtype=np.float64)
        for key, values in e.per_user.items():
            frames[e.name][key] = np.asarray(values, dtype=np.float64)
    reported = (*REPORTED, *_extra_metrics(evals))
    base = frames[baseline]
    policies = {}
    for e in evals:
        df = frames[e.name]
        policies[e.name] = {
            "method": e.method,
            "metrics": {m: _interval(*bootstrap_ci(df[m], n_boot, ALPHA, seed)) for m in reported},
            **_unmasked(e, n_boot, seed),
            "diff_vs_baseline": {m: _interval(*paired_bootstrap_diff(df[m], base[m], n_boot, ALPHA, seed))
                                 for m in (*reported, JUDGED)},
            "reward_alignment": reward_alignment(e.ranks, e.target_rewards, k=10),
            JUDGED: _interval(*bootstrap_ci(df[JUDGED], n_boot, ALPHA, seed)),
            "judged_vs_accuracy": _judged_vs_accuracy(df, base),
            "training": _training_section(e),
            "extra": _jsonable(e.extra),
        }
        decoding = _decoding(e, df)
        policies[e.name]["decoding"] = decoding
        policies[e.name]["hallucination_rate"] = float(decoding["hallucination_rate"])
    sweep = _lambda_sweep(policies, baseline)
    best = _best_lambda(sweep)
    methods = {e.name: method_of(e.name, e.method) for e in evals if e.name != baseline}
    report = _jsonable({
        "protocol": PROTOCOL.format(n_boot=n_boot, seed=seed, beam_size=_beam_sizes(policies)),
        "protocols": PROTOCOLS,
        "n_users": n, "baseline": baseline, "n_boot": n_boot, "seed": seed, "alpha": ALPHA,
        "ks": list(KS), "metrics": list(reported), "extra_metrics": list(_extra_metrics(evals)),
        "policies": policies, "skipped": skipped,
        "lambda_sweep": sweep, "exp_rw_sft_best": best,
        "head_to_head": _head_to_head(frames, methods, best, n_boot, seed),
        "hallucination_frontier": _frontier(policies, baseline),
    })
    report["verdict"] = verdict(report)
    return report


def format_interval(iv: Mapping[str, float], signed: bool = False, percent: bool = False) -> str:
    """'0.109 [0.093, 0.125]'; signed: '+0.002 [-0.001, +0.004]'; percent (always signed): '+2.1% [-5.0%, +9.2%]'."""
    if percent:
        return "{:+.1f}% [{:+.1f}%, {:+.1f}%]".format(*(100 * iv[k] for k in ("mean", "low", "high")))
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(iv['mean'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def _significance(iv: dict) -> str:
    if iv["low"] > 0:
        return "the 95% interval excludes 0: a significant gain"
    if iv["high"] < 0:
        return "the 95% interval excludes 0: a significant loss"
    return "the 95% interval includes 0: no significant difference"


def _versus(a_gain: dict, b_gain: dict, h2h: dict, b: str, label: str) -> str:
    """'beats `dpo` on NDCG@10 by +0.004 (paired-diff means ... ; 95% CI of the difference [...])'."""
    d = a_gain["mean"] - b_gain["mean"]
    verb = ("beats" if h2h["low"] > 0 else "trails" if h2h["high"] < 0
            else "shows no significant difference from")
    return (f"{verb} `{b}` on {label} ({d:+.3f}: paired-diff means {a_gain['mean']:+.3f} vs {b_gain['mean']:+.3f}; "
            f"95% CI of the difference [{h2h['low']:+.3f}, {h2h['high']:+.3f}])")


def verdict(report: dict) -> list[str]:
    """Plain sentences with numbers; a sentence whose policies are missing is left out."""
    pols, base = report["policies"], report["baseline"]
    others = [n for n in pols if n != base]
    if not others:
        return []
    methods = {n: method_of(n, pols[n]["method"]) for n in others}
    out = []
    for metric, label in (("ndcg@10", "NDCG@10"), (RW_NDCG, "reward-weighted NDCG@10")):
        name = max(others, key=lambda n: pols[n]["diff_vs_baseline"][metric]["mean"])
        iv = pols[name]["diff_vs_baseline"][metric]
        lead = (f"`{name}` has the largest paired {label} gain over `{base}`" if iv["mean"] > 0
                else f"No policy has a higher {label} than `{base}`; the closest is `{name}`")
        out.append(f"{lead}: {format_interval(iv, signed=True)} ({_significance(iv)}).")

    h2h = {(r["a"], r["b"], r["metric"]): r["diff"] for r in report.get("head_to_head", [])}
    best = report.get("exp_rw_sft_best")
    for b in (n for f in methods_of_family("rlhf") for n in others if methods[n] == f):
        a = (best or {}).get("policy")
        if (a, b, RW_NDCG) not in h2h:
            continue
        parts = [_versus(pols[a]["diff_vs_baseline"][m], pols[b]["diff_vs_baseline"][m], h2h[(a, b, m)], b, label)
                 for m, label in (("ndcg@10", "NDCG@10"), (RW_NDCG, "reward-weighted NDCG@10"))]
        out.append(f"`{a}` (λ={best['lambda']:g}, best λ by {best['selected_on']}) {parts[0]} and {parts[1]}.")

    nll = [n for n in others if methods[n] == "nll_grpo"]
    for a in (n for n in others if methods[n] == "adagrpo"):
        if not nll or any((a, b, "hr@10") not in h2h for b in nll):
            continue
        diffs = {b: h2h[(a, b, "hr@10")] for b in nll}
        alpha = {b: knob_value(b, "nll_grpo", (pols[b].get("training") or {}).get("params") or {}, "alpha")
                 for b in nll}
        beats = all(iv["mean"] > 0 for iv in diffs.values())
        unclear = [f"α={alpha[b]:g}" if alpha[b] is not None else f"`{b}`" for b, iv in diffs.items()
                   if iv["low"] <= 0 <= iv["high"]]
        detail = "; ".join(f"vs `{b}`{f' (α={alpha[b]:g})' if alpha[b] is not None else ''} {format_interval(iv, signed=True)}"
                           for b, iv in diffs.items())
        note = (f", with no significant difference against {', '.join(unclear)}" if unclear
                else ", every interval excluding 0")
        out.append(f"`{a}` {'beats' if beats else 'does not beat'} every nll_grpo α on HR@10{note}: {detail}.")

    hackable = [n for n in others if needs_ranker(methods[n])
                and (pols[n].get("judged_vs_accuracy") or {}).get("gap_sd") is not None]
    if hackable:
        name = max(hackable, key=lambda n: pols[n]["judged_vs_accuracy"]["gap_sd"])
        p = pols[name]
        eff, judged = p["judged_vs_accuracy"], p["diff_vs_baseline"][JUDGED]
        numbers = (f"ranker top-10 score {format_interval(judged, signed=True)} ({eff['judged_sd']:+.2f} sd of `{base}`) "
                   f"vs NDCG@10 {format_interval(p['diff_vs_baseline']['ndcg@10'], signed=True)} ({eff['ndcg@10_sd']:+.2f} sd)")
        if eff["gap_sd"] > 0 and judged["low"] > 0:
            out.append(f"Reward-hacking hint: `{name}` has the largest ranker-judged top-10 gain relative to its "
                       f"accuracy change: {numbers}.")
        else:
            out.append(f"No ranker-trained policy raises the ranker's judged top-10 score significantly beyond its "
                       f"accuracy change; the largest gap is `{name}`: {numbers}.")
    return out
