"""What each asset hands downstream: one frozen record per asset output (the IO manager pickles them).

Paths are strings. A reader says `record.field`; a field an asset does not write is an error, not a
silent default. A post-trained variant whose method cannot run on the logs returns a record with
`skipped` set (the reason) and no model: test it with `record.is_skipped`.
"""
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True, kw_only=True)
class RawLogsRecord:
    """`raw_logs`: the logs in the raw-log contract, as written under the run's folder."""

    dataset: str  # the data set's name (its folder and MLflow experiment)
    logs: str  # parquet of the raw logs
    catalog: Optional[str]  # parquet of the raw item catalog; None when the source has none
    digest: str  # content digest of the logs
    oracle: Optional[str]  # the simulator's ground truth (.npz), for evaluation only; None for logged data


@dataclass(frozen=True, kw_only=True)
class InteractionsRecord:
    """`interactions`: the reward-labeled, split interactions table and the item catalog."""

    dataset: str  # the data set's name
    table: str  # parquet of the interactions (reward, split, user_idx, item_idx, ...)
    catalog: str  # parquet of the item catalog (item_idx <-> item_id)
    n_users: int  # users in the table
    n_items: int  # items in the vocabulary
    digest: str  # content digest of the table (MLflow runs' data_digest)
    oracle: Optional[str]  # the simulator's ground truth (.npz) from raw_logs; None for logged data
    reward_spec: dict[str, Any]  # the RewardSpec fields the rewards were labeled with
    reward_hist: dict[str, list[float]]  # reward histogram {bins, weights}: the drift reference once accepted


@dataclass(frozen=True, kw_only=True)
class ItemTokensRecord:
    """`item_tokens`: the semantic IDs of the catalog and their statistics."""

    dataset: str  # the data set's name
    path: str  # the SemanticIds file (.npz)
    n_items: int  # items with a tuple
    level_sizes: list[int]  # codes per level, disambiguation level last
    tuple_length: int  # codes per item
    n_collisions: int  # items whose prefix another item shares (resolved by the disambiguation code)
    max_disambiguation: int  # the largest disambiguation code
    codebook_usage: list[float]  # share of each level's codes in use
    build_seconds: float  # time to build the vectors and the codes


@dataclass(frozen=True, kw_only=True)
class RegisteredModelRecord:
    """What every trained model asset writes: its checkpoint, the MLflow run and the registry version."""

    dataset: str  # the data set's name
    checkpoint: str  # the model's checkpoint ({state_dict, config})
    mlflow_run_id: str  # the MLflow run that trained it
    registered_model: str  # its registered model's name
    model_version: str  # its version in that model


@dataclass(frozen=True, kw_only=True)
class PretrainedPolicyRecord(RegisteredModelRecord):
    """`pretrained_policy`: the registered next-item policy and how its training went."""

    tokenization: str  # "atomic" or "semantic" (recmodels.tokenization.items.TOKENIZATIONS)
    semantic_ids: Optional[str] = None  # the semantic IDs file it reads; None for an atomic policy
    best_epoch: int  # the early-stopping epoch
    best_valid_ndcg10: float  # valid NDCG@10 at that epoch
    epochs: int  # epochs run
    sequences_per_s: float  # mean training throughput

    def item_codes_source(self) -> dict[str, Optional[str]]:
        """The tokenization and its item-codes file, as `recmodels.tokenization.items.load_item_codes` reads them."""
        return {"tokenization": self.tokenization, "semantic_ids": self.semantic_ids}


@dataclass(frozen=True, kw_only=True)
class RankerRewardModelRecord(RegisteredModelRecord):
    """`ranker_reward_model`: the registered reward regressor and its valid RMSE against naive baselines."""

    valid_rmse: float  # the ranker's valid RMSE
    global_mean_rmse: float  # valid RMSE of the global-mean train reward
    item_mean_rmse: float  # valid RMSE of the item-mean train reward
    user_mean_rmse: float  # valid RMSE of the user-mean train reward

    def rmses(self) -> dict[str, float]:
        """Every valid RMSE, the ranker's first (the report's `ranker` section)."""
        return {"valid_rmse": self.valid_rmse, "global_mean_rmse": self.global_mean_rmse,
                "item_mean_rmse": self.item_mean_rmse, "user_mean_rmse": self.user_mean_rmse}


