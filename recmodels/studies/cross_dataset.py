"""The cross-data-set comparison: evaluation reports of several data sets, summarized in one table.

The reports are the chain's own, one per data set (the `cross_dataset_summary` asset reads the latest
of each data set partition). `summary_table` turns them into methods x data sets with the main metric
and its 95% interval in each cell ("0.109 [0.093, 0.125]"); on simulated data a second table holds
the oracle's true top-10 reward.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from recmodels.storage.atomic_files import atomic_write
from recmodels.evaluation.report import format_interval
from recmodels.evaluation.report_output import markdown_table
from recmodels.studies.comparison import BASELINE

MAIN_METRIC = "ndcg@10"
TRUE_METRIC = "true_top10"
SKIPPED = "skipped"


def _policy_order(reports: Mapping[str, dict]) -> list[str]:
    """The baseline, then every variant in the configured order (`report["variants"]`) of the first report
    that has it, skipped variants included."""
    names = [BASELINE] if any(BASELINE in r["policies"] for r in reports.values()) else []
    for r in reports.values():
        order = r.get("variants") or [*r["policies"], *(r.get("skipped") or {})]
        names += [n for n in order if n not in names]
    return names


def summary_table(reports: Mapping[str, dict], metric: str = MAIN_METRIC, section: str = "metrics") -> pd.DataFrame:
    """Methods as rows, data sets as columns, cell = '<mean> [<low>, <high>]' of `metric`.

    section: "metrics" (the policy's own value) or "diff_vs_baseline" (paired difference vs the
    pretrained policy, signed, without the baseline's own row). Data sets whose reports lack `metric`
    (true_top10 off the simulator) are left out; a method skipped on a data set reads "skipped", one absent "-".
    """
    if section not in ("metrics", "diff_vs_baseline"):
        raise ValueError(f"summary_table: section must be 'metrics' or 'diff_vs_baseline', got {section!r}")
    datasets = [d for d, r in reports.items() if metric in r["metrics"]]
    diff = section == "diff_vs_baseline"
    rows = []
    for name in _policy_order({d: reports[d] for d in datasets}):
        if diff and name == BASELINE:
            continue  # its difference with itself
        row = {"method": name}
        for d in datasets:
            pol = reports[d]["policies"].get(name)
            row[d] = (format_interval(pol[section][metric], signed=diff) if pol is not None
                      else SKIPPED if name in (reports[d].get("skipped") or {}) else "-")
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", *datasets])


def summary_records(reports: Mapping[str, dict],
                    metrics: Sequence[str] = (MAIN_METRIC, TRUE_METRIC)) -> pd.DataFrame:
    """Long form for CSV / JSON: one row per (data set, method, metric): mean, interval, paired diff, skip reason."""
    rows = []
    for d, r in reports.items():
        for name in _policy_order({d: r}):
            pol = r["policies"].get(name)
            for metric in (m for m in metrics if m in r["metrics"]):
                row = {"dataset": d, "method": name, "metric": metric,
                       "skipped": None if pol is not None else (r.get("skipped") or {}).get(name)}
                if pol is not None:
                    iv, diff = pol["metrics"][metric], pol["diff_vs_baseline"][metric]
                    row.update(mean=iv["mean"], low=iv["low"], high=iv["high"], diff=diff["mean"],
                               diff_low=diff["low"], diff_high=diff["high"])
                rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(reports: Mapping[str, dict]) -> str:
    """The cross-data-set summary: the main metric, its paired gain, the true reward on simulated data, skips."""
    parts = ["# Cross-data-set comparison",
             "Methods as rows, data sets as columns; mean [95% bootstrap CI over test users]. Test users: "
             + ", ".join(f"{d} {r['n_users']}" for d, r in reports.items()) + ".",
             f"## Test {MAIN_METRIC.upper()}", markdown_table(summary_table(reports, MAIN_METRIC)),
             f"## Paired {MAIN_METRIC.upper()} difference vs `{BASELINE}`",
             markdown_table(summary_table(reports, MAIN_METRIC, "diff_vs_baseline"))]
    if any(TRUE_METRIC in r["metrics"] for r in reports.values()):
        parts += ["## True top-10 reward (simulated data: the oracle's expected reward of each top-10 list)",
                  markdown_table(summary_table(reports, TRUE_METRIC)),
                  f"## Paired true top-10 reward difference vs `{BASELINE}`",
                  markdown_table(summary_table(reports, TRUE_METRIC, "diff_vs_baseline"))]
    skips = [f"- {d}: `{n}`: {why}" for d, r in reports.items() for n, why in (r.get("skipped") or {}).items()]
    parts += ["## Skipped", "\n".join(skips) or "_none_"]
    return "\n\n".join(parts) + "\n"


def write_summary(reports: Mapping[str, dict], out_dir) -> dict[str, Path]:
    """summary.md, summary.csv (the main table), summary.json (long form) and, with simulated data,
    true_top10.csv, under `out_dir`."""
    out = Path(out_dir)
    records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
               for row in summary_records(reports).to_dict("records")]
    markdown = summary_markdown(reports)
    files = {
        "md": atomic_write(out / "summary.md", lambda tmp: Path(tmp).write_text(markdown)),
        "csv": atomic_write(out / "summary.csv", lambda tmp: summary_table(reports).to_csv(tmp, index=False)),
        "json": atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1))),
    }
    true_table = summary_table(reports, TRUE_METRIC)
    if len(true_table.columns) > 1:
        files["true_csv"] = atomic_write(out / "true_top10.csv", lambda tmp: true_table.to_csv(tmp, index=False))
    return files
