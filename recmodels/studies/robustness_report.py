"""Rendering of the robustness study: Markdown report, tables as CSV / JSON, figures, per-level reports.

`write_robustness(result, out_dir)` writes (atomically):
- report.md: setup, findings, the gain tables (variants x noise levels), head-to-head comparisons
- table.csv / table.json: the tidy table (one row per noise level and variant)
- head_to_head.csv / head_to_head.json: the paired comparisons between methods
- improvement_vs_noise.png, lambda_tradeoff.png
- levels/noise-<level>/: each level's full evaluation report (report_output.write_report)
- grid.csv (tuned protocol only): every grid point of every level, the settings valid chose among them
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from recmodels.storage.atomic_files import atomic_write
from recmodels.evaluation.report_output import markdown_table, write_report
from recmodels.studies.findings import fmt_interval
from recmodels.studies.plots import plot_improvement_vs_noise, plot_lambda_tradeoff
from recmodels.studies.robustness import RobustnessResult

GAIN_TABLES = (("true_top10", "True top-10 reward: paired gain vs the pretrained policy"),
               ("ndcg@10", "NDCG@10 (observed test items): paired difference vs the pretrained policy"),
               ("hacking_gap_top10", "Reward-hacking gap (ranker-judged minus true top-10 reward): "
                                     "paired difference vs the pretrained policy"))


def gain_table(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows = variants, columns = noise levels, cell = '<diff> [<low>, <high>]' of `<metric>_diff`."""
    levels = sorted(table["noise"].unique())
    rows = []
    for variant in dict.fromkeys(table["variant"]):
        sub = table[table["variant"] == variant].set_index("noise")
        cells = {f"noise {x:g}": (fmt_interval(sub.at[x, f"{metric}_diff"], sub.at[x, f"{metric}_diff_low"],
                                               sub.at[x, f"{metric}_diff_high"]) if x in sub.index else "-")
                 for x in levels}
        rows.append({"variant": variant, **cells})
    return pd.DataFrame(rows)


def head_to_head_md(h2h: pd.DataFrame) -> str:
    if h2h.empty:
        return "_no pair of compared methods in this study_"
    rows = []
    for r in h2h.itertuples(index=False):
        relative = ("-" if r.relative is None or (isinstance(r.relative, float) and math.isnan(r.relative))
                    else fmt_interval(r.relative, r.relative_low, r.relative_high, percent=True))
        rows.append({"noise": f"{r.noise:g}", "a": f"`{r.a}`", "b": f"`{r.b}`", "metric": r.metric,
                     "a - b": fmt_interval(r.diff, r.diff_low, r.diff_high), "relative to b": relative})
    return markdown_table(pd.DataFrame(rows))


def setup_text(result: RobustnessResult) -> str:
    cfg = result.config
    sim = cfg.simulator_config(cfg.noise_levels[0])
    level = next(iter(result.comparisons.values()), None)
    size = (f"{level.report['n_users']} test users" if level is not None else "")
    sharing = ("pretrained ONCE and shared by every level (the levels log the same items; pretraining reads no "
               "rewards)" if result.pretraining_runs == 1 and len(cfg.noise_levels) > 1
               else f"pretrained {result.pretraining_runs} time(s), once per level")
    budget = (f"pretraining {cfg.pretrain}, ranker up to {cfg.ranker.epochs} epochs, every variant "
              f"{cfg.post_train.steps} post-training steps of batch {cfg.post_train.batch_size}")
    if cfg.lrs:
        pt = cfg.post_train
        early = f"every {pt.early_eval_every} steps up to step {pt.early_eval_until}, then " \
            if pt.early_eval_every else ""
        budget += (f"; tuned protocol: at each level every method searched over the learning rates {list(cfg.lrs)} "
                   f"x its own knob, valid checks {early}every {pt.eval_every} steps, each method compared at the "
                   "setting with the best valid NDCG@10 (the tables name it by its method; every grid point is in "
                   "grid.csv)")
    return (f"Simulator world: {sim.n_users} users, {sim.n_items} items, {sim.events_per_user} events per user, "
            f"seed {sim.seed}; observed-reward noise `{cfg.noise_kind}` with std in {list(cfg.noise_levels)}. "
            f"The policy was {sharing}; the ranker and every post-trained variant are trained per level on that "
            f"level's observed rewards. Budgets: {budget}. Metrics on {size}, 95% bootstrap intervals over users "
            f"({cfg.n_boot} resamples); the true reward comes from the simulator's oracle.")


