"""The Kubernetes code location: pipelines/definitions.py with every job on dagster-k8s's `k8s_job_executor`.

Same assets, checks, schedules, sensors and resources as `pipelines.definitions` (imported from it, never
listed twice); only the executor differs. Each step of `full_chain` (and of the two study jobs) runs as
its own Kubernetes Job, with a pod sized for what the step does (`STEP_PROFILES`):

- `pretrained_policy`, `ranker_reward_model`, every `post_trained_<variant>`, the two studies: requests
  4 CPU and 16 GiB, limits 16 GiB and one `nvidia.com/gpu`;
- `evaluation_report`: 2 CPU, 8 GiB (request = limit for memory, no CPU limit, likewise below);
- `raw_logs`, `interactions`, `item_tokens`: 1 CPU, 4 GiB;
- `champion`, the asset checks, any op of another group: 1 CPU, 2 GiB.

The training steps call `recmodels.runtime.default_device()`, so they train on the GPU the pod gets. GPU pods
also tolerate the usual `nvidia.com/gpu` taint of GPU node pools, and every pod sets `OMP_NUM_THREADS`
to its CPU request (torch would otherwise start one thread per core of the node).

Why the executor's `per_step_k8s_config` and not `dagster-k8s/config` op tags: the tags would have to
be written on the asset definitions in `assets/`, which the local code location shares, and would tie
those definitions to Kubernetes. The executor's map is keyed by op name (an asset's op is named after
the asset; a check's op is `<asset>_<check>` or the check function's name) and is built here from the
asset groups, so a new post-trained variant gets the GPU profile without an edit. The shared pieces of
every step pod (image, namespace, env from the `recalign-env` secret, the `recalign-home` volume)
come from the `K8sRunLauncher` configuration of the Helm chart (deploy/helm/values.yaml): the
executor merges the run launcher's pod settings into each step pod.

Steps of one run exchange their outputs through files under `RECALIGN_HOME` (the run-scoped IO
manager, checkpoints, resumable training states), so `RECALIGN_HOME` must be a volume every step pod
mounts, ReadWriteMany (deploy/README.md).

Needs the `k8s` extra (`pip install -c constraints.txt -e '.[k8s]'`); loads with
`dagster definitions validate -m pipelines.k8s_definitions` without a cluster.
"""
from __future__ import annotations

import os
import warnings

try:
    from dagster_k8s import k8s_job_executor
except ImportError as exc:
    raise ImportError(
        "pipelines.k8s_definitions needs dagster-k8s, which is the optional `k8s` extra: "
        "pip install -c constraints.txt -e '.[k8s]' (the local code location is pipelines.definitions)"
    ) from exc

import dagster as dg  # noqa: E402

from pipelines import definitions as local  # noqa: E402

GPU_RESOURCE = "nvidia.com/gpu"
# Step pods of one run running at the same time: bounds the GPUs one full_chain run holds (its
# post-trained variants are independent and would otherwise all start at once). Read by the code server
# and the run pod alike: set it in the `recalign-env` secret, which both get.
MAX_CONCURRENT_STEPS = int(os.environ.get("RECALIGN_K8S_MAX_CONCURRENT_STEPS", "4"))

# name -> (CPU request, memory request = limit, GPUs)
STEP_PROFILES: dict[str, tuple[str, str, int]] = {
    "training": ("4", "16Gi", 1),
    "evaluation": ("2", "8Gi", 0),
    "data": ("1", "4Gi", 0),
    "small": ("1", "2Gi", 0),
}
# asset group -> profile; ops of other groups and asset-check ops get DEFAULT_PROFILE
GROUP_PROFILES = {"data": "data", "models": "training", "post_training": "training",
                  "evaluation": "evaluation", "promotion": "small", "studies": "training"}
DEFAULT_PROFILE = "small"


def profile_k8s_config(profile: str) -> dict:
    """The `dagster-k8s` user-defined config (container and pod spec) of a step pod of `profile`."""
    cpu, memory, gpus = STEP_PROFILES[profile]
    limits = {"memory": memory, **({GPU_RESOURCE: str(gpus)} if gpus else {})}
    config: dict = {"container_config": {
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
        "env": [{"name": "OMP_NUM_THREADS", "value": cpu}]}}
    if gpus:
        config["pod_spec_config"] = {
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}
    return config


