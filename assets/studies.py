"""The studies (group "studies"): the robustness study, the tuning study and the cross-data-set summary.

The tuning study reads a built-in data set's logs through the source functions that `raw_logs` and
`interactions` use, runs `recmodels.studies.tuning` (every method searched over the same learning rates
and its own knob, chosen on valid) and logs every model it trains as its own MLflow run in the data
set's experiment (tags `study`, `model`, `role`, `method`).

The robustness study does not read the chain's assets: it simulates logs through the source functions
that `raw_logs` and `interactions` use (recmodels.data.*), runs `recmodels.studies.robustness`, logs
every model it trains as its own MLflow run in the simulator's experiment (tags `study`, `model`,
`role`, `noise`). The cross-data-set summary trains nothing: it reads the latest `evaluation_report`
of each data set partition of the chain. Both write their tables and figures under
`<home>/studies/<study>/<dagster run id>/`. Docs: docs/studies.md.
"""
import hashlib
import json
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

import dagster as dg
import pandas as pd

from assets.metadata import image, markdown_table
from assets.model_runs import library_config
from assets.partitions import DATASET_PARTITIONS
from assets.records import CrossDatasetComparisonRecord, RobustnessStudyRecord, TuningStudyRecord
from assets.resources import MlflowTracking, RecalignHome
from recmodels.post_training.loop import PostTrainConfig
from recmodels.storage.checkpoints import save_checkpoint
from recmodels.studies.cross_dataset import summary_table, write_summary
from recmodels.studies.robustness import (DEFAULT_EVAL_EVERY, DEFAULT_LAMBDAS, DEFAULT_METHODS, DEFAULT_NOISE_LEVELS,
                                          DEFAULT_PRETRAIN, DEFAULT_STEPS, STUDY_SIMULATOR, RobustnessConfig,
                                          run_robustness_study)
from recmodels.studies.robustness_report import gain_table, write_robustness
from recmodels.studies.tuning import DEFAULT_LRS, KNOB_GRID, TuningConfig, chosen_table, run_tuning, write_tuning
from recmodels.data.interactions import build_interactions
from recmodels.data.oracle import Oracle
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import load_raw_logs
from recmodels.training.ranker_training import RankerTrainConfig

CROSS_DATASET_EXPERIMENT = "cross-dataset"  # the summary run's data set name (its MLflow experiment)


def study_dir(home: RecalignHome, study: str, run_id: str) -> Path:
    path = Path(home.root, "studies", study, run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class StudyRuns:
    """The callback of a study: one MLflow run per model, opened on `model_started`, closed when it ends.

    Used as a context manager, so that a run still open when the study fails is closed as FAILED.
    """

    def __init__(self, context: dg.AssetExecutionContext, mlflow: MlflowTracking, checkpoint_dir: Optional[Path]):
        self.context, self.mlflow, self.checkpoint_dir = context, mlflow, checkpoint_dir
        self._stack: Optional[ExitStack] = None
        self.runs = 0

    def __enter__(self) -> "StudyRuns":
        return self

    def __exit__(self, *exc_info) -> None:
        self._close(*exc_info)

    def _close(self, *exc_info) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*(exc_info or (None, None, None)))

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "model_started":
            self._start(event)
        elif kind == "history":
            row = event["row"]
            self.mlflow.log_metrics(row, step=int(row.get("step", row.get("epoch", 0))))
        elif kind == "model_finished":
            self.mlflow.log_metrics(_finite_numbers(event["summary"]), step=0)
            if self.checkpoint_dir is not None:
                self._checkpoint(event)
            self.context.log.info(f"{event['dataset']}: {event['model']} done: {_finite_numbers(event['summary'])}")
            self._close()
        elif kind == "model_skipped":
            self.mlflow.set_tag("skipped", event["reason"])
            self.context.log.info(f"{event['dataset']}: {event['model']} {event['reason']}")
            self._close()

    def _start(self, event: dict) -> None:
        self._close()
        self._stack = ExitStack()
        params = {**event["params"], "study": event.get("study"), "model": event["model"]}
        self._stack.enter_context(self.mlflow.start_run(self.context, event["dataset"], event["data_digest"], params))
        self.runs += 1
        self.mlflow.set_tag("mlflow.runName", f"{event['model']}-{self.context.run_id[:8]}")
        tags = {"study": event.get("study"), "model": event["model"], "role": event["role"],
                "method": event.get("method"), "noise": event.get("noise")}
        if event.get("noise_levels") is not None:
            tags["shared_by_noise_levels"] = ",".join(f"{x:g}" for x in event["noise_levels"])
        for key, value in tags.items():
            if value is not None:
                self.mlflow.set_tag(key, f"{value:g}" if isinstance(value, float) else str(value))
        self.context.log.info(f"{event['dataset']}: training {event['model']}")

    def _checkpoint(self, event: dict) -> None:
        path = self.checkpoint_dir / event["dataset"] / f"{event['model']}.pt"
        save_checkpoint(path, event["module"], event["module_config"])
        self.mlflow.log_artifact(path, artifact_path="checkpoint")


