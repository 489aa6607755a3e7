"""Figures of the robustness study: true-reward gain vs noise per variant, and the λ trade-off of exp_rw_sft.

Both read the tidy table of robustness.py, draw on their own matplotlib Figure with an Agg canvas
(no pyplot global state) and write a PNG atomically. When there is nothing to draw the figure says
why instead of failing, so the study's outputs are always complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recmodels.evaluation.plots import figure, message_figure, save_png  # the report's figure helpers: same look, atomic writes

Y_LABEL = "Δ true top-10 reward vs pretrained (95% CI)"


def _errorbar(ax, x, rows: pd.DataFrame, **kwargs) -> None:
    mean = rows["true_top10_diff"].to_numpy(np.float64)
    yerr = np.vstack([mean - rows["true_top10_diff_low"].to_numpy(np.float64),
                      rows["true_top10_diff_high"].to_numpy(np.float64) - mean])
    ax.errorbar(x, mean, yerr=yerr, capsize=3, linewidth=1.2, marker="o", markersize=4, **kwargs)


def plot_improvement_vs_noise(table: pd.DataFrame, path) -> Path:
    """One line per variant: the paired true top-10 gain over the pretrained policy at each noise level."""
    title = "True top-10 reward gain vs observed-reward noise"
    if table.empty:
        return message_figure(path, title, "No post-trained variant was evaluated.")
    import matplotlib

    colors = matplotlib.colormaps["tab10"]
    variants = list(dict.fromkeys(table["variant"]))
    levels = np.sort(table["noise"].unique())
    spacing = float(np.min(np.diff(levels))) if len(levels) > 1 else 1.0
    fig = figure(8, 4.8)
    ax = fig.subplots()
    for i, variant in enumerate(variants):
        rows = table[table["variant"] == variant].sort_values("noise")
        offset = (i - (len(variants) - 1) / 2) * 0.012 * spacing * 4  # small dodge so the intervals stay apart
        _errorbar(ax, rows["noise"].to_numpy(np.float64) + offset, rows, color=colors(i % 10), label=variant,
                  linestyle="-" if str(rows["method"].iloc[0]) == "exp_rw_sft" else "--")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(levels, [f"{x:g}" for x in levels])
    ax.set_xlabel("std of the observed-reward noise", fontsize=9)
    ax.set_ylabel(Y_LABEL, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8)
    return save_png(fig, path)


def plot_lambda_tradeoff(table: pd.DataFrame, path) -> Path:
    """exp_rw_sft: x = λ (log scale), y = true top-10 gain, one line per noise level; ★ = λ selected on valid."""
    title = "exp_rw_sft λ trade-off: true-reward gain per noise level"
    exp = table[table["method"] == "exp_rw_sft"] if not table.empty else table
    n = 0 if exp.empty else exp.groupby("noise")["lambda"].nunique().max()
    if n < 2:  # the tuned protocol keeps one λ per level, the one valid chose
        return message_figure(path, title, f"Needs exp_rw_sft at 2 or more λ values per noise level; this study "
                                           f"has {n}.")
    import matplotlib

    colors = matplotlib.colormaps["viridis"]
    levels = np.sort(exp["noise"].unique())
    fig = figure(7.5, 4.6)
    ax = fig.subplots()
    for i, noise in enumerate(levels):
        rows = exp[exp["noise"] == noise].sort_values("lambda")
        color = colors(0.85 * i / max(len(levels) - 1, 1))  # stop before viridis' pale yellow
        _errorbar(ax, rows["lambda"].to_numpy(np.float64), rows, color=color, label=f"noise {noise:g}")
        chosen = rows[rows["selected_lambda"].astype(bool)]
        ax.plot(chosen["lambda"], chosen["true_top10_diff"], marker="*", markersize=13, color=color, linestyle="")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    lambdas = np.sort(exp["lambda"].unique())
    ax.set_xticks(lambdas, [f"{x:g}" for x in lambdas])
    ax.minorticks_off()
    ax.set_xlabel("λ (weights exp(r / λ); small λ = sharper reward weighting)", fontsize=9)
    ax.set_ylabel(Y_LABEL, fontsize=9)
    ax.set_title(f"{title} (★ = λ selected on valid)", fontsize=10)
    ax.legend(fontsize=8)
    return save_png(fig, path)
