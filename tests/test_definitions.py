"""The code location loads and wires the chain, job and schedule the way users rely on."""
from __future__ import annotations

import datetime

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


def test_every_chain_asset_and_check_is_partitioned_by_data_set():
    graph = defs.resolve_asset_graph()
    chain = defs.resolve_job_def("full_chain")
    assert chain.partitions_def.get_partition_keys() == ["movielens-100k", "movielens-1m", "file", "simulator"]
    for node in chain.nodes:
        key = dg.AssetKey(node.name)
        if key in graph.get_all_asset_keys():
            assert graph.get(key).partitions_def == chain.partitions_def, node.name
    assert all(graph.get_check_spec(k).partitions_def == chain.partitions_def for k in graph.asset_check_keys)
    assert graph.get(dg.AssetKey("cross_dataset_summary")).partitions_def is None  # one table over the partitions


def test_the_nightly_schedule_retrains_every_built_in_data_set_once_a_night():
    schedule = defs.resolve_schedule_def("nightly_retraining")
    with dg.instance_for_test() as instance:
        when = datetime.datetime(2026, 3, 1, 2, 0, tzinfo=datetime.timezone.utc)
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                            repository_def=defs.get_repository_def())
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["movielens-100k", "movielens-1m", "simulator"]
    assert len({r.run_key for r in requests}) == 3 and all("2026-03-01" in r.run_key for r in requests)


def test_studies_are_their_own_jobs_and_stay_out_of_the_nightly_chain():
    chain = {node.name for node in defs.resolve_job_def("full_chain").nodes}
    assert {"robustness_study", "tuning_study", "cross_dataset_summary"}.isdisjoint(chain)
    assert {"raw_logs", "evaluation_report", "champion"} <= chain
    graph = defs.resolve_asset_graph()
    for name in ("robustness_study", "tuning_study", "cross_dataset_summary"):
        assert graph.get(dg.AssetKey(name)).group_name == "studies"
        job = defs.resolve_job_def(f"{name}_job")
        assert {node.name for node in job.nodes} == {name}
        assert job.executor_def.name == dg.in_process_executor.name


def test_the_whole_code_location_loads_as_dagster_dev_loads_it():
    # job and op names share one namespace: a job named like an asset fails only here, not per job
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"full_chain", "robustness_study_job", "tuning_study_job", "cross_dataset_summary_job"} <= \
        set(repository.job_names)


def test_full_chain_runs_each_step_in_its_own_process_one_per_core_by_default():
    from assets.orphaned_runs import HOST_TAG, this_host
    from recmodels.runtime import available_cores

    job = defs.resolve_job_def("full_chain")
    assert job.executor_def.name == dg.multi_or_in_process_executor.name
    for partition in job.partitions_def.get_partition_keys():  # every data set's run gets the executor's config
        default = job.partitioned_config.get_run_config_for_partition_key(partition)
        (executor,) = dg.validate_run_config(job, default)["execution"].values()
        assert executor["multiprocess"]["max_concurrent"] == available_cores()
        assert executor["multiprocess"]["start_method"]["forkserver"]["preload_modules"] == ["pipelines.step_preload"]
    one = dg.validate_run_config(job, {"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}})
    assert next(iter(one["execution"].values()))["multiprocess"]["max_concurrent"] == 1
    assert dg.validate_run_config(job, {"execution": {"config": {"in_process": {}}}})
    assert job.run_tags[HOST_TAG] == this_host()  # a run is this host's from its start, not from its first model step
    assert {hook.name for hook in job.hook_defs} == {"step_process_runtime"}


def test_a_step_process_takes_its_share_of_the_cores(monkeypatch):
    from pipelines.definitions import max_concurrent
    from recmodels.runtime import available_cores, threads_per_process

    def run(config: dict) -> dg.DagsterRun:
        return dg.DagsterRun(job_name="full_chain", run_id="r", run_config=config)

    assert max_concurrent(run({})) == available_cores()
    assert max_concurrent(run({"execution": {"config": {"multiprocess": {"max_concurrent": 3}}}})) == 3
    monkeypatch.setenv("DAGSTER_MULTIPROCESS_EXECUTOR_MAX_CONCURRENT", "5")  # Dagster's own default when unset
    assert max_concurrent(run({"execution": {"config": {"multiprocess": {}}}})) == 5
    assert [threads_per_process(n, cores=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert threads_per_process(2, cores=8) == 4


def test_the_steps_that_run_alone_keep_every_core_and_the_variants_share_them():
    """`StepProcessRuntime` gives every core to the steps whose op carries ALL_CORES_TAG: the pretrained policy
    (only the short ranker beside it), the evaluation report and the champion (each after every other step)."""
    from assets.models import ALL_CORES_TAG

    graph = defs.resolve_job_def("full_chain").graph
    alone = {node.name for node in graph.nodes if ALL_CORES_TAG in node.tags}
    assert alone == {"pretrained_policy", "evaluation_report", "champion"}


def test_steps_run_in_the_run_process_keep_torch_threads():
    import torch

    from pipelines.definitions import StepProcessRuntime, step_process_runtime
    from recmodels.runtime import set_threads

    @dg.asset
    def tiny() -> int:
        return torch.get_num_threads()

    job = dg.define_asset_job("tiny_job", selection=[tiny], hooks={step_process_runtime})
    tiny_defs = dg.Definitions(assets=[tiny], jobs=[job], resources={"step_runtime": StepProcessRuntime()})
    previous = set_threads(3)
    try:
        result = tiny_defs.resolve_job_def("tiny_job").execute_in_process()
        assert result.success and result.output_for_node("tiny") == 3 and torch.get_num_threads() == 3
    finally:
        set_threads(previous)