def log_study_run(context: dg.AssetExecutionContext, mlflow: MlflowTracking, dataset: str, digests: list[str],
                  params: dict, files: dict, metrics: dict[str, float], study: str, model: str) -> None:
    """One MLflow run holding a study's (or one data set's) report files and headline metrics."""
    digest = hashlib.sha256(",".join(digests).encode()).hexdigest() if len(digests) > 1 else digests[0]
    with mlflow.start_run(context, dataset, digest, params):
        mlflow.set_tag("mlflow.runName", f"{model}-{context.run_id[:8]}")
        mlflow.set_tag("study", study)
        mlflow.set_tag("model", model)
        for path in files.values():
            mlflow.log_artifact(path, artifact_path="report")
        if metrics:
            mlflow.log_metrics(_finite_numbers(metrics), step=0)


class RobustnessStudyConfig(dg.Config):
    """The noise grid, the variants and the budgets of the robustness study (recmodels.studies.robustness).

    simulator: SimulatorConfig settings merged over the study's world (1,000 users, 500 items);
    pretrain: more PretrainConfig / PolicyConfig fields (d_model, max_len, patience, ...).
    """

    noise_levels: list[float] = list(DEFAULT_NOISE_LEVELS)
    noise_kind: str = "gaussian"
    lambdas: list[float] = list(DEFAULT_LAMBDAS)
    methods: list[str] = list(DEFAULT_METHODS)
    simulator: dict[str, Any] = {}
    pretrain_epochs: int = DEFAULT_PRETRAIN["epochs"]
    pretrain: dict[str, Any] = {}
    ranker_epochs: Optional[int] = None
    steps: int = DEFAULT_STEPS
    batch_size: Optional[int] = None
    eval_every: int = DEFAULT_EVAL_EVERY
    lr: Optional[float] = None
    # the tuned protocol: every method searched per level over these learning rates x its own knob
    lrs: list[float] = []
    early_eval_every: Optional[int] = None  # valid checks every this many steps ...
    early_eval_until: int = 0  # ... up to this step, then every `eval_every`
    seed: int = 0
    n_boot: int = 1000
    share_pretraining: bool = True
    save_checkpoints: bool = True

    def to_library(self) -> RobustnessConfig:
        if self.lrs and self.lr is not None:
            raise dg.Failure("robustness_study config: give either 'lr' (one learning rate for every variant) or "
                             "'lrs' (the tuned protocol's search), not both")
        try:
            return RobustnessConfig(
                simulator={**STUDY_SIMULATOR, **self.simulator}, noise_levels=tuple(self.noise_levels),
                noise_kind=self.noise_kind, lambdas=tuple(self.lambdas), methods=tuple(self.methods),
                pretrain={**self.pretrain, "epochs": self.pretrain_epochs},
                ranker=library_config(RankerTrainConfig, {"epochs": self.ranker_epochs}),
                post_train=library_config(PostTrainConfig, {
                    "steps": self.steps, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "lr": self.lr, "early_eval_every": self.early_eval_every,
                    "early_eval_until": self.early_eval_until}),
                seed=self.seed, n_boot=self.n_boot, share_pretraining=self.share_pretraining, lrs=tuple(self.lrs))
        except ValueError as exc:
            raise dg.Failure(f"robustness_study config: {exc}") from None


