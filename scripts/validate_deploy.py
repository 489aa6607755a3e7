"""Checks of the Kubernetes deployment (deploy/) that need no cluster; deploy/validate.sh runs them in CI.

`--part files` (needs PyYAML only; with the `kubernetes` package also the field names):
- every `*.yaml`/`*.yml` under deploy/ parses (`yaml.safe_load_all`); each Kubernetes manifest has
  apiVersion, kind and metadata.name, and, when the `kubernetes` client is installed, no field its
  model of that kind does not know (a typo would be dropped silently by the API server or kubectl);
- the Helm values use only keys of the Dagster chart 1.13 schema for the sections they set
  (`CHART_KEYS`, transcribed from the chart's schema for those sections), embed valid Kubernetes
  volumes, mounts and resources, and agree with the manifests and the code: the code location module,
  K8sRunLauncher, external Postgres with its password secret, every secret and volume claim they
  name exists under deploy/, RECALIGN_HOME is a mounted path, the daemon queues and monitors runs,
  MLFLOW_TRACKING_URI names the MLflow Service and its port, the MLflow server mounts the volume
  where the artifacts are written and answers the Service's host name.

`--part steps` (needs the `k8s` extra): for every job of `pipelines.k8s_definitions`, the executor is
dagster-k8s's `k8s_job_executor`, its configuration resolves against the executor's schema, and the
Kubernetes Job of each step is rendered offline by dagster-k8s (`construct_dagster_k8s_job`) the way
`K8sStepHandler.launch_step` builds it: run launcher settings from the Helm values, then the
executor's `step_k8s_config`, the step's `dagster-k8s/config` tags and its `per_step_k8s_config`
entry. Each pod must request what `STEP_PROFILES` says for its step (every pretrained and
post-trained step: one `nvidia.com/gpu` and the GPU toleration), with requests within limits, one
`OMP_NUM_THREADS` equal to its CPU request, the `recalign-env` secret, and RECALIGN_HOME mounted.

    python -m scripts.validate_deploy [--part files|steps|all] [--dump DIR] [--quiet]

`--dump DIR` writes the rendered step Jobs as YAML (what the executor would submit, minus the run id).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
CODE_LOCATION = "pipelines.k8s_definitions"
RELEASE = "dagster"  # the release name of deploy/README.md's `helm upgrade --install dagster ...`
NAMESPACE = "recalign"
GPU = "nvidia.com/gpu"

# The keys the Dagster chart (1.13) accepts in the sections these values set, as in its values schema.
CHART_KEYS = {
    "": {"global", "dagsterWebserver", "dagster-user-deployments", "runLauncher", "postgresql",
         "generatePostgresqlPasswordSecret", "dagsterDaemon", "telemetry", "imagePullSecrets",
         "computeLogManager", "scheduler", "serviceAccount", "ingress", "pythonLogs", "retention",
         "migrate", "busybox", "rbacEnabled", "nameOverride", "fullnameOverride", "additionalInstanceConfig",
         "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "extraManifests", "concurrency"},
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "dagster-user-deployments.deployments[]": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port", "env",
        "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
        "labels", "volumeMounts", "volumes", "schedulerName", "initContainers", "sidecarContainers",
        "deploymentNamespace", "deploymentStrategy", "service", "replicaCount"},
    "runLauncher": {"type", "config"},
    "runLauncher.config": {"k8sRunLauncher", "celeryK8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"},
    "runLauncher.config.k8sRunLauncher.runK8sConfig": {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"},
    "postgresql": {"image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
                   "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service"},
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
        "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"},
    "dagsterDaemon.runMonitoring": {"enabled", "startTimeoutSeconds", "cancelTimeoutSeconds",
                                    "maxResumeRunAttempts", "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds"},
}


class Failures(list):
    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.append(message)
        return ok


# ---------------------------------------------------------------------------------------------- files

def yaml_files(root: Path = DEPLOY) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())


def load_documents(root: Path = DEPLOY) -> dict[Path, list[Any]]:
    """Every YAML file under `root` -> its documents (empty ones dropped); a parse error names its file."""
    documents = {}
    for path in yaml_files(root):
        try:
            documents[path] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        except yaml.YAMLError as exc:
            raise SystemExit(f"{path.relative_to(ROOT)}: not valid YAML: {exc}") from exc
    return documents


def manifests(documents: dict[Path, list[Any]]) -> Iterator[tuple[Path, dict]]:
    for path, docs in documents.items():
        for doc in docs:
            if isinstance(doc, dict) and "kind" in doc:
                yield path, doc


def _k8s_model(name: str):
    try:
        import kubernetes.client
    except ImportError:
        return None
    return getattr(kubernetes.client, name, None)


def unknown_fields(obj: Any, model: str, where: str = "") -> list[str]:
    """Fields of `obj` that the Kubernetes client model `model` (e.g. V1Deployment) does not know; [] without the
    `kubernetes` package. The object is deserialized into the model and serialized back: what is lost is unknown."""
    if _k8s_model(model) is None:
        return []
    import kubernetes.client

    client = kubernetes.client.ApiClient()
    roundtrip = client.sanitize_for_serialization(client._ApiClient__deserialize(obj, model))
    lost: list[str] = []

    def walk(original: Any, back: Any, path: str) -> None:
        if isinstance(original, dict):
            back = back if isinstance(back, dict) else {}
            for key, value in original.items():
                if key not in back:
                    lost.append(f"{where}{path}.{key}")
                else:
                    walk(value, back[key], f"{path}.{key}")
        elif isinstance(original, list) and isinstance(back, list):
            for i, (a, b) in enumerate(zip(original, back)):
                walk(a, b, f"{path}[{i}]")

    walk(obj, roundtrip, "")
    return lost


def model_name(manifest: dict) -> str:
    version = str(manifest.get("apiVersion", "")).split("/")[-1]
    return f"{version[:1].upper()}{version[1:]}{manifest.get('kind')}"


def check_manifests(documents: dict[Path, list[Any]], failures: Failures) -> None:
    for path, doc in manifests(documents):
        name = f"{path.relative_to(ROOT)}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        failures.check(bool(doc.get("apiVersion")) and bool(doc.get("metadata", {}).get("name")),
                       f"{name}: needs apiVersion and metadata.name")
        model = model_name(doc)
        if _k8s_model("V1Pod") is not None and failures.check(_k8s_model(model) is not None,
                                                              f"{name}: no Kubernetes model {model}"):
            for field in unknown_fields(doc, model):
                failures.append(f"{name}: unknown field {field}")


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def check_chart_keys(values: dict, failures: Failures) -> None:
    for section, allowed in CHART_KEYS.items():
        if section.endswith("[]"):
            nodes = _get(values, section[:-2]) or []
        else:
            nodes = [values if not section else _get(values, section)]
        for node in nodes:
            if isinstance(node, dict):
                for key in sorted(set(node) - allowed):
                    failures.append(f"deploy/helm/values.yaml: `{section or '<top>'}` has no key {key!r} in the chart")


def secrets_by_name(documents) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests(documents) if doc["kind"] == "Secret"}


def secret_data(secret: dict) -> dict[str, str]:
    return {**(secret.get("data") or {}), **(secret.get("stringData") or {})}


def env_var_value(env_vars: list[str], name: str) -> str | None:
    for item in env_vars or []:
        key, _, value = str(item).partition("=")
        if key == name:
            return value
    return None


def check_values(values: dict, documents: dict[Path, list[Any]], failures: Failures) -> None:
    where = "deploy/helm/values.yaml"
    check_chart_keys(values, failures)
    secrets = secrets_by_name(documents)
    claims = {doc["metadata"]["name"]: doc for _, doc in manifests(documents) if doc["kind"] == "PersistentVolumeClaim"}
    services = {doc["metadata"]["name"]: doc for _, doc in manifests(documents) if doc["kind"] == "Service"}

    deployments = _get(values, "dagster-user-deployments.deployments") or []
    failures.check(_get(values, "dagster-user-deployments.enabled") is True and len(deployments) == 1,
                   f"{where}: one user code deployment, enabled")
    launcher = _get(values, "runLauncher.config.k8sRunLauncher") or {}
    failures.check(_get(values, "runLauncher.type") == "K8sRunLauncher", f"{where}: runLauncher.type is K8sRunLauncher")
    for i, deployment in enumerate(deployments):
        failures.check(deployment.get("dagsterApiGrpcArgs") == ["-m", CODE_LOCATION],
                       f"{where}: deployment {i} serves `dagster api grpc -m {CODE_LOCATION}`")
        failures.check(bool(_get(deployment, "image.repository")) and bool(_get(deployment, "image.tag")),
                       f"{where}: deployment {i} names its image and tag")

    # Postgres: external, password from an existing secret with the chart's key
    failures.check(_get(values, "postgresql.enabled") is False, f"{where}: postgresql.enabled is false (external)")
    for key in ("postgresqlHost", "postgresqlUsername", "postgresqlDatabase"):
        failures.check(bool(_get(values, f"postgresql.{key}")), f"{where}: postgresql.{key} is set")
    failures.check(values.get("generatePostgresqlPasswordSecret") is False,
                   f"{where}: generatePostgresqlPasswordSecret is false (the password lives in a secret)")
    pg_secret = _get(values, "global.postgresqlSecretName")
    failures.check(pg_secret in secrets and "postgresql-password" in secret_data(secrets.get(pg_secret, {})),
                   f"{where}: the secret {pg_secret!r} with key postgresql-password is templated under deploy/")

    # every secret and volume claim named exists under deploy/; embedded Kubernetes objects are well formed
    holders = [("runLauncher.config.k8sRunLauncher", launcher)] + [
        (f"dagster-user-deployments.deployments[{i}]", d) for i, d in enumerate(deployments)]
    for name, holder in holders:
        for secret in holder.get("envSecrets") or []:
            failures.check(secret.get("name") in secrets, f"{where}: {name}.envSecrets {secret} is not under deploy/")
        for i, volume in enumerate(holder.get("volumes") or []):
            failures.extend(unknown_fields(volume, "V1Volume", f"{where}: {name}.volumes[{i}]"))
            claim = _get(volume, "persistentVolumeClaim.claimName")
            known = failures.check(claim is None or claim in claims, f"{where}: {name}: claim {claim!r} not under deploy/")
            if claim is not None and known:
                failures.check("ReadWriteMany" in (_get(claims[claim], "spec.accessModes") or []),
                               f"claim {claim!r}: step pods on several nodes share it, it must be ReadWriteMany")
        for i, mount in enumerate(holder.get("volumeMounts") or []):
            failures.extend(unknown_fields(mount, "V1VolumeMount", f"{where}: {name}.volumeMounts[{i}]"))
        if holder.get("resources"):
            failures.extend(unknown_fields(holder["resources"], "V1ResourceRequirements", f"{where}: {name}.resources"))

    home = env_var_value(launcher.get("envVars"), "RECALIGN_HOME")
    mounts = {m.get("mountPath") for m in launcher.get("volumeMounts") or []}
    failures.check(home in mounts, f"{where}: run launcher RECALIGN_HOME ({home}) is a mounted volume path")
    artifacts = env_var_value(launcher.get("envVars"), "MLFLOW_ARTIFACT_ROOT")
    failures.check(bool(home) and bool(artifacts) and artifacts.startswith(f"{home}/"),
                   f"{where}: MLFLOW_ARTIFACT_ROOT ({artifacts}) is on the shared volume")
    failures.check(_get(launcher, "resources.limits.cpu") is None,
                   f"{where}: no CPU limit on the run launcher (it is merged into every step pod)")

    # the daemon
    failures.check(_get(values, "dagsterDaemon.enabled") is True, f"{where}: the daemon is enabled")
    failures.check(_get(values, "dagsterDaemon.runCoordinator.type") == "QueuedRunCoordinator"
                   and _get(values, "dagsterDaemon.runCoordinator.enabled") is True,
                   f"{where}: runs are queued (QueuedRunCoordinator)")
    failures.check(_get(values, "dagsterDaemon.runMonitoring.enabled") is True, f"{where}: run monitoring is on")

    # MLflow: the tracking URI the runs get names the MLflow Service; the server sees the artifacts
    tracking = None
    for secret in launcher.get("envSecrets") or []:
        tracking = tracking or secret_data(secrets.get(secret.get("name"), {})).get("MLFLOW_TRACKING_URI")
    if failures.check(bool(tracking), f"{where}: MLFLOW_TRACKING_URI comes from a run launcher secret"):
        url = urlparse(tracking)
        host = (url.hostname or "").split(".")[0]
        ports = [p.get("port") for p in _get(services.get(host, {}), "spec.ports") or []]
        failures.check(host in services and url.port in ports,
                       f"MLFLOW_TRACKING_URI {tracking}: no Service {host!r} with port {url.port} under deploy/")
        mlflow = next((doc for _, doc in manifests(documents)
                       if doc["kind"] == "Deployment" and doc["metadata"]["name"] == host), None)
        if failures.check(mlflow is not None, f"no MLflow Deployment {host!r} under deploy/"):
            container = _get(mlflow, "spec.template.spec.containers")[0]
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            allowed = (env.get("MLFLOW_SERVER_ALLOWED_HOSTS") or "").split(",")
            failures.check(f"{url.hostname}:*" in allowed or url.netloc in allowed,
                           f"MLflow server: MLFLOW_SERVER_ALLOWED_HOSTS does not admit {url.netloc}")
            images = {f"{_get(d, 'image.repository')}:{_get(d, 'image.tag')}" for d in deployments}
            failures.check(container.get("image") in images,
                           f"MLflow server: image {container.get('image')} is not the code location's {sorted(images)}"
                           " (one MLflow version for server and clients)")
            args = " ".join(container.get("args") or [])
            failures.check("--backend-store-uri" in args and "--serve-artifacts" in args,
                           "MLflow server: --backend-store-uri and --serve-artifacts")
            claim_of = {v["name"]: _get(v, "persistentVolumeClaim.claimName")
                        for v in _get(mlflow, "spec.template.spec.volumes") or []}
            launcher_claims = {_get(v, "persistentVolumeClaim.claimName") for v in launcher.get("volumes") or []}
            failures.check(any(m.get("mountPath") == home and claim_of.get(m.get("name")) in launcher_claims
                               for m in container.get("volumeMounts") or []),
                           f"MLflow server: mounts the runs' volume at {home} (artifacts are file paths there)")


def check_files(quiet: bool = False) -> Failures:
    failures = Failures()
    documents = load_documents()
    failures.check(VALUES in documents, "deploy/helm/values.yaml is missing")
    check_manifests(documents, failures)
    if VALUES in documents:
        check_values(documents[VALUES][0], documents, failures)
    if not quiet:
        kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for _, doc in manifests(documents))
        fields = ("and their field names" if _k8s_model("V1Pod") is not None
                  else "(field names NOT checked: no kubernetes client)")
        print(f"{len(documents)} YAML files parse; manifests {', '.join(kinds)} {fields}; Helm values consistent")
    return failures


# ---------------------------------------------------------------------------------------------- steps

def _quantity(text: str) -> float:
    """A Kubernetes quantity as a number (cpu cores or bytes)."""
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]
    return float(match.group(1)) * scale


def launcher_context(values: dict):
    """The run launcher's pod settings as the chart renders them into dagster.yaml (K8sRunLauncher config)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    cfg = _get(values, "runLauncher.config.k8sRunLauncher") or {}
    run_k8s = cfg.get("runK8sConfig") or {}
    snake = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
             "jobMetadata": "job_metadata"}
    return K8sContainerContext(
        image_pull_policy=cfg.get("imagePullPolicy"),
        image_pull_secrets=values.get("imagePullSecrets") or None,
        service_account_name=_get(values, "global.serviceAccountName") or RELEASE,
        env_config_maps=[c["name"] for c in cfg.get("envConfigMaps") or [] if "name" in c],
        env_secrets=[s["name"] for s in cfg.get("envSecrets") or [] if "name" in s],
        env_vars=cfg.get("envVars") or [],
        volume_mounts=cfg.get("volumeMounts") or [],
        volumes=cfg.get("volumes") or [],
        labels=cfg.get("labels") or {},
        namespace=cfg.get("jobNamespace") or NAMESPACE,
        resources=cfg.get("resources") or {},
        scheduler_name=cfg.get("schedulerName"),
        security_context=cfg.get("securityContext") or {},
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict({snake[k]: v for k, v in run_k8s.items()}),
    )


