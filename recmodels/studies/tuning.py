"""Equal tuning for every method: the same small search on valid for each, then the methods compared at the
settings valid chose (docs/studies.md, "Tuning study").

Every method gets the learning rates of `lrs` crossed with the values of the one knob it is searched over
(KNOB_GRID: λ for exp_rw_sft, the KL weight β for dpo, ppo and grpo, α for nll_grpo and adagrpo; sft and
ips the learning rate only), each from the same pretrained policy with the same step budget, valid checks
dense early (`early_eval_every` up to `early_eval_until`) then every `eval_every` steps. For each method the
setting with the best valid NDCG@10 (at its selected step) is chosen; test is only read for the chosen
settings' report and for the full grid's table, never to choose. One comparison (`run_comparison`) trains
and evaluates every grid point, so the pretrained policy and the ranker are shared.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from recmodels.data.oracle import Oracle
from recmodels.data.rewards import RewardSpec
from recmodels.evaluation.report import PolicyEvaluation, build_report
from recmodels.evaluation.report_output import report_markdown
from recmodels.post_training.loop import PostTrainConfig
from recmodels.post_training.registry import METHODS, get_method
from recmodels.post_training.variants import Variant, knob_suffix
from recmodels.storage.atomic_files import atomic_write
from recmodels.studies.comparison import BASELINE, Callback, ComparisonConfig, ComparisonResult, run_comparison
from recmodels.training.ranker_training import RankerTrainConfig

DEFAULT_LRS: tuple[float, ...] = (3e-5, 1e-4, 3e-4)
# the knob each method is searched over besides the learning rate, and its values (None: the learning rate only)
KNOB_GRID: dict[str, tuple[str, tuple[float, ...]] | None] = {
    "sft": None,
    "exp_rw_sft": ("lam", (0.3, 1.0, 3.0)),
    "ips": None,
    "dpo": ("beta", (0.03, 0.1, 0.3)),
    "ppo": ("beta", (0.01, 0.05, 0.2)),
    "grpo": ("beta", (0.01, 0.04, 0.2)),
    "nll_grpo": ("alpha", (0.1, 0.3, 1.0)),
    "adagrpo": ("alpha", (0.1, 0.3, 1.0)),
}


@dataclass
class TuningConfig:
    methods: Sequence[str] = tuple(KNOB_GRID)
    lrs: Sequence[float] = DEFAULT_LRS
    knob_grid: Mapping[str, tuple[str, tuple[float, ...]] | None] = field(default_factory=lambda: dict(KNOB_GRID))
    pretrain: dict = field(default_factory=dict)  # ComparisonConfig.pretrain
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    # every check of the whole budget: the grid reads each setting's best step from all of them
    post_train: PostTrainConfig = field(default_factory=lambda: PostTrainConfig(early_eval_every=5,
                                                                                early_eval_until=50, patience=None))
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"TuningConfig.methods: unknown methods {unknown}; known: {list(METHODS)}")
        if not self.lrs or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"TuningConfig.lrs must be positive learning rates, got {list(self.lrs)}")
        for method in self.methods:
            grid = self.knob_grid.get(method)
            if grid is not None and grid[0] not in get_method(method).params_cls.model_fields:
                raise ValueError(f"TuningConfig.knob_grid: {grid[0]!r} is no knob of {method!r}")

    def variants(self) -> tuple[Variant, ...]:
        """One variant per grid point: `<method>__lr_<lr>[__<knob>_<value>]`, the lr as a training setting."""
        out = []
        for method in self.methods:
            grid = self.knob_grid.get(method)
            points = [{}] if grid is None else [{grid[0]: value} for value in grid[1]]
            for lr in self.lrs:
                for knobs in points:
                    name = "__".join([method, f"lr_{knob_suffix(lr)}",
                                      *(f"{k}_{knob_suffix(v)}" for k, v in knobs.items())])
                    out.append(Variant(name, method, knobs, train={"lr": lr}))
        return tuple(out)


@dataclass
class TuningResult:
    comparison: ComparisonResult  # every grid point, trained and evaluated
    grid: pd.DataFrame  # one row per grid point: method, lr, knob, value, best step, valid and test NDCG@10
    chosen: dict[str, str]  # method -> the variant valid chose
    report: dict  # build_report over the pretrained policy and each method at its chosen setting (named by method)
    evaluations: list[PolicyEvaluation] = field(default_factory=list)  # the report's per-user results, baseline first


# with an oracle (simulated logs), each grid point's paired difference vs the pretrained policy in these too
ORACLE_DIFFS = ("true_top10", "hacking_gap_top10")


def run_tuning(interactions: pd.DataFrame, n_items: int, catalog: pd.DataFrame | None,
               oracle: Oracle | Mapping | None = None, config: TuningConfig | None = None,
               callback: Callback | None = None, *, dataset: str = "data",
               reward_spec: RewardSpec | None = None) -> TuningResult:
    """Train every grid point of `config`, choose each method's setting on valid, report the chosen ones."""
    config = config or TuningConfig()
    variants = config.variants()
    comparison = run_comparison(
        interactions, n_items, catalog, oracle,
        ComparisonConfig(pretrain=config.pretrain, ranker=config.ranker, post_train=config.post_train,
                         variants=variants, seed=config.seed, n_boot=config.n_boot),
        callback, dataset=dataset, reward_spec=reward_spec)
    return choose_settings(comparison, variants, n_boot=config.n_boot, seed=config.seed)