def step_profiles(definitions: dg.Definitions) -> dict[str, str]:
    """Op name -> profile for every asset and asset-check op of `definitions` (checks: DEFAULT_PROFILE)."""
    profiles: dict[str, str] = {}
    for assets_def in definitions.assets or []:
        if not isinstance(assets_def, dg.AssetsDefinition) or not assets_def.is_executable:
            continue
        groups = {assets_def.group_names_by_key[key] for key in assets_def.keys}
        candidates = {GROUP_PROFILES.get(group, DEFAULT_PROFILE) for group in groups}
        # a multi-asset spanning groups gets the largest of its profiles
        profiles[assets_def.node_def.name] = min(candidates, key=list(STEP_PROFILES).index)
    for checks_def in definitions.asset_checks or []:
        profiles.setdefault(checks_def.node_def.name, DEFAULT_PROFILE)
    return profiles


STEP_PROFILE_BY_OP = step_profiles(local.defs)

EXECUTOR_CONFIG = {
    "max_concurrent": MAX_CONCURRENT_STEPS,
    # every step pod, before its own entry below is merged over it (dicts deep-merge, lists append)
    "step_k8s_config": {"container_config": {"resources": {
        "requests": {"cpu": STEP_PROFILES[DEFAULT_PROFILE][0], "memory": STEP_PROFILES[DEFAULT_PROFILE][1]},
        "limits": {"memory": STEP_PROFILES[DEFAULT_PROFILE][1]}}}},
    "per_step_k8s_config": {op: profile_k8s_config(profile) for op, profile in sorted(STEP_PROFILE_BY_OP.items())},
}

k8s_executor = k8s_job_executor.configured(EXECUTOR_CONFIG, name="recalign_k8s")


def without_execution(config):
    """A job's default run config without its `execution` section: the local executor's settings (e.g. the
    multiprocess executor's workers) mean nothing to the Kubernetes executor, whose config is fixed above."""
    if isinstance(config, dg.RunConfig):
        config = config.to_config_dict()
    if isinstance(config, dict) and "execution" in config:
        return {key: value for key, value in config.items() if key != "execution"} or None
    return config


def on_k8s(job):
    """The asset job `job` with the Kubernetes executor (everything else unchanged but its executor config)."""
    if not isinstance(getattr(job, "selection", None), dg.AssetSelection):  # not made by define_asset_job
        raise TypeError(f"job {job.name!r} of pipelines.definitions is not an asset job; give it the k8s executor "
                        "in pipelines/k8s_definitions.py by hand")
    return dg.define_asset_job(
        job.name, selection=job.selection, config=without_execution(job.config), description=job.description,
        tags=job.tags, run_tags=job.run_tags, metadata=job.metadata, partitions_def=job.partitions_def,
        executor_def=k8s_executor, hooks=job.hooks, op_retry_policy=job.op_retry_policy, owners=job.owners,
        automation_condition=job.automation_condition)


jobs = [on_k8s(job) for job in local.defs.jobs or []]
jobs_by_name = {job.name: job for job in jobs}
full_chain_job = jobs_by_name["full_chain"]


def _retarget(definition):
    """A schedule or sensor of the local code location, pointed at the Kubernetes variant of its job."""
    try:
        name = definition.job_name
    except dg.DagsterInvalidDefinitionError:  # no target job, or several: nothing to swap here
        return definition
    if name not in jobs_by_name:
        return definition
    with warnings.catch_warnings():  # the copy passes on every field, `owners` (beta) included
        warnings.simplefilter("ignore", dg.BetaWarning)
        return definition.with_updated_job(jobs_by_name[name])


defs = dg.Definitions(
    assets=local.defs.assets, asset_checks=local.defs.asset_checks, jobs=jobs,
    schedules=[_retarget(schedule) for schedule in local.defs.schedules or []],
    sensors=[_retarget(sensor) for sensor in local.defs.sensors or []],
    resources=local.defs.resources, executor=k8s_executor)