def executor_config(job_def) -> dict:
    """The executor configuration of `job_def` as the executor receives it (defaults applied, schema-checked)."""
    from dagster._core.system_config.objects import ResolvedRunConfig

    return dict(ResolvedRunConfig.build(job_def, {}).execution.execution_engine_config)


class StepJob(NamedTuple):
    op: str  # the op the step runs: the key of its `per_step_k8s_config` entry
    manifest: dict  # the Kubernetes Job, as `kubectl apply` would read it


def render_step_jobs(job_def, values: dict) -> dict[str, StepJob]:
    """Step key -> the Kubernetes Job `K8sStepHandler.launch_step` would submit for it."""
    import kubernetes.client
    from dagster._core.execution.api import create_execution_plan
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job,
                                 get_k8s_job_name, get_user_defined_k8s_config)

    config = executor_config(job_def)
    executor_context = K8sContainerContext(
        image_pull_policy=config.get("image_pull_policy"), image_pull_secrets=config.get("image_pull_secrets"),
        service_account_name=config.get("service_account_name"), env_config_maps=config.get("env_config_maps"),
        env_secrets=config.get("env_secrets"), env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"), volumes=config.get("volumes"), labels=config.get("labels"),
        namespace=config.get("job_namespace"), resources=config.get("resources"),
        scheduler_name=config.get("scheduler_name"), security_context=config.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})))
    base = launcher_context(values).merge(executor_context)
    deployment = (_get(values, "dagster-user-deployments.deployments") or [{}])[0]
    image = f"{_get(deployment, 'image.repository')}:{_get(deployment, 'image.tag')}"
    job_config = DagsterK8sJobConfig(
        job_image=config.get("job_image") or image,
        dagster_home=_get(values, "global.dagsterHome") or "/opt/dagster/dagster_home",
        instance_config_map=f"{RELEASE}-instance",
        postgres_password_secret=_get(values, "global.postgresqlSecretName"))
    api = kubernetes.client.ApiClient()
    run_id = "00000000-0000-0000-0000-000000000000"
    rendered = {}
    for step in create_execution_plan(job_def).get_all_steps_in_topo_order():
        context = base.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step.tags))).merge(
            K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                config.get("per_step_k8s_config", {}).get(step.op_name, {}))))
        name = f"dagster-step-{get_k8s_job_name(run_id, step.key)}"
        job = construct_dagster_k8s_job(
            job_config=job_config, args=["dagster", "api", "execute_step"], job_name=name, pod_name=name,
            component="step_worker", user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": job_def.name, "dagster/op": step.key, "dagster/run-id": run_id},
            env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": job_def.name},
                      {"name": "DAGSTER_RUN_STEP_KEY", "value": step.key}])
        manifest = api.sanitize_for_serialization(job)
        manifest["metadata"]["namespace"] = context.namespace
        rendered[step.key] = StepJob(step.op_name, manifest)
    return rendered