@dataclass(frozen=True, kw_only=True)
class PostTrainedPolicyRecord:
    """`post_trained_<variant>`: the registered servable policy of one variant, or why its method was skipped.

    The model fields are None exactly when `skipped` holds a reason."""

    dataset: str  # the data set's name
    variant: str  # the variants table's row (e.g. exp_rw_sft_lambda_0_3)
    method: str  # the post-training method of the registry
    tokenization: str  # the pretrained policy's tokenization
    semantic_ids: Optional[str] = None  # the semantic IDs file it reads; None for an atomic policy
    skipped: Optional[str] = None  # why the method could not run on these logs ("skipped: ..."); None if trained
    checkpoint: Optional[str] = None  # the policy checkpoint
    mlflow_run_id: Optional[str] = None  # the MLflow run that trained it
    registered_model: Optional[str] = None  # its registered model's name
    model_version: Optional[str] = None  # its version in that model (status=challenger until judged)
    model_uri: Optional[str] = None  # the logged servable pyfunc model (models:/m-...)
    params: Optional[dict[str, Any]] = None  # the method's knobs as run
    best_step: Optional[int] = None  # the optimizer step whose weights were kept (best valid NDCG@10)
    steps: Optional[int] = None  # optimizer steps run
    steps_per_s: Optional[float] = None  # optimizer steps per second
    best_valid_ndcg10: Optional[float] = None  # valid NDCG@10 at best_step
    history: Optional[list[dict[str, Any]]] = None  # one row per evaluation (step, valid metrics, KL, ...)

    @property
    def is_skipped(self) -> bool:
        return self.skipped is not None

    def item_codes_source(self) -> dict[str, Optional[str]]:
        """The tokenization and its item-codes file, as `recmodels.tokenization.items.load_item_codes` reads them."""
        return {"tokenization": self.tokenization, "semantic_ids": self.semantic_ids}


@dataclass(frozen=True, kw_only=True)
class EvaluationReportRecord:
    """`evaluation_report`: the report's files and each policy's hallucination rate."""

    dataset: str  # the data set's name
    tokenization: str  # the pretrained policy's tokenization
    hallucination_rate: dict[str, float]  # {policy: unconstrained top-10 hallucination rate on test}
    json: str  # report.json: every number of the report
    md: str  # report.md
    png: str  # NDCG@10 and HR@10 per policy
    lambda_png: str  # exp_rw_sft: gain vs distance per λ
    curves_png: str  # valid NDCG@10 and KL per step
    frontier_png: str  # HR@10 vs hallucination rate


@dataclass(frozen=True, kw_only=True)
class ChampionRecord:
    """`champion`: the promotion decision of this run's best post-trained policy."""

    dataset: str  # the data set's name
    registered_model: str  # the post-trained policy's registered model
    decision: str  # "promoted" or "kept"
    champion_version: Optional[str]  # the version under the alias `champion` after the decision
    challenger_version: str  # this run's best version on valid
    challenger_variant: str  # its variant
    previous_champion: Optional[str]  # the version under `champion` before; None on the first promotion
    reasons: list[str]  # one line per failed gate (empty when promoted)
    evidence: dict[str, Any]  # the numbers behind the gates
    report: str  # the evaluation report's report.json


@dataclass(frozen=True, kw_only=True)
class RobustnessStudyRecord:
    """`robustness_study`: where the study wrote its report, and its findings."""

    study: str  # "robustness"
    dir: str  # the study's folder
    files: dict[str, str]  # {name: path}: md, tables (csv/json), figures (png), level_<noise>_md per noise level
    pretraining_runs: int  # pretrained policies trained (shared across noise levels when allowed)
    findings: list[str]  # one sentence per finding


@dataclass(frozen=True, kw_only=True)
class TuningStudyRecord:
    """`tuning_study`: where the study wrote its tables, and the setting valid chose for each method."""

    study: str  # "tuning"
    dataset: str
    dir: str  # the study's folder
    files: dict[str, str]  # {name: path}: md, grid_csv, chosen_csv, json
    chosen: dict[str, dict]  # method -> {"variant", "lr", <its searched knob>}


@dataclass(frozen=True, kw_only=True)
class CrossDatasetComparisonRecord:
    """`cross_dataset_summary`: where the summary was written, and the data sets it covers."""

    study: str  # "cross_dataset"
    dir: str  # the study's folder
    files: dict[str, str]  # {name: path} of the summary: md, csv, json (and true_csv on simulated data)
    datasets: list[str]  # the data sets compared, in order