@dg.asset(group_name="studies", kinds={"pytorch", "mlflow"})
def robustness_study(context: dg.AssetExecutionContext, config: RobustnessStudyConfig, home: RecalignHome,
                     mlflow: MlflowTracking) -> RobustnessStudyRecord:
    """True-reward gain of every method over the pretrained policy as the observed-reward noise grows (simulator)."""
    study = config.to_library()
    out = study_dir(home, "robustness", context.run_id)
    with StudyRuns(context, mlflow, out / "checkpoints" if config.save_checkpoints else None) as runs:
        result = run_robustness_study(study, runs)
    files = write_robustness(result, out)
    headline = {f"true_top10_diff/{r.variant}/noise_{r.noise:g}": r.true_top10_diff for r in result.table.itertuples()}
    log_study_run(context, mlflow, study.dataset_name(), [c.data_digest for c in result.comparisons.values()],
                  config.model_dump(), files, headline, study="robustness", model="robustness_study")
    context.add_output_metadata({
        "findings": dg.MetadataValue.md("\n".join(f"- {s}" for s in result.findings)),
        "true_top10_gain": dg.MetadataValue.md(gain_table(result.table, "true_top10").to_markdown(index=False)),
        "table": markdown_table(result.table, max_rows=200),
        "improvement_vs_noise": image(files["noise_png"], "true top-10 gain vs noise per variant"),
        "lambda_tradeoff": image(files["lambda_png"], "exp_rw_sft: true top-10 gain vs λ per noise level"),
        "pretraining_runs": result.pretraining_runs, "mlflow_model_runs": runs.runs,
        **({"grid": markdown_table(result.grids, max_rows=400)} if result.grids is not None else {}),
        "report_md": dg.MetadataValue.path(str(files["md"]))})
    return RobustnessStudyRecord(study="robustness", dir=str(out), files={k: str(v) for k, v in files.items()},
                                 pretraining_runs=result.pretraining_runs, findings=result.findings)


class TuningStudyConfig(dg.Config):
    """The data set, the grid and the budgets of the tuning study (recmodels.studies.tuning).

    knob_values: per method, other values of the knob it is searched over (`KNOB_GRID`: λ, β or α);
    pretrain: PretrainConfig / PolicyConfig fields (epochs, d_model, ...); simulator: SimulatorConfig settings
    for `source: simulator`."""

    source: str = "movielens-100k"  # a built-in data set: movielens-100k, movielens-1m or simulator
    simulator: dict[str, Any] = {}
    methods: list[str] = list(KNOB_GRID)
    lrs: list[float] = list(DEFAULT_LRS)
    knob_values: dict[str, list[float]] = {}
    pretrain: dict[str, Any] = {}
    ranker_epochs: Optional[int] = None
    steps: int = 200
    batch_size: Optional[int] = None
    eval_every: int = 25
    early_eval_every: int = 5  # valid checks every 5 steps ...
    early_eval_until: int = 50  # ... for the first 50
    seed: int = 0
    n_boot: int = 1000

    def to_library(self) -> TuningConfig:
        unknown = sorted(set(self.knob_values) - {m for m, grid in KNOB_GRID.items() if grid is not None})
        if unknown:
            raise dg.Failure(f"tuning_study config 'knob_values': {unknown} are searched over the learning rate only "
                             f"or are no methods; methods with a knob: "
                             f"{[m for m, grid in KNOB_GRID.items() if grid is not None]}")
        grid = {m: (g[0], tuple(self.knob_values.get(m, g[1]))) if g is not None else None
                for m, g in KNOB_GRID.items()}
        try:
            return TuningConfig(
                methods=tuple(self.methods), lrs=tuple(self.lrs), knob_grid=grid, pretrain=dict(self.pretrain),
                ranker=library_config(RankerTrainConfig, {"epochs": self.ranker_epochs}),
                post_train=library_config(PostTrainConfig, {
                    "steps": self.steps, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "early_eval_every": self.early_eval_every, "early_eval_until": self.early_eval_until}),
                seed=self.seed, n_boot=self.n_boot)
        except ValueError as exc:
            raise dg.Failure(f"tuning_study config: {exc}") from None


@dg.asset(group_name="studies", kinds={"pytorch", "mlflow"})
def tuning_study(context: dg.AssetExecutionContext, config: TuningStudyConfig, home: RecalignHome,
                 mlflow: MlflowTracking) -> TuningStudyRecord:
    """Every method with the same small search on valid (learning rate x its own knob), compared at the settings
    valid chose: the fair comparison of methods (docs/studies.md)."""
    if config.source not in ("movielens-100k", "movielens-1m", "simulator"):
        raise dg.Failure(f"tuning_study config 'source' must be movielens-100k, movielens-1m or simulator, "
                         f"got {config.source!r}")
    study = config.to_library()
    raw = load_raw_logs(config.source, cache_dir=home.cache_dir,
                        simulator=config.simulator if config.source == "simulator" else None)
    inter = build_interactions(raw, RewardSpec())
    with StudyRuns(context, mlflow, None) as runs:
        result = run_tuning(inter.table, inter.n_items, inter.catalog,
                            Oracle.from_dict(raw.oracle) if raw.oracle else None, study,
                            lambda event: runs({**event, "study": "tuning"}), dataset=raw.name)
    files = write_tuning(result, study_dir(home, "tuning", context.run_id))
    log_study_run(context, mlflow, raw.name, [result.comparison.data_digest], config.model_dump(), files,
                  {f"test_ndcg@10/{m}": p["metrics"]["ndcg@10"]["mean"] for m, p in result.report["policies"].items()},
                  study="tuning", model="tuning_study")
    context.add_output_metadata({
        "chosen": dg.MetadataValue.md(chosen_table(result).to_markdown(index=False)),
        "grid": markdown_table(result.grid, max_rows=200), "mlflow_model_runs": runs.runs,
        "report_md": dg.MetadataValue.path(str(files["md"]))})
    return TuningStudyRecord(study="tuning", dataset=raw.name, dir=str(Path(files["md"]).parent),
                             files={k: str(v) for k, v in files.items()}, chosen=result.report["chosen"])