def gpu_steps(job_def) -> set[str]:
    """Steps that must get a GPU, named independently of STEP_PROFILES: pretraining and every post-trained variant."""
    from recmodels.post_training.variants import VARIANTS

    wanted = {"pretrained_policy", *(f"post_trained_{variant}" for variant in VARIANTS)}
    return {node.name for node in job_def.nodes} & wanted


def check_step_job(step: str, op: str, manifest: dict, values: dict, needs_gpu: bool, failures: Failures) -> None:
    from pipelines import k8s_definitions as k8s

    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    requests = _get(container, "resources.requests") or {}
    limits = _get(container, "resources.limits") or {}
    cpu, memory, gpus = k8s.STEP_PROFILES[k8s.STEP_PROFILE_BY_OP.get(op, k8s.DEFAULT_PROFILE)]
    failures.check(requests.get("cpu") == cpu and requests.get("memory") == memory,
                   f"{step}: requests {requests}, expected cpu {cpu}, memory {memory}")
    failures.check(limits.get(GPU) == (str(gpus) if gpus else None),
                   f"{step}: GPU limit {limits.get(GPU)}, expected {gpus}")
    if needs_gpu:
        failures.check(limits.get(GPU) == "1", f"{step}: trains a model, needs one {GPU} (limit {limits.get(GPU)})")
        failures.check(any(t.get("key") == GPU for t in pod.get("tolerations") or []), f"{step}: no GPU toleration")
    for resource in ("cpu", "memory"):
        if resource in limits and resource in requests:
            failures.check(_quantity(requests[resource]) <= _quantity(limits[resource]),
                           f"{step}: {resource} request {requests[resource]} above its limit {limits[resource]}")
    env = container.get("env") or []
    names = [e["name"] for e in env]
    failures.check(len(names) == len(set(names)),
                   f"{step}: duplicate env vars {sorted({n for n in names if names.count(n) > 1})}")
    failures.check({"name": "OMP_NUM_THREADS", "value": requests.get("cpu")} in env,
                   f"{step}: OMP_NUM_THREADS is not its CPU request")
    launcher = _get(values, "runLauncher.config.k8sRunLauncher") or {}
    secrets = {_get(e, "secretRef.name") for e in container.get("envFrom") or []}
    failures.check({s["name"] for s in launcher.get("envSecrets") or []} <= secrets, f"{step}: env secrets {secrets}")
    home = env_var_value(launcher.get("envVars"), "RECALIGN_HOME")
    failures.check({"name": "RECALIGN_HOME", "value": home} in env, f"{step}: RECALIGN_HOME is not {home}")
    mounts = container.get("volumeMounts") or []
    failures.check(any(m.get("mountPath") == home for m in mounts), f"{step}: {home} is not mounted")
    for key, items in (("volumes", pod.get("volumes") or []), ("volumeMounts", mounts)):
        item_names = [item["name"] for item in items]
        failures.check(len(item_names) == len(set(item_names)), f"{step}: duplicate {key} {item_names}")


