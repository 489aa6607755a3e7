"""Rendering of the evaluation report: Markdown, the comparison table, and the files on disk.

`write_report` writes report.json, report.md and the figures of `plots.py` (atomically): report.png,
lambda_sweep.png, training_curves.png and hr10_vs_hallucination.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recmodels.evaluation.metrics import METRIC_NAMES
from recmodels.storage.atomic_files import atomic_write
from recmodels.evaluation.plots import (plot_hallucination_frontier, plot_lambda_sweep, plot_report,
                                        plot_training_curves)
from recmodels.evaluation.report import (JUDGED, RW_NDCG, TELEMETRY, format_interval, shown_knobs, unmasked_metrics,
                                         verdict)
from recmodels.post_training.contexts import SIGNAL_KEYS


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown (pipe) table, every cell as its text: tabulate reformats nothing."""
    return frame.astype(str).to_markdown(index=False, disable_numparse=True)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    return markdown_table(pd.DataFrame(rows, columns=headers))


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _knobs(name: str, method: str | None, params: dict) -> str:
    """The policy's key knobs ("λ=0.3, baseline=True"), from its record or its variant in the variants table."""
    return ", ".join(f"{label}={_num(value)}" for label, value in shown_knobs(name, method, params).items()) or "-"


def _telemetry_md(pols: dict) -> str:
    rows = []
    for name, p in pols.items():
        t = p.get("training")
        if t:
            at = t["at_best_step"] or {}
            rows.append([name, p["method"] or "-", _knobs(name, p["method"], t["params"]), _num(t["best_step"]),
                         *(_num(at.get(k)) for k in ("kl_to_reference", "valid_ndcg@10", *TELEMETRY))])
    if not rows:
        return "_no post-training record was passed to the report_"
    return _md_table(["policy", "method", "knobs", "best step", "KL to reference", "valid ndcg@10", *TELEMETRY], rows)


def _signal_md(pols: dict) -> str:
    rows = []
    for name, p in pols.items():
        t = p.get("training")
        if t:
            signal = t.get("signal_per_step") or {}
            rows.append([name, p["method"] or "-", *(_num(signal.get(k)) for k in SIGNAL_KEYS),
                         _num(t.get("grpo_weight"))])
    if not rows:
        return "_no post-training record was passed to the report_"
    return _md_table(["policy", "method", "logged targets (NLL)", "RL contexts", "rollouts scored",
                      "GRPO weight (α × gate-open rate)"], rows)


def _sweep_md(report: dict) -> str:
    sweep = report.get("lambda_sweep") or []
    if not sweep:
        return "_no exp_rw_sft policy was evaluated_"
    return _md_table(["λ", "policy", f"Δ reward-weighted ndcg@10 vs `{report['baseline']}`", "Δ ndcg@10",
                      "KL to reference"],
                     [[f"{r['lambda']:g}", r["policy"], format_interval(r[f"diff_{RW_NDCG}"], signed=True),
                       format_interval(r["diff_ndcg@10"], signed=True), _num(r["kl_to_reference"])] for r in sweep])


def _decoding_md(pols: dict) -> str:
    """Per policy: tokenization, constrained vs unconstrained HR@10 / NDCG@10 and the hallucination rate."""
    rows = []
    for name, p in pols.items():
        d = p.get("decoding") or {}
        con, free = d.get("constrained") or {}, d.get("unconstrained") or {}
        rows.append([name, d.get("tokenization", "atomic"), _num(d.get("beam_size")),
                     *(_num(con.get(m)) for m in ("hr@10", "ndcg@10")), *(_num(free.get(m)) for m in ("hr@10", "ndcg@10")),
                     f"{p.get('hallucination_rate', 0.0):.2%}"])
    return _md_table(["policy", "tokenization", "beams", "hr@10 constrained", "ndcg@10 constrained",
                      "hr@10 unconstrained", "ndcg@10 unconstrained", "hallucination rate"], rows)


UNMASKED_COLUMNS = ("hr@10", "ndcg@10")  # shown beside the masked metrics in the accuracy table
UNMASKED_LABEL = "unmasked (RecBole-comparable)"


def _interval_or_dash(iv: dict | None) -> str:
    return "-" if iv is None else format_interval(iv)


def _unmasked_cells(p: dict) -> list[str]:
    """The accuracy table's unmasked HR@10 / NDCG@10 and seen-in-top-10 cells of one policy ("-" if absent)."""
    unmasked = unmasked_metrics(p)
    return [*(_interval_or_dash(unmasked.get(m)) for m in UNMASKED_COLUMNS),
            _interval_or_dash(p.get("seen_in_top10_unmasked"))]


def _protocols_md(report: dict) -> str:
    protocols = report.get("protocols") or {}
    return "\n".join(f"- {name}: {text}" for name, text in protocols.items())


