"""One comparison of post-training methods on one data set: pretrain -> ranker -> every variant -> report.

The asset chain's steps (docs/design.md §1) in one call, for the robustness study and the cross-data-set
comparison. It chains the library's own functions (`pretrain_policy`, `train_ranker`, `post_train`,
`evaluate_policies`, `build_report`) and keeps every model in memory; a variant whose method cannot
run on these logs (ips without propensities) is reported as skipped with its reason.

Progress goes to `callback(event)`, one dict per event, each naming the data set and the model:
- `{"event": "model_started", "dataset", "model", "role", "method", "params", "data_digest"}`
- `{"event": "history", "dataset", "model", "row"}`: one training row (per epoch or evaluation step)
- `{"event": "model_finished", "dataset", "model", "summary", "module", "module_config"}`: the trained
  module and its config dataclass, for the caller to checkpoint
- `{"event": "model_skipped", "dataset", "model", "reason"}`
so a caller can log each model as its own MLflow run. Roles: `pretrained_policy`, `ranker`,
`post_trained_policy`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from recmodels.data.rewards import RewardSpec
from recmodels.data.tables import frame_digest
from recmodels.evaluation.evaluate import evaluate_policies, oracle_upper_bound
from recmodels.data.oracle import Oracle
from recmodels.evaluation.report import PolicyEvaluation, build_report
from recmodels.models.policy import PolicyConfig
from recmodels.post_training.loop import PostTrainConfig, PostTrainResult, post_train
from recmodels.post_training.registry import METHODS, MethodNotApplicable, get_method
from recmodels.post_training.variants import Variant, swept_variants
from recmodels.training.pretraining import PretrainConfig, PretrainResult, pretrain_policy
from recmodels.training.ranker_training import RankerResult, RankerTrainConfig, train_ranker

Event = dict[str, Any]
Callback = Callable[[Event], None]
BASELINE = "pretrained"
PRETRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(PretrainConfig)) - {"seed", "max_len"}
POLICY_KEYS = frozenset(f.name for f in dataclasses.fields(PolicyConfig)) - {"vocab_size"}
# what a variant may set of the post-training config besides its knobs (`Variant.train`, e.g. a study's lr)
VARIANT_TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(PostTrainConfig)) - {"method_params", "seed"}


# The comparison's sweep override of the chain's variants table: exp_rw_sft at three λ (its default λ = 1 included,
# as `exp_rw_sft_lambda_1`) and nll_grpo at its default α only.
COMPARISON_SWEEPS: dict[str, tuple[float, ...]] = {"exp_rw_sft": (0.3, 1.0, 3.0), "nll_grpo": (0.3,)}


def method_variants(methods: Sequence[str], lambdas: Sequence[float] = (),
                    nll_grpo_alphas: Sequence[float] = ()) -> tuple[Variant, ...]:
    """exp_rw_sft once per λ (`exp_rw_sft_lambda_<λ>`), nll_grpo once per α, every other method with defaults.

    `methods` may name `exp_rw_sft` / `nll_grpo` too: they then run with their default knob unless
    λs / αs are given. Names and knobs follow the method specs (post_training/variants.py).
    """
    return swept_variants(methods, {"exp_rw_sft": lambdas, "nll_grpo": nll_grpo_alphas})


def default_variants() -> tuple[Variant, ...]:
    """Every registered method, in registry order, exp_rw_sft and nll_grpo at the sweeps of COMPARISON_SWEEPS."""
    return swept_variants(tuple(METHODS), COMPARISON_SWEEPS)


@dataclass
class ComparisonConfig:
    """Budgets and variants of one comparison.

    pretrain: overrides of PretrainConfig and PolicyConfig fields (`epochs`, `batch_size`, `d_model`,
    `max_len`, ...); ranker / post_train: the ranker's and the shared post-training budget (the
    knobs of each method live in its variant, so `post_train.method_params` must stay empty);
    `seed` replaces the seed of all three.
    """

    pretrain: dict[str, Any] = field(default_factory=dict)
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    post_train: PostTrainConfig = field(default_factory=PostTrainConfig)
    variants: Sequence[Variant | tuple] = field(default_factory=default_variants)
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pretrain) - PRETRAIN_KEYS - POLICY_KEYS)
        if unknown:
            raise ValueError(f"ComparisonConfig.pretrain: unknown settings {unknown}; "
                             f"known: {sorted(PRETRAIN_KEYS | POLICY_KEYS)}")
        if self.post_train.method_params:
            raise ValueError("ComparisonConfig.post_train.method_params must be empty: a method's knobs belong to "
                             f"its variant (got {self.post_train.method_params})")
        self.variants = tuple(v if isinstance(v, Variant) else Variant(*v) for v in self.variants)
        names = [v.name for v in self.variants]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"ComparisonConfig.variants: names must be unique, {duplicated} repeat")
        if BASELINE in names:
            raise ValueError(f"ComparisonConfig.variants: {BASELINE!r} is the baseline's name, not a variant's")
        for v in self.variants:
            try:
                get_method(v.method).parse_params(dict(v.method_params))
            except ValueError as exc:
                raise ValueError(f"ComparisonConfig.variants: variant {v.name!r}: {exc}") from None
            unknown = sorted(set(v.train) - VARIANT_TRAIN_KEYS)
            if unknown:
                raise ValueError(f"ComparisonConfig.variants: variant {v.name!r}: unknown post-training settings "
                                 f"{unknown}; known: {sorted(VARIANT_TRAIN_KEYS)}")


@dataclass
class ComparisonResult:
    dataset: str
    report: dict  # build_report's dict, plus "ranker" (valid RMSE and baselines) and, with an oracle,
    # "oracle_best_top10_true"
    evaluations: list[PolicyEvaluation]  # per-user test results, baseline first
    pretrained: PretrainResult
    ranker: RankerResult
    post_trained: dict[str, PostTrainResult]
    skipped: dict[str, str]  # variant -> why its method could not run
    data_digest: str = ""  # frame_digest of the interactions table
    pretrained_reused: bool = False  # the pretrained policy was handed in, not trained here


class _Emitter:
    """Adds the data set and model names to every event sent to the caller's callback."""

    def __init__(self, callback: Callback | None, dataset: str):
        self.callback, self.dataset = callback, dataset

    def __call__(self, event: str, model: str, **fields: Any) -> None:
        if self.callback is not None:
            self.callback({"event": event, "dataset": self.dataset, "model": model, **fields})

    def rows(self, model: str) -> Callable[[dict], None]:
        return lambda row: self("history", model, row=dict(row))