class CrossDatasetSummaryConfig(dg.Config):
    """Which data set partitions the summary compares: `partitions` (default: every partition that has an
    evaluation report), each through its latest `evaluation_report` materialization."""

    partitions: list[str] = []


def latest_reports(instance: dg.DagsterInstance, partitions: list[str]) -> list[dict]:
    """The latest `evaluation_report` materialization of each partition that has one: partition, data set,
    run id, time and the path of its report.json."""
    found = []
    for partition in partitions:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("evaluation_report"), asset_partitions=[partition]),
            limit=1).records
        if not records:
            continue
        materialization = records[0].asset_materialization
        metadata = materialization.metadata if materialization is not None else {}
        if "report_json" not in metadata:
            continue  # written before reports named their report.json
        found.append({"partition": partition, "dataset": metadata["dataset"].value,
                      "run_id": records[0].run_id, "materialized_at": records[0].timestamp,
                      "report_json": metadata["report_json"].value})
    return found


@dg.asset(group_name="studies", kinds={"mlflow"}, deps=["evaluation_report"])
def cross_dataset_summary(context: dg.AssetExecutionContext, config: CrossDatasetSummaryConfig, home: RecalignHome,
                          mlflow: MlflowTracking) -> CrossDatasetComparisonRecord:
    """The method comparison on every data set, one table: the latest evaluation report of each data set
    partition of the chain (a backfill of the partitions, or `make compare-datasets`, materializes them).
    Each column names the run whose report it shows, so every number traces back to its models' lineage."""
    partitions = config.partitions or DATASET_PARTITIONS.get_partition_keys()
    unknown = sorted(set(partitions) - set(DATASET_PARTITIONS.get_partition_keys()))
    if unknown:
        raise dg.Failure(f"cross_dataset_summary: {unknown} are not data set partitions; "
                         f"choose from {DATASET_PARTITIONS.get_partition_keys()}")
    sources = latest_reports(context.instance, list(partitions))
    if not sources:
        raise dg.Failure(f"cross_dataset_summary: no evaluation report in partitions {list(partitions)}; "
                         "materialize the full_chain job for them first (make compare-datasets)")
    reports = {s["dataset"]: json.loads(Path(s["report_json"]).read_text()) for s in sources}
    summary = write_summary(reports, study_dir(home, "cross_dataset", context.run_id))
    log_study_run(context, mlflow, CROSS_DATASET_EXPERIMENT, [s["run_id"] for s in sources],
                  {"partitions": [s["partition"] for s in sources]}, summary, {}, study="cross_dataset",
                  model="cross_dataset_summary")
    true_table = summary_table(reports, "true_top10")
    missing = sorted(set(partitions) - {s["partition"] for s in sources})
    context.add_output_metadata({
        "ndcg@10": dg.MetadataValue.md(summary_table(reports).to_markdown(index=False)),
        "ndcg@10_diff_vs_pretrained": dg.MetadataValue.md(
            summary_table(reports, section="diff_vs_baseline").to_markdown(index=False)),
        **({"true_top10": dg.MetadataValue.md(true_table.to_markdown(index=False))}
           if len(true_table.columns) > 1 else {}),
        "reports": markdown_table(pd.DataFrame(sources)[["partition", "dataset", "run_id"]]),
        "partitions_without_report": missing, "summary_md": dg.MetadataValue.path(str(summary["md"]))})
    return CrossDatasetComparisonRecord(study="cross_dataset", dir=str(Path(summary["md"]).parent),
                                        files={k: str(v) for k, v in summary.items()}, datasets=list(reports))


STUDY_ASSETS = [robustness_study, tuning_study, cross_dataset_summary]