def report_markdown(report: dict) -> str:
    """Verdict, tables (metrics, paired differences, reward alignment, λ sweep, telemetry), skipped, protocol."""
    metrics, baseline, pols = report["metrics"], report["baseline"], report["policies"]
    acc = _md_table(["policy", "method", *metrics, *(f"{m} {UNMASKED_LABEL}" for m in UNMASKED_COLUMNS),
                     "history items in unmasked top-10"],
                    [[name, p["method"] or "-", *(format_interval(p["metrics"][m]) for m in metrics), *_unmasked_cells(p)]
                     for name, p in pols.items()])
    diff_cols = [*metrics, JUDGED]
    diff = _md_table(["policy", *diff_cols],
                     [[name, *(format_interval(p["diff_vs_baseline"][m], signed=True) for m in diff_cols)]
                      for name, p in pols.items() if name != baseline])

    def opt(v):
        return "n/a" if v is None else f"{v:.3f}"

    align = _md_table(
        ["policy", "hr@10 liked", "hr@10 disliked", "n liked", "n disliked", "reward-weighted ndcg@10",
         "ranker top-10 score"],
        [[name, opt(p["reward_alignment"]["hr@10_liked"]), opt(p["reward_alignment"]["hr@10_disliked"]),
          str(p["reward_alignment"]["n_liked"]), str(p["reward_alignment"]["n_disliked"]),
          format_interval(p["metrics"][RW_NDCG]), format_interval(p[JUDGED])] for name, p in pols.items()])
    sentences = verdict(report)
    skipped = report.get("skipped") or {}
    return "\n\n".join([
        "# Evaluation report",
        f"{report['n_users']} test users; mean [95% bootstrap CI].",
        "## Verdict", " ".join(sentences) if sentences else "_only the baseline was evaluated_",
        "## Accuracy",
        f"Masked protocol (primary: the user's history items excluded), then HR@10 / NDCG@10 {UNMASKED_LABEL}: "
        "the history items compete, as in RecBole's protocol for sequential models.",
        acc,
        f"## Paired difference vs `{baseline}`", diff if len(pols) > 1 else "_only the baseline was evaluated_",
        "## Reward alignment", align,
        "## Decoding: constrained vs unconstrained",
        "Atomic policies rank the catalog (one decoding mode, no hallucination possible); semantic-ID policies "
        "beam-search code tuples with (constrained) and without (unconstrained) the prefix trie of real items. "
        "The hallucination rate is the share of unconstrained top-10 tuples that are no item; the HR@10 vs "
        "hallucination frontier is in hr10_vs_hallucination.png.",
        _decoding_md(pols),
        "## λ sweep of exp_rw_sft", _sweep_md(report),
        "## Training telemetry", _telemetry_md(pols),
        "## Signal per step",
        "Mean per optimizer step over the training: logged targets in an NLL term, RL contexts newly drawn (ppo "
        "reuses its contexts for its inner epochs), generated items scored by the ranker; the average weight of "
        "the GRPO term (adagrpo: α times its gate-open rate, its effective α). RL methods take one context per "
        "window unless their `contexts` knob is `every` (a context at every real target, as many as an NLL step's "
        "targets).",
        _signal_md(pols),
        "## Skipped methods",
        "\n".join(f"- `{name}`: {reason}" for name, reason in skipped.items()) or "_none_",
        "## Protocol", _protocols_md(report), report["protocol"],
    ]) + "\n"


def comparison_table(report: dict) -> pd.DataFrame:
    """One row per policy: metric means (masked; HR@10 / NDCG@10 also unmasked), the NDCG@10 difference vs the
    baseline with its CI, alignment."""
    rows = []
    for name, p in report["policies"].items():
        d = p["diff_vs_baseline"]["ndcg@10"]
        rows.append({
            "policy": name, "method": p["method"] or "-",
            **{m: p["metrics"][m]["mean"] for m in METRIC_NAMES},
            **{f"{m}_unmasked": unmasked_metrics(p).get(m, {}).get("mean") for m in UNMASKED_COLUMNS},
            "seen_in_top10_unmasked": (p.get("seen_in_top10_unmasked") or {}).get("mean"),
            "ndcg@10_diff": d["mean"], "ndcg@10_diff_low": d["low"], "ndcg@10_diff_high": d["high"],
            "hr@10_liked": p["reward_alignment"]["hr@10_liked"],
            "hr@10_disliked": p["reward_alignment"]["hr@10_disliked"],
            RW_NDCG: p["metrics"][RW_NDCG]["mean"],
            JUDGED: p[JUDGED]["mean"],
            "hallucination_rate": p.get("hallucination_rate", 0.0),
        })
    return pd.DataFrame(rows)


def write_report(report: dict, out_dir) -> dict[str, Path]:
    """report.json, report.md, report.png, lambda_sweep.png, training_curves.png and hr10_vs_hallucination.png
    under `out_dir` (atomic)."""
    out = Path(out_dir)
    text = json.dumps(report, indent=2, allow_nan=False)
    markdown = report_markdown(report)
    return {
        "json": atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(text)),
        "md": atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown)),
        "png": plot_report(report, out / "report.png"),
        "lambda_png": plot_lambda_sweep(report, out / "lambda_sweep.png"),
        "curves_png": plot_training_curves(report, out / "training_curves.png"),
        "frontier_png": plot_hallucination_frontier(report, out / "hr10_vs_hallucination.png"),
    }
