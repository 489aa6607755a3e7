"""The data set is a partition of the chain: two partitions materialized in one real Dagster instance and
MLflow store keep apart (each reads its own upstream outputs, each has its own champion), and the
`cross_dataset_summary` asset puts the latest report of each partition in one table."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from assets import ALL_ASSETS, ALL_CHECKS
from assets.studies import cross_dataset_summary
from assets.io_manager import RunScopedIOManager
from scripts.ui_check import SMALL_RUN_PARTITION, small_run_config
from tests.local_stores import local_resources
from tests.synthetic import make_synthetic_logs

pytestmark = pytest.mark.integration


def resources(tmp: Path) -> dict:
    return {**local_resources(tmp), "io_manager": RunScopedIOManager(base_dir=str(tmp / "home" / "asset_outputs"))}


def materialize(tmp: Path, instance: dg.DagsterInstance, partition: str, run_config: dict,
                selection=None) -> dg.ExecuteInProcessResult:
    return dg.materialize([*ALL_ASSETS, *ALL_CHECKS, cross_dataset_summary], instance=instance,
                          resources=resources(tmp), run_config=run_config, partition_key=partition,
                          selection=selection or [a.key for a in ALL_ASSETS])


@pytest.fixture(scope="module")
def two_partitions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partitions")
    logs = tmp / "shop.parquet"
    make_synthetic_logs(n_users=50, n_items=30, seed=1).to_parquet(logs)
    simulated = small_run_config()
    from_file = small_run_config()
    from_file["ops"]["raw_logs"] = {"config": {"path": str(logs)}}
    with dg.instance_for_test(temp_dir=str(tmp)) as instance:
        results = {"file": materialize(tmp, instance, "file", from_file),
                   SMALL_RUN_PARTITION: materialize(tmp, instance, SMALL_RUN_PARTITION, simulated)}
        yield tmp, instance, results


def test_each_partition_materializes_the_whole_chain_under_its_own_key(two_partitions):
    _, instance, results = two_partitions
    for partition, result in results.items():
        assert result.success
        assert {e.partition for e in result.get_asset_materialization_events()} == {partition}
        assert {e.partition for e in result.get_asset_check_evaluations()} == {partition}
    file_dataset = results["file"].output_for_node("raw_logs").dataset
    assert file_dataset.startswith("shop-") and results[SMALL_RUN_PARTITION].output_for_node("raw_logs").dataset \
        == "simulator"
    status = instance.get_status_by_partition(dg.AssetKey("champion"), ["file", SMALL_RUN_PARTITION, "movielens-1m"],
                                              ALL_ASSETS[-1].partitions_def)
    assert status["file"] == status[SMALL_RUN_PARTITION] == dg.AssetPartitionStatus.MATERIALIZED
    assert status["movielens-1m"] is None


def test_a_step_run_alone_reads_the_upstream_of_its_own_partition(two_partitions):
    tmp, instance, results = two_partitions
    # the simulator partition ran last; the file partition's champion must still judge the file's report
    again = materialize(tmp, instance, "file", {}, selection=["champion"])
    assert again.success
    record = again.output_for_node("champion")
    assert record.dataset == results["file"].output_for_node("raw_logs").dataset
    assert record.registered_model == results["file"].output_for_node("champion").registered_model
    assert record.registered_model != results[SMALL_RUN_PARTITION].output_for_node("champion").registered_model


def test_the_summary_puts_the_latest_report_of_each_partition_in_one_table(two_partitions):
    tmp, instance, results = two_partitions
    summary = dg.materialize([*ALL_ASSETS, *ALL_CHECKS, cross_dataset_summary], selection=[cross_dataset_summary],
                             instance=instance, resources=resources(tmp))
    assert summary.success
    record = summary.output_for_node("cross_dataset_summary")
    datasets = {p: results[p].output_for_node("raw_logs").dataset for p in results}
    assert set(record.datasets) == set(datasets.values())
    rows = json.loads(Path(record.files["json"]).read_text())
    for partition, result in results.items():
        report = json.loads(Path(result.output_for_node("evaluation_report").json).read_text())
        ndcg = {r["method"]: r["mean"] for r in rows
                if r["dataset"] == datasets[partition] and r["metric"] == "ndcg@10" and not r["skipped"]}
        assert ndcg == {name: p["metrics"]["ndcg@10"]["mean"] for name, p in report["policies"].items()}
    assert "true_csv" in record.files  # the simulator's oracle reward has its own table
    (materialization,) = summary.asset_materializations_for_node("cross_dataset_summary")
    assert all(results[p].run_id in materialization.metadata["reports"].value for p in results)  # lineage
    assert sorted(materialization.metadata["partitions_without_report"].value) == ["movielens-100k", "movielens-1m"]


def test_the_summary_without_any_report_says_what_to_run(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([*ALL_ASSETS, *ALL_CHECKS, cross_dataset_summary], selection=[cross_dataset_summary],
                                instance=instance, resources=resources(tmp_path), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no evaluation report" in failure.step_failure_data.error.message
    assert "make compare-datasets" in failure.step_failure_data.error.message
