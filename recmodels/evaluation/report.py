"""The evaluation report (design.md §5): every policy on the same test users, side by side.

`build_report` turns per-user ranks into a JSON-serializable dict: each metric's mean with a
95% percentile-bootstrap interval over users, the paired difference against the baseline
policy (same users resampled for both), reward alignment and the ranker-judged top-10 score.
`write_report` writes it as report.json, report.md and report.png.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recmodels.evaluation.metrics import (KS, METRIC_NAMES, bootstrap_ci, paired_bootstrap_diff, per_user_metrics,
                                         reward_alignment)

ALPHA = 0.05
REPORTED = (*METRIC_NAMES, "mrr", "reward_weighted_ndcg@10")  # every metric with an interval and a paired diff
JUDGED = "ranker_top10_score"

PROTOCOL = (
    "Each user's held-out test item is ranked against the full catalog given the whole history before it; "
    "items already in the history are masked out (the target never is); no sampled negatives. "
    "HR@K = target in the top K; NDCG@K = 1/log2(rank+1) inside the top K; MRR@K = 1/rank inside the top K "
    "(mrr = untruncated 1/rank); K in {{5, 10, 20}}. Intervals are 95% percentile bootstraps over users "
    "({n_boot} resamples, seed {seed}); paired differences resample users jointly for both policies. "
    "Reward alignment: HR@10 on test items with reward > 0 (liked) and < 0 (disliked), and reward-weighted "
    "NDCG@10 = mean_u r_u * NDCG@10_u. ranker_top10_score = the ranker reward model's mean score of each "
    "user's top-10 list (a judged metric a policy can hack). Post-trained policies are selected on valid only."
)


@dataclass
class PolicyEvaluation:
    name: str
    ranks: np.ndarray  # [N] 1-based rank of each user's test item
    target_rewards: np.ndarray  # [N] observed reward of that item
    ranker_top10_score: np.ndarray  # [N] ranker's mean score of the user's top-10 list
    method: str | None = None
    extra: dict = field(default_factory=dict)
    users: np.ndarray | None = None  # [N] user_idx, checked across policies when given


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
        for what in ("ranks", "target_rewards", "ranker_top10_score"):
            if len(getattr(e, what)) != n:
                raise ValueError(f"policy {e.name!r}: {what} covers {len(getattr(e, what))} users but policy "
                                 f"{first.name!r} covers {n}: all policies must be evaluated on the same users")
        if not np.array_equal(np.asarray(e.target_rewards), np.asarray(first.target_rewards)):
            raise ValueError(f"policy {e.name!r} has other test rewards than {first.name!r}: "
                             "all policies must be evaluated on the same users in the same order")
        if e.users is not None and first.users is not None and not np.array_equal(e.users, first.users):
            raise ValueError(f"policy {e.name!r} was evaluated on other users (or another order) than {first.name!r}")
    return n


def build_report(evals: list[PolicyEvaluation], baseline: str = "pretrained", n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """Per policy: metric means with 95% CIs, paired differences vs `baseline`, reward alignment, judged score."""
    n = _check_same_users(evals, baseline)
    frames = {e.name: per_user_metrics(e.ranks, e.target_rewards) for e in evals}
    for e in evals:
        frames[e.name][JUDGED] = np.asarray(e.ranker_top10_score, dtype=np.float64)
    base = frames[baseline]
    policies = {}
    for e in evals:
        df = frames[e.name]
        policies[e.name] = {
            "method": e.method,
            "metrics": {m: _interval(*bootstrap_ci(df[m], n_boot, ALPHA, seed)) for m in REPORTED},
            "diff_vs_baseline": {m: _interval(*paired_bootstrap_diff(df[m], base[m], n_boot, ALPHA, seed))
                                 for m in (*REPORTED, JUDGED)},
            "reward_alignment": reward_alignment(e.ranks, e.target_rewards, k=10),
            JUDGED: _interval(*bootstrap_ci(df[JUDGED], n_boot, ALPHA, seed)),
            "extra": _jsonable(e.extra),
        }
    return _jsonable({
        "protocol": PROTOCOL.format(n_boot=n_boot, seed=seed),
        "n_users": n, "baseline": baseline, "n_boot": n_boot, "seed": seed, "alpha": ALPHA,
        "ks": list(KS), "metrics": list(REPORTED), "policies": policies,
    })


def _fmt(iv: dict, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(iv['mean'])} [{f.format(iv['low'])}, {f.format(iv['high'])}]"


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(report: dict) -> str:
    """Tables: metrics with CIs, paired differences vs the baseline, reward alignment; then the protocol."""
    metrics, baseline, pols = report["metrics"], report["baseline"], report["policies"]
    acc = _md_table(["policy", "method", *metrics],
                    [[name, p["method"] or "-", *(_fmt(p["metrics"][m]) for m in metrics)] for name, p in pols.items()])
    diff_cols = [*metrics, JUDGED]
    diff = _md_table(["policy", *diff_cols],
                     [[name, *(_fmt(p["diff_vs_baseline"][m], signed=True) for m in diff_cols)]
                      for name, p in pols.items() if name != baseline])

    def opt(v):
        return "n/a" if v is None else f"{v:.3f}"

    align = _md_table(
        ["policy", "hr@10 liked", "hr@10 disliked", "n liked", "n disliked", "reward-weighted ndcg@10",
         "ranker top-10 score"],
        [[name, opt(p["reward_alignment"]["hr@10_liked"]), opt(p["reward_alignment"]["hr@10_disliked"]),
          str(p["reward_alignment"]["n_liked"]), str(p["reward_alignment"]["n_disliked"]),
          _fmt(p["metrics"]["reward_weighted_ndcg@10"]), _fmt(p[JUDGED])] for name, p in pols.items()])
    return "\n\n".join([
        "# Evaluation report",
        f"{report['n_users']} test users; mean [95% bootstrap CI].",
        "## Accuracy", acc,
        f"## Paired difference vs `{baseline}`", diff if len(pols) > 1 else "_only the baseline was evaluated_",
        "## Reward alignment", align,
        "## Protocol", report["protocol"],
    ]) + "\n"


def comparison_table(report: dict) -> pd.DataFrame:
    """One row per policy: metric means, the NDCG@10 difference vs the baseline with its CI, alignment."""
    rows = []
    for name, p in report["policies"].items():
        d = p["diff_vs_baseline"]["ndcg@10"]
        rows.append({
            "policy": name, "method": p["method"] or "-",
            **{m: p["metrics"][m]["mean"] for m in METRIC_NAMES},
            "ndcg@10_diff": d["mean"], "ndcg@10_diff_low": d["low"], "ndcg@10_diff_high": d["high"],
            "hr@10_liked": p["reward_alignment"]["hr@10_liked"],
            "hr@10_disliked": p["reward_alignment"]["hr@10_disliked"],
            "reward_weighted_ndcg@10": p["metrics"]["reward_weighted_ndcg@10"]["mean"],
            JUDGED: p[JUDGED]["mean"],
        })
    return pd.DataFrame(rows)


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_report(report: dict, path) -> Path:
    """PNG: NDCG@10 and HR@10 per policy with 95% CI bars, and both paired differences vs the baseline."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report["policies"])
    pols = report["policies"]
    x = np.arange(len(names))
    fig = Figure(figsize=(4 + 1.6 * len(names), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)

    def bars(ax, ivs, offset=0.0, width=0.6, label=None):
        mean = np.array([iv["mean"] for iv in ivs])
        err = np.array([[iv["mean"] - iv["low"] for iv in ivs], [iv["high"] - iv["mean"] for iv in ivs]])
        ax.bar(x + offset, mean, width, yerr=err, capsize=4, label=label)

    for ax, metric in zip(axes[:2], ("ndcg@10", "hr@10")):
        bars(ax, [pols[n]["metrics"][metric] for n in names])
        ax.set_title(f"{metric.upper()} (95% CI)", fontsize=10)
    for i, metric in enumerate(("ndcg@10", "hr@10")):
        bars(axes[2], [pols[n]["diff_vs_baseline"][metric] for n in names], offset=(i - 0.5) * 0.38, width=0.38,
             label=metric.upper())
    axes[2].axhline(0.0, color="black", linewidth=0.8)
    axes[2].set_title(f"paired difference vs {report['baseline']}", fontsize=10)
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    return _atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """report.json, report.md and report.png under `out_dir` (each written atomically)."""
    out = Path(out_dir)
    text = json.dumps(report, indent=2, allow_nan=False)
    markdown = report_markdown(report)
    return {
        "json": _atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(text)),
        "md": _atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown)),
        "png": plot_report(report, out / "report.png"),
    }