def _pretrain_configs(n_items: int, config: ComparisonConfig) -> tuple[PolicyConfig, PretrainConfig]:
    policy = {k: v for k, v in config.pretrain.items() if k in POLICY_KEYS}
    train = {k: v for k, v in config.pretrain.items() if k in PRETRAIN_KEYS}
    return PolicyConfig(vocab_size=n_items + 1, **policy), PretrainConfig(**train, seed=config.seed)


def pretrain_for_comparison(interactions: pd.DataFrame, n_items: int, config: ComparisonConfig,
                            callback: Callback | None = None, dataset: str = "data",
                            data_digest: str | None = None) -> PretrainResult:
    """The comparison's pretrained policy (next-item NLL, early-stopped on valid), with its events.

    Pretraining reads items and splits only, never rewards: logs that differ only in their
    rewards can share one pretrained policy (see robustness.py).
    """
    emit = _Emitter(callback, dataset)
    policy_cfg, train_cfg = _pretrain_configs(n_items, config)
    emit("model_started", BASELINE, role="pretrained_policy", method=None,
         params={**vars(train_cfg), **vars(policy_cfg)},
         data_digest=data_digest or frame_digest(interactions[["user_idx", "item_idx", "split"]]))
    result = pretrain_policy(interactions, n_items, policy_cfg, train_cfg, callback=emit.rows(BASELINE))
    emit("model_finished", BASELINE, module=result.policy, module_config=result.policy_config,
         summary={"best_epoch": result.best_epoch, "best_valid_ndcg@10": result.best_valid_ndcg10,
                  "epochs": len(result.history)})
    return result