def check_steps(dump: Path | None = None, quiet: bool = False) -> Failures:
    from dagster_k8s import k8s_job_executor

    from pipelines import k8s_definitions as k8s
    from pipelines.definitions import defs as local_defs

    failures = Failures()
    values = yaml.safe_load(VALUES.read_text())
    k8s_jobs = {job.name: k8s.defs.resolve_job_def(job.name) for job in k8s.defs.jobs}
    failures.check(set(k8s_jobs) == {job.name for job in local_defs.jobs},
                   f"the Kubernetes code location has jobs {sorted(k8s_jobs)}, the local one others")
    failures.check("full_chain" in k8s_jobs, "no full_chain job in the Kubernetes code location")
    for schedule_or_sensor in [*k8s.defs.schedules, *k8s.defs.sensors]:
        job = schedule_or_sensor.job
        failures.check(job.executor_def is k8s.k8s_executor,
                       f"{schedule_or_sensor.name} targets {job.name} without the Kubernetes executor")
    rows = []
    for name, job_def in k8s_jobs.items():
        executor = job_def.executor_def
        failures.check(executor.executor_creation_fn is k8s_job_executor.executor_creation_fn,
                       f"{name}: executor {executor.name} is not dagster-k8s's k8s_job_executor")
        try:
            rendered = render_step_jobs(job_def, values)
        except Exception as exc:  # noqa: BLE001 - a failure to report, with the job it belongs to
            failures.append(f"{name}: step Jobs do not render: {type(exc).__name__}: {exc}")
            continue
        config = executor_config(job_def)
        stale = set(config["per_step_k8s_config"]) - {node.name for j in k8s_jobs.values() for node in j.nodes}
        failures.check(not stale, f"per_step_k8s_config names ops no job has: {sorted(stale)}")
        needs_gpu = gpu_steps(job_def)
        for step, (op, manifest) in rendered.items():
            check_step_job(step, op, manifest, values, step in needs_gpu, failures)
            container = manifest["spec"]["template"]["spec"]["containers"][0]
            rows.append((name, step, container["resources"]["requests"]["cpu"],
                         container["resources"]["requests"]["memory"],
                         container["resources"].get("limits", {}).get(GPU, "-")))
            if dump is not None:
                dump.mkdir(parents=True, exist_ok=True)
                (dump / f"{name}.{step}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        if name == "full_chain":
            from recmodels.post_training.variants import VARIANTS

            failures.check({f"post_trained_{v}" for v in VARIANTS} <= set(rendered),
                           "full_chain lacks a step for some post-trained variant")
    if not quiet:
        width = max(len(row[1]) for row in rows) if rows else 10
        print(f"{'job':<29} {'step':<{width}} cpu mem   gpu")
        for job, step, cpu, memory, gpu in rows:
            print(f"{job:<29} {step:<{width}} {cpu:<3} {memory:<5} {gpu}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["files", "steps", "all"], default="all")
    parser.add_argument("--dump", type=Path, help="write the rendered step Jobs here as YAML")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    failures = Failures()
    if args.part in {"files", "all"}:
        failures += check_files(args.quiet)
    if args.part in {"steps", "all"}:
        failures += check_steps(args.dump, args.quiet)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if not failures:
        print(f"deploy checks ({args.part}): OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
