"""The code location that `dagster dev -w workspace.yaml` and `dg` load: assets, the full_chain job,
the nightly schedule, the new-raw-logs sensor, and the two study jobs (docs/studies.md)."""
from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import dagster as dg  # noqa: E402

from assets import ALL_ASSETS, ALL_CHECKS  # noqa: E402
from assets.studies import STUDY_ASSETS, cross_dataset_comparison, robustness_study  # noqa: E402
from pipelines.resources import build_resources  # noqa: E402
from pipelines.sensors import build_new_raw_logs_sensor  # noqa: E402

STUDIES_GROUP = "studies"

# The whole chain, raw logs to the champion; the studies (their own group) are separate jobs. Steps
# run in one process: each step of the multiprocess executor re-imports torch, mlflow and GX
# (seconds each) and the models train one at a time on the CPU anyway.
full_chain_job = dg.define_asset_job(
    "full_chain", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(STUDIES_GROUP),
    executor_def=dg.in_process_executor,
    description="Materialize every asset from raw logs to the evaluation report and the champion.")

robustness_study_job = dg.define_asset_job(
    "robustness_study_job", selection=dg.AssetSelection.assets(robustness_study), executor_def=dg.in_process_executor,
    description="Sweep the observed-reward noise of the simulator; compare every method's true-reward gain per level.")

cross_dataset_comparison_job = dg.define_asset_job(
    "cross_dataset_comparison_job", selection=dg.AssetSelection.assets(cross_dataset_comparison),
    executor_def=dg.in_process_executor,
    description="Run the same method comparison on MovieLens-100k, MovieLens-1M and the simulator; one summary table.")

nightly_retraining = dg.ScheduleDefinition(
    name="nightly_retraining", job=full_chain_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain and re-evaluate the whole chain at 02:00 UTC every night (turn it on in the UI).")

new_raw_logs = build_new_raw_logs_sensor(full_chain_job)

defs = dg.Definitions(
    assets=[*ALL_ASSETS, *STUDY_ASSETS], asset_checks=ALL_CHECKS,
    jobs=[full_chain_job, robustness_study_job, cross_dataset_comparison_job], schedules=[nightly_retraining],
    sensors=[new_raw_logs],
    resources=build_resources(), executor=dg.in_process_executor)