def choose_settings(comparison: ComparisonResult, variants: Sequence[Variant], *, n_boot: int = 1000,
                    seed: int = 0) -> TuningResult:
    """Each method's grid point with the best valid NDCG@10, and the report of the methods at those points."""
    rows = []
    for v in variants:
        knob, value = next(iter(v.method_params.items()), (None, None))
        row = {"method": v.method, "variant": v.name, "lr": v.train["lr"], "knob": knob, "value": value}
        trained = comparison.post_trained.get(v.name)
        if trained is None:
            rows.append({**row, "skipped": comparison.skipped.get(v.name)})
            continue
        policy = comparison.report["policies"][v.name]
        at_best = next(r for r in trained.history if r["step"] == trained.best_step)
        row |= {"best_step": trained.best_step, "valid_ndcg@10": trained.best_valid_ndcg10,
                "test_ndcg@10": policy["metrics"]["ndcg@10"]["mean"],
                "kl_to_reference": at_best.get("kl_to_reference")}
        row |= {f"{m}_diff": policy["diff_vs_baseline"][m]["mean"] for m in ORACLE_DIFFS
                if m in policy["diff_vs_baseline"]}
        rows.append({**row, "skipped": None})
    grid = pd.DataFrame(rows)
    chosen = {}
    for method, group in grid[grid["skipped"].isna()].groupby("method", sort=False):
        chosen[method] = group.loc[group["valid_ndcg@10"].idxmax(), "variant"]  # the first of equal ones
    by_variant = {e.name: e for e in comparison.evaluations}
    evaluations = [dataclasses.replace(by_variant[BASELINE])]
    evaluations += [dataclasses.replace(by_variant[variant], name=method) for method, variant in chosen.items()]
    skipped = {m: reason for m, reason in
               grid[grid["skipped"].notna()].groupby("method", sort=False)["skipped"].first().items()
               if m not in chosen}
    report = build_report(evaluations, baseline=BASELINE, n_boot=n_boot, seed=seed, skipped=skipped)
    for key in ("dataset", "ranker", "oracle_best_top10_true"):
        if key in comparison.report:
            report[key] = comparison.report[key]
    by_name = {v.name: v for v in variants}
    report["chosen"] = {m: {"variant": name, "lr": by_name[name].train["lr"], **by_name[name].method_params}
                        for m, name in chosen.items()}
    return TuningResult(comparison=comparison, grid=grid, chosen=chosen, report=report, evaluations=evaluations)


def chosen_table(result: TuningResult) -> pd.DataFrame:
    """One row per method at its chosen setting: lr, knob, selected step, valid NDCG@10, test NDCG@10 (masked and
    unmasked, [mean, 95% CI]), the GRPO term's average weight (adagrpo: α x gate-open rate)."""
    rows = []
    for method, variant in result.chosen.items():
        g = result.grid[result.grid["variant"] == variant].iloc[0]
        policy = result.report["policies"][method]
        test, unmasked = policy["metrics"]["ndcg@10"], policy["unmasked"]["metrics"]["ndcg@10"]
        knob = f"{g['knob']}={g['value']:g}" if isinstance(g["knob"], str) else "-"  # NaN: lr-only method
        rows.append({"method": method, "lr": g["lr"], "knob": knob,
                     "best_step": int(g["best_step"]), "valid_ndcg@10": round(g["valid_ndcg@10"], 4),
                     "test_ndcg@10": f"{test['mean']:.4f} [{test['low']:.4f}, {test['high']:.4f}]",
                     "test_ndcg@10_unmasked": f"{unmasked['mean']:.4f} [{unmasked['low']:.4f}, {unmasked['high']:.4f}]",
                     "grpo_weight": policy["training"]["grpo_weight"] or "-"})
    return pd.DataFrame(rows)


def tuning_markdown(result: TuningResult) -> str:
    grid = result.grid.drop(columns=["skipped"] if result.grid["skipped"].isna().all() else [])
    return "\n\n".join([
        "# Tuning study",
        f"Data set `{result.report['dataset']}`. Each method's setting chosen on valid NDCG@10 (at its selected "
        "step) among its grid points; test NDCG@10 (leave-one-out test split, full ranking) masked (history "
        "items excluded) and unmasked (RecBole's protocol), mean [95% bootstrap CI].",
        "## Chosen settings", chosen_table(result).to_markdown(index=False),
        "## Every grid point", grid.to_markdown(index=False, floatfmt="g"),
        report_markdown(result.report).replace("# Evaluation report", "## Report at the chosen settings", 1)
        .replace("\n## ", "\n### "),
    ]) + "\n"


def write_tuning(result: TuningResult, out_dir) -> dict:
    """tuning.md, grid.csv, chosen.csv and report.json (the chosen settings' report) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, markdown = json.dumps(result.report, indent=2, allow_nan=False), tuning_markdown(result)
    return {
        "md": atomic_write(out / "tuning.md", lambda tmp: Path(tmp).write_text(markdown)),
        "grid_csv": atomic_write(out / "grid.csv", lambda tmp: result.grid.to_csv(tmp, index=False)),
        "chosen_csv": atomic_write(out / "chosen.csv", lambda tmp: chosen_table(result).to_csv(tmp, index=False)),
        "json": atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(text)),
    }
