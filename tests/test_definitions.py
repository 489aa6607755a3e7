"""The code location loads and wires the chain, job and schedule the way users rely on."""
from __future__ import annotations

import dagster as dg

from pipelines.definitions import defs
from assets.post_training import VARIANTS


def test_asset_graph_runs_from_raw_logs_to_report():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_logs", "interactions", "pretrained_policy", "ranker_reward_model", "evaluation_report"} <= keys
    assert {f"post_trained_{m}" for m in VARIANTS} <= keys
    upstream = {k.to_user_string() for k in graph.get(dg.AssetKey("evaluation_report")).parent_keys}
    assert {f"post_trained_{m}" for m in VARIANTS} | {"pretrained_policy"} <= upstream


def test_champion_comes_after_the_report_and_sees_every_challenger():
    graph = defs.resolve_asset_graph()
    upstream = {k.to_user_string() for k in graph.get(dg.AssetKey("champion")).parent_keys}
    assert {"evaluation_report", "interactions"} | {f"post_trained_{m}" for m in VARIANTS} <= upstream
    assert not graph.get(dg.AssetKey("champion")).child_keys
    assert "champion" in {node.name for node in defs.resolve_job_def("full_chain").nodes}


def test_blocking_checks_guard_interactions_and_item_tokens():
    graph = defs.resolve_asset_graph()
    specs = [graph.get_check_spec(k) for k in graph.asset_check_keys]
    blocking = {(s.asset_key.to_user_string(), s.name) for s in specs if s.blocking}
    assert blocking == {("interactions", name) for name in ("schema", "reward_not_null_and_finite", "reward_in_range",
                                                            "reward_std_above_floor", "no_duplicate_events",
                                                            "users_have_train_valid_test")} \
        | {("item_tokens", "item_tokens_bijection")}
    assert {s.asset_key.to_user_string() for s in specs} == {"interactions", "item_tokens"}


def test_item_tokens_feed_the_pretrained_policy_and_the_champion_waits_on_them():
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get(dg.AssetKey("item_tokens")).parent_keys} == {"interactions"}
    assert dg.AssetKey("item_tokens") in graph.get(dg.AssetKey("pretrained_policy")).parent_keys
    assert dg.AssetKey("item_tokens") in graph.get_ancestor_asset_keys(dg.AssetKey("champion"))


def test_nightly_schedule_at_two_utc_on_the_full_chain():
    schedule = defs.resolve_schedule_def("nightly_retraining")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "full_chain"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_studies_are_their_own_jobs_and_stay_out_of_the_nightly_chain():
    chain = {node.name for node in defs.resolve_job_def("full_chain").nodes}
    assert {"robustness_study", "cross_dataset_comparison"}.isdisjoint(chain)
    assert {"raw_logs", "evaluation_report", "champion"} <= chain
    graph = defs.resolve_asset_graph()
    for name in ("robustness_study", "cross_dataset_comparison"):
        assert graph.get(dg.AssetKey(name)).group_name == "studies"
        job = defs.resolve_job_def(f"{name}_job")
        assert {node.name for node in job.nodes} == {name}
        assert job.executor_def.name == dg.in_process_executor.name


def test_the_whole_code_location_loads_as_dagster_dev_loads_it():
    # job and op names share one namespace: a job named like an asset fails only here, not per job
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"full_chain", "robustness_study_job", "cross_dataset_comparison_job"} <= set(repository.job_names)
