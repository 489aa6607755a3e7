"""The code location that `dagster dev -w workspace.yaml` and `dg` load: assets, the full_chain job
(one data set partition per run, assets/partitions.py), the nightly schedule, the new-raw-logs sensor,
and the two study jobs (docs/studies.md)."""
from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import dagster as dg  # noqa: E402
import torch  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

from assets import ALL_ASSETS, ALL_CHECKS  # noqa: E402
from assets.models import ALL_CORES_TAG  # noqa: E402
from assets.orphaned_runs import HOST_TAG, run_worker_pid, this_host  # noqa: E402
from assets.partitions import BUILTIN_DATASETS  # noqa: E402
from assets.studies import STUDY_ASSETS, cross_dataset_summary, robustness_study, tuning_study  # noqa: E402
from pipelines.resources import build_resources  # noqa: E402
from pipelines.run_config import executor_config  # noqa: E402
from pipelines.sensors import build_new_raw_logs_sensor  # noqa: E402
from recmodels.runtime import retain_freed_memory, set_threads, threads_per_process  # noqa: E402

STUDIES_GROUP = "studies"


def max_concurrent(run: dg.DagsterRun) -> int:
    """How many step processes `run` executes at once: its executor config with the job's defaults applied,
    `0`/unset meaning what Dagster's multiprocess executor takes then (its env var, else the CPU count)."""
    import multiprocessing

    execution = dg.validate_run_config(defs.resolve_job_def(run.job_name), run.run_config).get("execution") or {}
    multiprocess = next(iter(execution.values()), {}).get("multiprocess") or {}
    configured = multiprocess.get("max_concurrent")
    default = os.environ.get("DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT")
    return configured or (int(default) if default else multiprocessing.cpu_count())


def step_of_this_process(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The step this step process executes: the step of the "step worker started" event it logged itself."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED):
        event = entry.dagster_event
        if event is not None and event.pid == os.getpid():
            return event.step_key
    return None


class StepProcessRuntime(dg.ConfigurableResource):
    """How a process that runs steps of full_chain uses the CPU: torch's intra-op threads and the C allocator.

    Threads, in a step process of the multiprocess executor: `max(1, cores // max_concurrent)`, so that the
    steps running at once share the cores instead of each starting a thread per core. `cores` is torch's own
    default in the process (the cores it may use, or `OMP_NUM_THREADS`): with one step at a time a step process
    trains with the threads, hence the numbers, of an in-process run. A step whose op carries `ALL_CORES_TAG`
    keeps every core (torch's default): the pretrained policy, which every later step waits for and beside which
    only the short ranker runs, so that the other cores do not idle through the chain's longest step; it then
    trains the weights of an in-process run. Runs whose steps all run in the run's own process (the in-process
    executor, `dg.materialize`, `execute_in_process`) keep torch's default: the process that logged the
    executor's "Executing steps ..." event is this one.

    Memory, in every process that runs a step: freed memory is kept for reuse (`retain_freed_memory`), which
    spares the training steps the kernel's page faults and leaves their numbers as they were."""

    _retains_freed_memory: bool = PrivateAttr(default=False)

    @property
    def retains_freed_memory(self) -> bool:
        return self._retains_freed_memory

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._retains_freed_memory = retain_freed_memory()
        run, instance = context.dagster_run, context.instance
        if run is None or instance is None or run_worker_pid(instance, run.run_id) in (None, os.getpid()):
            return
        step = step_of_this_process(instance, run.run_id)
        job = defs.resolve_job_def(run.job_name)
        if step is not None and job.graph.has_node_named(step) and ALL_CORES_TAG in job.graph.node_named(step).tags:
            return
        set_threads(threads_per_process(max_concurrent(run), cores=torch.get_num_threads()))


@dg.success_hook(required_resource_keys={"step_runtime"})
def step_process_runtime(context: dg.HookContext) -> None:
    """Declares `step_runtime` for every step of full_chain, so each step process sets its thread count and
    allocator before the step runs (Dagster initializes the resources of a step's hooks with the step's own);
    then logs the process, thread count and allocator setting the step ran with."""
    runtime = context.resources.step_runtime
    context.log.debug(f"step {context.step_key} ran in process {os.getpid()}, torch threads: {torch.get_num_threads()}"
                      f", freed memory retained: {runtime.retains_freed_memory}")


# The whole chain, raw logs to the champion; the studies (their own group) are separate jobs.
# Dagster's multiprocess executor runs each step in its own process, up to `max_concurrent` at once
# (default: this machine's cores; `make run WORKERS=N`), so the post-training variants, independent of
# each other, train side by side; each step process uses its share of the cores' torch threads, the
# pretrained policy all of them (`StepProcessRuntime`, through the hook). The default run config
# (pipelines/run_config.py `executor_config`) forks the step processes from a forkserver that imported
# torch, mlflow and GX once: a spawned step would import them again (seconds per step). `execution: config: in_process: {}`
# runs every step in the run's process. The run is tagged with its host from the start (the MLflow
# resource, which tags it too, starts only with the first model step): assets/orphaned_runs.py.
full_chain_job = dg.define_asset_job(
    "full_chain", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(STUDIES_GROUP),
    executor_def=dg.multi_or_in_process_executor, config={"execution": {"config": executor_config()}},
    hooks={step_process_runtime}, run_tags={HOST_TAG: this_host()},
    description="Materialize every asset from raw logs to the evaluation report and the champion.")

robustness_study_job = dg.define_asset_job(
    "robustness_study_job", selection=dg.AssetSelection.assets(robustness_study), executor_def=dg.in_process_executor,
    description="Sweep the observed-reward noise of the simulator; compare every method's true-reward gain per level.")

tuning_study_job = dg.define_asset_job(
    "tuning_study_job", selection=dg.AssetSelection.assets(tuning_study), executor_def=dg.in_process_executor,
    description="Every post-training method with the same search on valid (learning rate x its own knob), "
                "compared at the settings valid chose.")

cross_dataset_summary_job = dg.define_asset_job(
    "cross_dataset_summary_job", selection=dg.AssetSelection.assets(cross_dataset_summary),
    executor_def=dg.in_process_executor,
    description="One table of the method comparison on every data set: the latest evaluation report of each "
                "partition of the chain (materialize the partitions first: a backfill, or make compare-datasets).")


@dg.schedule(name="nightly_retraining", job=full_chain_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Retrain and re-evaluate the whole chain of every built-in data set partition "
                         f"({', '.join(BUILTIN_DATASETS)}) at 02:00 UTC every night, one run each "
                         "(turn it on in the UI).")
def nightly_retraining(context: dg.ScheduleEvaluationContext):
    night = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for dataset in BUILTIN_DATASETS:
        yield dg.RunRequest(run_key=f"{dataset}-{night}", partition_key=dataset)


new_raw_logs = build_new_raw_logs_sensor(full_chain_job)

defs = dg.Definitions(
    assets=[*ALL_ASSETS, *STUDY_ASSETS], asset_checks=ALL_CHECKS,
    jobs=[full_chain_job, robustness_study_job, tuning_study_job, cross_dataset_summary_job],
    schedules=[nightly_retraining],
    sensors=[new_raw_logs],
    resources={**build_resources(), "step_runtime": StepProcessRuntime()}, executor=dg.in_process_executor)