def run_comparison(interactions: pd.DataFrame, n_items: int, catalog: pd.DataFrame | None,
                   oracle: Oracle | Mapping | None = None, config: ComparisonConfig | None = None,
                   callback: Callback | None = None, *, dataset: str = "data",
                   pretrained: PretrainResult | None = None,
                   reward_spec: RewardSpec | None = None) -> ComparisonResult:
    """Pretrain (unless `pretrained` is given), train the ranker, post-train every variant, evaluate on test.

    `interactions` is the interactions table (docs/design.md §2) and `catalog` its item catalog (needed
    with an `oracle`, the simulator's ground truth, to score top-10 lists by true reward); `reward_spec`
    the labeling of its rewards (default `RewardSpec()`), whose lower bound generated non-items get in
    post-training. Every variant starts from the same pretrained weights with the same budget. Returns
    the report of `build_report` with the pretrained policy as the baseline.
    """
    config = config or ComparisonConfig()
    if isinstance(oracle, Mapping):
        oracle = Oracle.from_dict(oracle)
    if oracle is not None and catalog is None:
        raise ValueError(f"run_comparison on {dataset!r}: an oracle needs the item catalog (item_idx -> item_id)")
    if pretrained is not None and pretrained.policy.cfg.vocab_size != n_items + 1:
        raise ValueError(f"run_comparison on {dataset!r}: the given pretrained policy has vocab_size "
                         f"{pretrained.policy.cfg.vocab_size}, these interactions need {n_items + 1}")
    emit = _Emitter(callback, dataset)
    digest = frame_digest(interactions)
    reused = pretrained is not None
    if pretrained is None:
        pretrained = pretrain_for_comparison(interactions, n_items, config, callback, dataset, digest)

    ranker_cfg = dataclasses.replace(config.ranker, seed=config.seed)
    emit("model_started", "ranker", role="ranker", method=None, params=vars(ranker_cfg), data_digest=digest)
    ranker = train_ranker(interactions, n_items, ranker_cfg, callback=emit.rows("ranker"))
    emit("model_finished", "ranker", module=ranker.ranker, module_config=ranker.config,
         summary={"valid_rmse": ranker.valid_rmse, **ranker.baselines})

    trained: dict[str, PostTrainResult] = {}
    skipped: dict[str, str] = {}
    for v in config.variants:
        train_cfg = dataclasses.replace(config.post_train, seed=config.seed, method_params=dict(v.method_params),
                                        **dict(v.train))
        emit("model_started", v.name, role="post_trained_policy", method=v.method,
             params={"variant": v.name, "method": v.method, **vars(train_cfg)}, data_digest=digest)
        try:
            result = post_train(v.method, pretrained.policy, interactions, train_cfg, ranker=ranker.ranker,
                                callback=emit.rows(v.name), reward_spec=reward_spec)
        except MethodNotApplicable as skip:
            skipped[v.name] = str(skip)
            emit("model_skipped", v.name, reason=str(skip))
            continue
        trained[v.name] = result
        emit("model_finished", v.name, module=result.policy, module_config=pretrained.policy_config,
             summary={"best_step": result.best_step, "best_valid_ndcg@10": result.best_valid_ndcg10,
                      "steps": result.steps, "steps_per_s": result.steps_per_s})

    policies = {BASELINE: (pretrained.policy, None), **{n: (r.policy, r.method) for n, r in trained.items()}}
    max_len = pretrained.policy.cfg.max_len
    evaluations = evaluate_policies(policies, interactions, ranker.ranker, max_len, oracle=oracle, catalog=catalog)
    for e in evaluations:
        if e.name in trained:
            r = trained[e.name]
            e.extra = {"params": r.params, "best_step": r.best_step, "history": r.history}
    report = build_report(evaluations, baseline=BASELINE, n_boot=config.n_boot, seed=config.seed, skipped=skipped)
    report["dataset"] = dataset
    report["variants"] = [v.name for v in config.variants]  # the configured order, skipped variants included
    report["ranker"] = {"valid_rmse": ranker.valid_rmse, **ranker.baselines}
    if oracle is not None:
        report["oracle_best_top10_true"] = oracle_upper_bound(oracle, interactions, catalog, max_len)
    return ComparisonResult(dataset=dataset, report=report, evaluations=evaluations, pretrained=pretrained,
                            ranker=ranker, post_trained=trained, skipped=skipped, data_digest=digest,
                            pretrained_reused=reused)