def robustness_markdown(result: RobustnessResult) -> str:
    table = result.table
    parts = ["# Robustness study: post-training methods under observed-reward noise", "## Setup", setup_text(result),
             "## Findings", "\n".join(f"- {s}" for s in result.findings) or "_none_"]
    for metric, title in GAIN_TABLES:
        parts += [f"## {title}", markdown_table(gain_table(table, metric)) if not table.empty else "_no variant_"]
    parts += ["## Head-to-head (paired differences over the same test users)", head_to_head_md(result.head_to_head)]
    if result.grids is not None:
        chosen = [{"noise": f"{noise:g}", "method": f"`{m}`", **setting}
                  for noise, r in result.reports.items() for m, setting in r["chosen"].items()]
        parts += ["## Settings valid chose (tuned protocol)", markdown_table(pd.DataFrame(chosen))]
    bounds = [{"noise": f"{noise:g}",
               "pretrained true top-10": f"{r['policies'][r['baseline']]['metrics']['true_top10']['mean']:.3f}",
               "oracle best top-10": f"{r.get('oracle_best_top10_true', float('nan')):.3f}",
               "ranker valid RMSE": f"{r['ranker']['valid_rmse']:.3f}"} for noise, r in result.reports.items()]
    parts += ["## Per level: the baseline, the best possible list, the ranker", markdown_table(pd.DataFrame(bounds))]
    skipped = [f"- noise {noise:g}: `{name}`: {reason}" for noise, s in result.skipped.items()
               for name, reason in s.items()]
    parts += ["## Skipped variants", "\n".join(skipped) or "_none_",
              "## Figures", "![gain vs noise](improvement_vs_noise.png)\n\n![λ trade-off](lambda_tradeoff.png)"]
    return "\n\n".join(parts) + "\n"


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-safe dicts (NaN -> null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in row.items()} for row in df.to_dict("records")]


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_robustness(result: RobustnessResult, out_dir) -> dict[str, Path]:
    """Every output of the study under `out_dir`; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "md": _write_text(out / "report.md", robustness_markdown(result)),
        "table_csv": atomic_write(out / "table.csv", lambda tmp: result.table.to_csv(tmp, index=False)),
        "table_json": _write_text(out / "table.json", json.dumps(_records(result.table), indent=1)),
        "head_to_head_csv": atomic_write(out / "head_to_head.csv",
                                         lambda tmp: result.head_to_head.to_csv(tmp, index=False)),
        "head_to_head_json": _write_text(out / "head_to_head.json",
                                         json.dumps(_records(result.head_to_head), indent=1)),
        "findings_json": _write_text(out / "findings.json", json.dumps(result.findings, indent=1, ensure_ascii=False)),
        "noise_png": plot_improvement_vs_noise(result.table, out / "improvement_vs_noise.png"),
        "lambda_png": plot_lambda_tradeoff(result.table, out / "lambda_tradeoff.png"),
    }
    if result.grids is not None:
        files["grid_csv"] = atomic_write(out / "grid.csv", lambda tmp: result.grids.to_csv(tmp, index=False))
    for noise, report in result.reports.items():
        level_files = write_report(report, out / "levels" / f"noise-{noise:g}")
        files[f"level_{noise:g}_md"] = level_files["md"]
    return files
