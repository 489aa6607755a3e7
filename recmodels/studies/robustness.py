"""The robustness study (docs/design.md §5-6): how each method's true-reward gain holds up as observed rewards get noisier.

For each noise level of a grid the simulator draws the same world (users, items, logging policy)
from the same seed, changing only the noise of the observed rewards; every level then runs one
comparison (comparison.py): the ranker is fitted on that level's observed rewards and every
variant (exp_rw_sft at several λ, ppo, dpo, grpo, adagrpo, ...) is post-trained from the
pretrained policy and judged by the oracle's TRUE expected reward of its top-10 lists.

Compute sharing: the simulator draws the logged items before the reward noise (its random stream
reaches the noise after the exposures), so every level logs exactly the same users, items and
splits; only the reward column differs. Pretraining reads items and splits only, never rewards,
so the study pretrains ONCE and hands that policy to every level; only the ranker and the
post-training change per level. The study checks the premise (same user_idx, item_idx and split
at every level) before sharing and pretrains per level when it does not hold (or when
`share_pretraining` is off); `RobustnessResult.pretraining_runs` says which happened.

The default config (1,000 users, 500 items, ~25k events, 4 noise levels, 8 variants, 60 steps)
is sized to finish in about 15 minutes on one CPU thread.

Tuned protocol (`lrs` non-empty): at every level each method gets the tuning study's search on valid
(tuning.py: the learning rates of `lrs` x its own knob, λ from `lambdas` for exp_rw_sft; valid checks
as `post_train` says), and the level's tables compare the methods at the settings valid chose. Every
grid point's true-reward gain, reward-hacking gap and KL stay in `RobustnessResult.grids`: how they
move with the step size tells a method that exploits the ranker from one whose large steps are unstable.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from recmodels.data.interactions import Interactions, build_interactions
from recmodels.data.rewards import RewardSpec
from recmodels.data.simulator import SimulatorConfig
from recmodels.data.sources import load_raw_logs
from recmodels.evaluation.metrics import hit_rate, paired_bootstrap_diff
from recmodels.data.oracle import Oracle
from recmodels.evaluation.report import ALPHA, knob_value, method_of
from recmodels.post_training.loop import PostTrainConfig
from recmodels.post_training.registry import NLL_ANCHORED, get_method, methods_of_family
from recmodels.training.ranker_training import RankerTrainConfig
from recmodels.studies.comparison import (BASELINE, Callback, ComparisonConfig, ComparisonResult,
                                          method_variants, pretrain_for_comparison, run_comparison)
from recmodels.studies.tuning import KNOB_GRID, TuningConfig, choose_settings

STUDY_SIMULATOR = {"n_users": 1000, "n_items": 500, "events_per_user": (10, 40)}  # ~25k events
DEFAULT_NOISE_LEVELS = (0.1, 0.3, 0.6, 1.0)
DEFAULT_LAMBDAS = (0.3, 1.0, 3.0)
STUDY_REWARD = RewardSpec()  # the simulator's own scale: reward = (rating - 3) / 2 in [-1, 1]
DEFAULT_PRETRAIN = {"epochs": 20}
DEFAULT_STEPS, DEFAULT_EVAL_EVERY = 60, 20
SET_BY_STUDY = ("noise", "noise_kind")
TRUE_METRIC = "true_top10"
DIFF_METRICS = ("true_top10", "ndcg@10", "hr@10", "hacking_gap_top10")


def claim_methods() -> tuple[str, ...]:
    """The methods the study's claims are about, besides exp_rw_sft (swept over `lambdas`): its rivals (the "rlhf"
    family: ppo, dpo, grpo) and the "nll_plus_rl" family (adagrpo and nll_grpo, its NLL-anchored baseline)."""
    return methods_of_family("rlhf", "nll_plus_rl")


DEFAULT_METHODS = claim_methods()


@dataclass
class RobustnessConfig:
    """The noise grid, the variants and the budgets of the robustness study.

    simulator: SimulatorConfig fields of the world (its `seed` defaults to `seed`); `noise` and
    `noise_kind` are set by the study. pretrain / ranker / post_train: as in ComparisonConfig.
    """

    simulator: dict[str, Any] = field(default_factory=lambda: dict(STUDY_SIMULATOR))
    noise_levels: tuple[float, ...] = DEFAULT_NOISE_LEVELS
    noise_kind: str = "gaussian"
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    methods: tuple[str, ...] = field(default_factory=claim_methods)
    pretrain: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRETRAIN))
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    post_train: PostTrainConfig = field(
        default_factory=lambda: PostTrainConfig(steps=DEFAULT_STEPS, eval_every=DEFAULT_EVAL_EVERY))
    seed: int = 0
    n_boot: int = 1000
    share_pretraining: bool = True
    lrs: tuple[float, ...] = ()  # non-empty: every method tuned per level over these learning rates x its knob
    name: str = "simulator-robustness"  # data set names: "<name>" (shared pretraining), "<name>-noise-<level>"

    def __post_init__(self) -> None:
        self.noise_levels = tuple(float(x) for x in self.noise_levels)
        self.lambdas = tuple(float(x) for x in self.lambdas)
        self.methods = tuple(self.methods)
        self.lrs = tuple(float(x) for x in self.lrs)
        if not self.noise_levels:
            raise ValueError("RobustnessConfig.noise_levels must hold at least one noise level")
        bad = [x for x in self.noise_levels if not x >= 0]
        if bad:
            raise ValueError(f"RobustnessConfig.noise_levels must be >= 0, got {bad}")
        if len(set(self.noise_levels)) != len(self.noise_levels):
            raise ValueError(f"RobustnessConfig.noise_levels has repeated levels: {list(self.noise_levels)}")
        bad = [x for x in self.lambdas if not x > 0]
        if bad:
            raise ValueError(f"RobustnessConfig.lambdas must be > 0, got {bad}")
        fixed = sorted(set(self.simulator) & set(SET_BY_STUDY))
        if fixed:
            raise ValueError(f"RobustnessConfig.simulator must not set {fixed}: use noise_levels / noise_kind")
        self.simulator_config(self.noise_levels[0])  # unknown settings or bad values fail here, not mid-study
        self.comparison()

    def simulator_config(self, noise: float) -> SimulatorConfig:
        known = {f.name for f in dataclasses.fields(SimulatorConfig)}
        unknown = sorted(set(self.simulator) - known)
        if unknown:
            raise ValueError(f"RobustnessConfig.simulator: unknown settings {unknown}; known: {sorted(known)}")
        settings = {"seed": self.seed, **self.simulator, "noise": noise, "noise_kind": self.noise_kind}
        return SimulatorConfig(**settings)

    def tuning(self) -> TuningConfig | None:
        """The per-level search of the tuned protocol (None: every variant at the fixed budget)."""
        if not self.lrs:
            return None
        methods = tuple(dict.fromkeys((*(("exp_rw_sft",) if self.lambdas else ()), *self.methods)))
        grid = {**KNOB_GRID, **({"exp_rw_sft": ("lam", self.lambdas)} if self.lambdas else {})}
        return TuningConfig(methods=methods, lrs=self.lrs, knob_grid=grid, seed=self.seed, n_boot=self.n_boot)

    def comparison(self) -> ComparisonConfig:
        if not self.methods and not self.lambdas:
            raise ValueError("RobustnessConfig: no variant to compare (methods and lambdas are both empty)")
        tuning = self.tuning()
        variants = tuning.variants() if tuning else method_variants(self.methods, self.lambdas)
        return ComparisonConfig(pretrain=dict(self.pretrain), ranker=self.ranker, post_train=self.post_train,
                                variants=variants, seed=self.seed, n_boot=self.n_boot)

    def dataset_name(self, noise: float | None = None) -> str:
        return self.name if noise is None else f"{self.name}-noise-{noise:g}"


@dataclass
class SimulatedLevel:
    noise: float
    interactions: Interactions
    oracle: Oracle


@dataclass
class RobustnessResult:
    config: RobustnessConfig
    table: pd.DataFrame  # one row per (noise, variant): see tidy_table
    head_to_head: pd.DataFrame  # paired differences between methods per noise level: see head_to_head_table
    reports: dict[float, dict]  # noise -> the comparison's report
    comparisons: dict[float, ComparisonResult]
    pretraining_runs: int  # 1 when the levels shared one pretrained policy
    skipped: dict[float, dict[str, str]] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    grids: pd.DataFrame | None = None  # tuned protocol: every grid point of every level (tuning.choose_settings)


def simulate_level(config: RobustnessConfig, noise: float) -> SimulatedLevel:
    """The interactions (reward = (rating - 3) / 2, the simulator's own scale) and the oracle at one noise level."""
    settings = dataclasses.asdict(config.simulator_config(noise))
    raw = load_raw_logs("simulator", cache_dir=None, simulator=settings)  # the simulator reads no cache
    return SimulatedLevel(noise, build_interactions(raw, STUDY_REWARD), Oracle.from_dict(raw.oracle))


def same_logged_items(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two interactions tables log the same users, items and splits in the same order."""
    cols = ["user_idx", "item_idx", "split"]
    return len(a) == len(b) and all(np.array_equal(a[c].to_numpy(), b[c].to_numpy()) for c in cols)


def _tagged(callback: Callback | None, **tags: Any) -> Callback | None:
    if callback is None:
        return None
    return lambda event: callback({**event, "study": "robustness", **tags})


def run_robustness_study(config: RobustnessConfig | None = None,
                         callback: Callable[[dict], None] | None = None) -> RobustnessResult:
    """Simulate every noise level, pretrain once when the levels log the same items, compare per level.

    Events of every model go to `callback` (see comparison.py), tagged with `study` and `noise`
    (None for a pretrained policy shared by all levels, which carries `noise_levels` instead).
    """
    from recmodels.studies.findings import robustness_findings

    config = config or RobustnessConfig()
    comparison = config.comparison()
    levels = [simulate_level(config, noise) for noise in config.noise_levels]
    first = levels[0].interactions
    shared = config.share_pretraining and all(same_logged_items(first.table, lv.interactions.table)
                                              for lv in levels[1:])
    pretrained = None
    if shared:
        pretrained = pretrain_for_comparison(
            first.table, first.n_items, comparison,
            _tagged(callback, noise=None, noise_levels=list(config.noise_levels)), dataset=config.dataset_name())
    comparisons, grids = {}, []
    for lv in levels:
        inter = lv.interactions
        result = run_comparison(
            inter.table, inter.n_items, inter.catalog, lv.oracle, comparison, _tagged(callback, noise=lv.noise),
            dataset=config.dataset_name(lv.noise), pretrained=pretrained, reward_spec=STUDY_REWARD)
        if config.lrs:  # the level's methods at the settings valid chose, named by method
            tuned = choose_settings(result, comparison.variants, n_boot=config.n_boot, seed=config.seed)
            grids.append(tuned.grid.assign(noise=lv.noise))
            result = dataclasses.replace(result, report=tuned.report, evaluations=tuned.evaluations)
        comparisons[lv.noise] = result
    table = tidy_table({noise: c.report for noise, c in comparisons.items()})
    h2h = head_to_head_table(comparisons, config.n_boot, config.seed)
    return RobustnessResult(
        config=config, table=table, head_to_head=h2h, reports={n: c.report for n, c in comparisons.items()},
        comparisons=comparisons, pretraining_runs=1 if shared else len(levels),
        skipped={n: c.skipped for n, c in comparisons.items() if c.skipped},
        findings=robustness_findings(table, h2h), grids=pd.concat(grids, ignore_index=True) if grids else None)


def tidy_table(reports: Mapping[float, dict]) -> pd.DataFrame:
    """One row per (noise, variant) from each level's report.

    Columns: noise, variant, method, lambda (exp_rw_sft only), selected_lambda (the exp_rw_sft
    variant the report selects on valid NDCG@10), true_top10 and pretrained_true_top10 (means), for
    each of true_top10, ndcg@10, hr@10, hacking_gap_top10 the paired difference vs the pretrained
    policy `<metric>_diff` with its 95% interval `<metric>_diff_low` / `_high`, best_step and
    kl_to_reference (at the selected step).
    """
    rows = []
    for noise, report in reports.items():
        pols, base = report["policies"], report["baseline"]
        if TRUE_METRIC not in pols[base]["metrics"]:
            raise ValueError(f"report at noise {noise}: no {TRUE_METRIC!r} metric; the robustness study needs "
                             "the simulator's oracle in the evaluation")
        selected = (report.get("exp_rw_sft_best") or {}).get("policy")
        for name, p in pols.items():
            if name == base:
                continue
            training = p.get("training") or {}
            at_best = training.get("at_best_step") or {}
            lam = knob_value(name, "exp_rw_sft", training.get("params") or {}, "lam",
                             default=get_method("exp_rw_sft").default("lam")) \
                if method_of(name, p["method"]) == "exp_rw_sft" else np.nan
            row = {"noise": float(noise), "variant": name, "method": p["method"], "lambda": lam,
                   "selected_lambda": name == selected, TRUE_METRIC: p["metrics"][TRUE_METRIC]["mean"],
                   f"pretrained_{TRUE_METRIC}": pols[base]["metrics"][TRUE_METRIC]["mean"]}
            for metric in DIFF_METRICS:
                iv = p["diff_vs_baseline"][metric]
                row.update({f"{metric}_diff": iv["mean"], f"{metric}_diff_low": iv["low"],
                            f"{metric}_diff_high": iv["high"]})
            row.update(best_step=training.get("best_step"), kl_to_reference=at_best.get("kl_to_reference"))
            rows.append(row)
    return pd.DataFrame(rows)


H2H_COLUMNS = ["noise", "a", "b", "metric", "diff", "diff_low", "diff_high", "b_mean", "relative",
               "relative_low", "relative_high"]


def head_to_head_table(comparisons: Mapping[float, ComparisonResult], n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap differences a - b over the same test users, per noise level.

    - the exp_rw_sft variant selected on valid vs each variant of its rivals (the "rlhf" family: ppo / dpo /
      grpo), on true_top10;
    - each adagrpo variant vs each NLL-anchored baseline (the other variants of the "nll" and "nll_plus_rl"
      families: sft, nll_grpo), on hr@10, with the difference relative to b's mean HR@10 (`relative`,
      `relative_low`, `relative_high`).
    """
    rivals, nll_anchored = methods_of_family("rlhf"), methods_of_family(*NLL_ANCHORED)
    rows = []
    for noise, comp in comparisons.items():
        evals = {e.name: e for e in comp.evaluations}
        methods = {e.name: method_of(e.name, e.method) for e in comp.evaluations if e.name != BASELINE}
        selected = (comp.report.get("exp_rw_sft_best") or {}).get("policy")
        pairs = [(selected, b, TRUE_METRIC) for b, f in methods.items() if selected and f in rivals]
        pairs += [(a, b, "hr@10") for a, fa in methods.items() if fa == "adagrpo"
                  for b, fb in methods.items() if fb in nll_anchored and fb != fa]
        for a, b, metric in pairs:
            va, vb = (_per_user(evals[n], metric) for n in (a, b))
            mean, low, high = paired_bootstrap_diff(va, vb, n_boot, ALPHA, seed)
            b_mean = float(vb.mean())
            scale = abs(b_mean) if metric == "hr@10" and b_mean != 0 else np.nan
            rows.append({"noise": float(noise), "a": a, "b": b, "metric": metric, "diff": mean, "diff_low": low,
                         "diff_high": high, "b_mean": b_mean, "relative": mean / scale,
                         "relative_low": low / scale, "relative_high": high / scale})
    return pd.DataFrame(rows, columns=H2H_COLUMNS)


def _per_user(evaluation, metric: str) -> np.ndarray:
    if metric == "hr@10":
        return hit_rate(evaluation.ranks, 10).astype(np.float64)
    return np.asarray(evaluation.per_user[metric], dtype=np.float64)
