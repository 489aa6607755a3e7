"""The Kubernetes code location (pipelines/k8s_definitions.py) and deploy/, checked without a cluster.

The code-location tests need dagster-k8s (the `k8s` extra) and are skipped without it; the YAML checks
and the missing-extra error run everywhere. deploy/validate.sh runs the same checks in CI.
"""
from __future__ import annotations

import copy
import importlib
import sys
from importlib.util import find_spec

import pytest
import yaml

from recmodels.post_training.variants import VARIANTS
from scripts import validate_deploy as vd

needs_k8s = pytest.mark.skipif(
    find_spec("dagster_k8s") is None,
    reason="dagster-k8s is not installed; it is the optional `k8s` extra: pip install -c constraints.txt -e '.[k8s]'")
needs_kubernetes_client = pytest.mark.skipif(
    find_spec("kubernetes") is None, reason="the kubernetes client (installed with the `k8s` extra) is not installed")


def values() -> dict:
    return yaml.safe_load(vd.VALUES.read_text())


def test_deploy_yaml_parses_and_agrees_with_itself():
    assert vd.check_files(quiet=True) == []


def test_a_secret_the_values_name_but_deploy_lacks_is_reported():
    broken = copy.deepcopy(values())
    broken["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] = [{"name": "no-such-secret"}]
    failures = vd.Failures()
    vd.check_values(broken, vd.load_documents(), failures)
    assert any("no-such-secret" in failure for failure in failures)


def test_a_key_the_chart_does_not_have_is_reported():
    broken = copy.deepcopy(values())
    broken["runLauncher"]["config"]["k8sRunLauncher"]["envSecret"] = []
    failures = vd.Failures()
    vd.check_chart_keys(broken, failures)
    assert failures == ["deploy/helm/values.yaml: `runLauncher.config.k8sRunLauncher` has no key 'envSecret' "
                        "in the chart"]


@needs_kubernetes_client
def test_a_misspelt_manifest_field_is_reported():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mlflow"},
               "spec": {"selector": {"app": "mlflow"}, "prots": [{"port": 5000}]}}
    assert vd.unknown_fields(service, "V1Service") == [".spec.prots"]


def test_without_dagster_k8s_the_module_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # makes `import dagster_k8s` fail
    monkeypatch.delitem(sys.modules, "pipelines.k8s_definitions", raising=False)
    with pytest.raises(ImportError, match=r"k8s` extra"):
        importlib.import_module("pipelines.k8s_definitions")


@needs_k8s
def test_every_job_schedule_and_sensor_runs_on_the_k8s_executor():
    from dagster_k8s import k8s_job_executor

    from pipelines import k8s_definitions as k8s

    names = {job.name for job in k8s.defs.jobs}
    assert "full_chain" in names
    for name in names:
        executor = k8s.defs.resolve_job_def(name).executor_def
        assert executor.executor_creation_fn is k8s_job_executor.executor_creation_fn, name
        assert vd.executor_config(k8s.defs.resolve_job_def(name))["max_concurrent"] == k8s.MAX_CONCURRENT_STEPS
    # the local executor's settings (the multiprocess executor's workers) are not carried over
    assert "execution" not in (k8s.jobs_by_name["full_chain"].config or {})
    targets = [*k8s.defs.schedules, *k8s.defs.sensors]
    assert {t.name for t in targets} == {"nightly_retraining", "new_raw_logs"}
    assert all(t.job.executor_def is k8s.k8s_executor and t.job.name == "full_chain" for t in targets)


@needs_k8s
def test_same_assets_checks_schedules_sensors_and_resources_as_the_local_code_location():
    from pipelines import k8s_definitions as k8s
    from pipelines.definitions import defs as local

    def summary(defs):
        graph = defs.resolve_asset_graph()
        return (graph.get_all_asset_keys(), graph.asset_check_keys, {j.name for j in defs.jobs},
                {s.name for s in defs.schedules}, {s.name for s in defs.sensors}, set(defs.resources))

    assert summary(k8s.defs) == summary(local)


@needs_k8s
def test_every_post_trained_step_and_pretraining_get_a_gpu_pod():
    from pipelines import k8s_definitions as k8s

    steps = vd.render_step_jobs(k8s.defs.resolve_job_def("full_chain"), values())
    assert {f"post_trained_{variant}" for variant in VARIANTS} <= set(steps)

    def resources(step):
        pod = steps[step].manifest["spec"]["template"]["spec"]
        return pod["containers"][0]["resources"], pod.get("tolerations") or []

    for step in ["pretrained_policy", *(f"post_trained_{variant}" for variant in VARIANTS)]:
        (res, tolerations) = resources(step)
        assert res["limits"][vd.GPU] == "1" and res["requests"]["cpu"] == "4", step
        assert any(t["key"] == vd.GPU for t in tolerations), step
    for step, cpu in [("raw_logs", "1"), ("interactions", "1"), ("item_tokens", "1"), ("evaluation_report", "2"),
                      ("champion", "1"), ("interactions_reward_checks", "1")]:
        res, tolerations = resources(step)
        assert res["requests"]["cpu"] == cpu and vd.GPU not in res.get("limits", {}) and not tolerations, step


@needs_k8s
def test_every_step_pod_of_every_job_renders_with_its_resources_secret_and_volume():
    assert vd.check_steps(quiet=True) == []


@needs_k8s
def test_a_post_trained_step_that_lost_its_gpu_is_reported(monkeypatch):
    resolved = vd.executor_config

    def without_gpu(job_def):
        config = copy.deepcopy(resolved(job_def))
        if "post_trained_ppo" in config["per_step_k8s_config"]:
            config["per_step_k8s_config"]["post_trained_ppo"]["container_config"]["resources"]["limits"].pop(vd.GPU)
        return config

    monkeypatch.setattr(vd, "executor_config", without_gpu)
    failures = vd.check_steps(quiet=True)
    assert any(failure.startswith("post_trained_ppo: trains a model") for failure in failures), failures
