"""Figures of the evaluation report (docs/design.md §5): policy comparison, λ sweep, training curves,
HR@10 vs hallucination frontier.

Every function reads the JSON-serializable dict of `report.build_report`, draws on its own
matplotlib Figure with an Agg canvas (no pyplot global state, safe in worker threads) and writes
a PNG atomically. When there is nothing to draw (fewer than 2 λ points, no training history) the
figure says so instead of failing, so a report is always complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recmodels.storage.atomic_files import atomic_write

DPI = 110


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path) -> Path:
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def message_figure(path, title: str, text: str) -> Path:
    """A figure that explains why the plot it stands for is empty."""
    fig = figure(6, 3)
    fig.suptitle(title, fontsize=11)
    fig.text(0.5, 0.45, text, ha="center", va="center", fontsize=10, wrap=True)
    return save_png(fig, path)


def _yerr(ivs: list[dict]) -> np.ndarray:
    """[2, n] distances from each mean to its interval ends."""
    return np.array([[iv["mean"] - iv["low"] for iv in ivs], [iv["high"] - iv["mean"] for iv in ivs]])


def plot_report(report: dict, path) -> Path:
    """PNG: NDCG@10 and HR@10 per policy with 95% CI bars, and both paired differences vs the baseline."""
    names = list(report["policies"])
    pols = report["policies"]
    x = np.arange(len(names))
    fig = figure(4 + 1.6 * len(names), 4.2)
    axes = fig.subplots(1, 3)

    def bars(ax, ivs, offset=0.0, width=0.6, label=None):
        ax.bar(x + offset, [iv["mean"] for iv in ivs], width, yerr=_yerr(ivs), capsize=4, label=label)

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
    return save_png(fig, path)


def plot_lambda_sweep(report: dict, path) -> Path:
    """exp_rw_sft λ sweep: paired gains vs the baseline (95% CI) against the KL to it at the selected step.

    x = KL(π || π_ref) on valid at each policy's selected step (how far it moved: lost robustness),
    y = Δ reward-weighted NDCG@10 and Δ NDCG@10 vs the baseline; points annotated with λ.
    """
    title = "exp_rw_sft λ sweep: improvement vs distance from the pretrained policy"
    points = [r for r in report.get("lambda_sweep", []) if r.get("kl_to_reference") is not None]
    if len(points) < 2:
        return message_figure(path, title, f"Needs at least 2 exp_rw_sft policies with a KL to the reference at their "
                                     f"selected step; this report has {len(points)}.")
    fig = figure(7, 4.6)
    ax = fig.subplots()
    kl = np.array([r["kl_to_reference"] for r in points])
    for key, label, marker in (("diff_reward_weighted_ndcg@10", "Δ reward-weighted NDCG@10", "o"),
                               ("diff_ndcg@10", "Δ NDCG@10", "s")):
        ivs = [r[key] for r in points]
        ax.errorbar(kl, [iv["mean"] for iv in ivs], yerr=_yerr(ivs), marker=marker, capsize=4, linewidth=1,
                    label=label)
    for r in points:
        ax.annotate(f"λ={r['lambda']:g}", (r["kl_to_reference"], r["diff_reward_weighted_ndcg@10"]["mean"]),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("KL(π || π_pretrained) on valid at the selected step", fontsize=9)
    ax.set_ylabel(f"paired difference vs {report['baseline']} (95% CI)", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_training_curves(report: dict, path) -> Path:
    """Two panels: valid NDCG@10 vs step and KL to the reference vs step, one line per post-trained policy."""
    title = "Post-training curves"
    runs = {name: p["training"] for name, p in report["policies"].items()
            if (p.get("training") or {}).get("history")}
    if not runs:
        return message_figure(path, title, "No post-training history was passed to the report.")
    import matplotlib

    colors = matplotlib.colormaps["tab20"]
    fig = figure(11, 4.4)
    axes = fig.subplots(1, 2)
    for i, (name, training) in enumerate(runs.items()):
        label = name  # on the first panel the policy appears in
        for ax, key in zip(axes, ("valid_ndcg@10", "kl_to_reference")):
            rows = [r for r in training["history"] if r.get(key) is not None]
            if not rows:
                continue
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=".", color=colors(i % 20),
                    label=label)
            label = None
            best = [r for r in rows if r["step"] == training.get("best_step")]
            if best:
                ax.plot([best[0]["step"]], [best[0][key]], marker="*", markersize=11, color=colors(i % 20))
    for ax, label in zip(axes, ("valid NDCG@10", "KL(π || π_pretrained) on valid")):
        ax.set_xlabel("optimizer step", fontsize=9)
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"{title} (★ = selected step)", fontsize=11)
    fig.legend(loc="outside right upper", fontsize=7)
    return save_png(fig, path)


def plot_hallucination_frontier(report: dict, path) -> Path:
    """HR@10 (95% CI) against the hallucination rate: the baseline, every nll_grpo α and adagrpo, one labelled point
    each (the report's `hallucination_frontier`). Atomic policies sit at rate 0."""
    title = "HR@10 vs hallucination rate (unconstrained top-10 tuples that are no item)"
    points = report.get("hallucination_frontier") or []
    if not points:
        return message_figure(path, title, "No pretrained, nll_grpo or adagrpo policy was evaluated.")
    fig = figure(7, 4.6)
    ax = fig.subplots()
    markers = {"nll_grpo": "o", "adagrpo": "*"}
    for r in points:
        iv = {"mean": r["hr@10"], "low": r["hr@10_low"], "high": r["hr@10_high"]}
        ax.errorbar([r["hallucination_rate"]], [r["hr@10"]], yerr=_yerr([iv]), capsize=4,
                    marker=markers.get(r["method"], "s"), markersize=9 if r["method"] == "adagrpo" else 6,
                    linestyle="none")
        label = r["policy"] if r["alpha"] is None else f"{r['policy']} (α={r['alpha']:g})"
        ax.annotate(label, (r["hallucination_rate"], r["hr@10"]), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    rates = [r["hallucination_rate"] for r in points]
    pad = max(0.01, 0.1 * (max(rates) - min(rates)))
    ax.set_xlim(min(rates) - pad, max(rates) + pad)
    ax.set_xlabel("hallucination rate (share of unconstrained top-10 tuples that are no item)", fontsize=9)
    ax.set_ylabel("test HR@10 (95% CI)", fontsize=9)
    ax.set_title(title, fontsize=10)
    return save_png(fig, path)
