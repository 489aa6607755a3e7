"""The `item_tokens` asset and its blocking Great Expectations bijection check, through `dg.materialize`."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from assets.partitions import DATASET_PARTITIONS
from assets.data import interactions, raw_logs
from assets.item_tokens import item_tokens, item_tokens_bijection
from assets.records import ItemTokensRecord
from assets.resources import RecalignHome
from recmodels.tokenization import SemanticIdConfig, SemanticIds
from recmodels.tokenization.quality import bijection_check
from tests.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.integration


def dagster_dir(tmp_path: Path) -> str:
    path = tmp_path / "dagster"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("item_tokens")
    logs, catalog = write_synthetic_dataset(tmp / "data", n_users=40, n_items=30, seed=4)
    run_config = {"ops": {"raw_logs": {"config": {"path": str(logs), "catalog_path": str(catalog)}},
                          "item_tokens": {"config": {"n_levels": 2, "codebook_size": 4, "svd_dim": 8, "seed": 1}}}}
    with dg.instance_for_test(temp_dir=dagster_dir(tmp)) as instance:
        result = dg.materialize([raw_logs, interactions, item_tokens, item_tokens_bijection], instance=instance,
                                resources={"home": RecalignHome(root=str(tmp / "home"))}, run_config=run_config,
                                partition_key="file")
        yield tmp, result


def test_item_tokens_writes_semantic_ids_of_every_item_and_reports_them(materialized):
    tmp, result = materialized
    assert result.success
    record = result.output_for_node("item_tokens")
    path = Path(record.path)
    assert path.is_relative_to(tmp / "home" / "datasets") and result.run_id in path.parts and path.suffix == ".npz"
    ids = SemanticIds.load(path)
    n_items = result.output_for_node("interactions").n_items
    assert ids.n_items == record.n_items == n_items
    assert record.tuple_length == 3 and record.level_sizes[:2] == [4, 4]
    assert record.level_sizes[2] == record.max_disambiguation + 1  # 30 items in 16 prefixes: collisions
    assert record.n_collisions >= n_items - 16
    (materialization,) = result.asset_materializations_for_node("item_tokens")
    meta = materialization.metadata
    assert meta["collisions_resolved"].value == record.n_collisions and meta["tuple_length"].value == 3
    usage = meta["codebook_usage"].value
    assert usage.count("\n") == 1 + 2 and "codes_used" in usage  # header, rule, one row per level
    assert meta["build_seconds"].value >= 0
    assert meta["quantizer"].value == SemanticIdConfig().quantizer  # the library default, none configured
    assert meta["tuple_density"].value == pytest.approx(n_items / np.prod(record.level_sizes))


def test_the_gx_bijection_check_passes_on_the_built_tokens(materialized):
    _, result = materialized
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == "item_tokens_bijection" and evaluation.passed
    assert evaluation.metadata["n_duplicated_tuples"].value == 0
    assert json.loads(evaluation.metadata["expectations"].value) == {
        "row_count": True, "item_unique": True, "item_range": True, "tuple_not_null": True, "tuple_unique": True,
        "round_trip": True}


def broken_ids() -> SemanticIds:
    """Items 3 and 4 share the tuple (1, 1, 0)."""
    codes = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 1]])
    return SemanticIds(codes=codes, level_sizes=(2, 2, 2), config=SemanticIdConfig(n_levels=2, codebook_size=2))


def test_a_broken_mapping_fails_the_blocking_check_naming_the_duplicated_tuple(tmp_path):
    path = broken_ids().save(tmp_path / "broken.npz")

    @dg.asset(name="item_tokens", partitions_def=DATASET_PARTITIONS)
    def broken_item_tokens() -> ItemTokensRecord:
        return ItemTokensRecord(dataset="broken", path=str(path), n_items=5, level_sizes=[2, 2, 2], tuple_length=3,
                                n_collisions=0, max_disambiguation=1, codebook_usage=[1.0, 1.0], build_seconds=0.0)

    @dg.asset(deps=["item_tokens"], partitions_def=DATASET_PARTITIONS)
    def downstream() -> int:
        return 1

    with dg.instance_for_test(temp_dir=dagster_dir(tmp_path)) as instance:
        result = dg.materialize([broken_item_tokens, downstream, item_tokens_bijection], instance=instance,
                                raise_on_error=False, partition_key="file")
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "tuple 1-1-0 is shared by item_idx [3, 4]" in evaluation.description
    assert json.loads(evaluation.metadata["duplicated_tuples"].value) == {"1-1-0": [3, 4]}
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"item_tokens"}  # blocking: nothing downstream runs


def test_bijection_check_reports_each_broken_expectation():
    outcome = bijection_check(broken_ids())
    assert not outcome.passed
    assert outcome.observed["expectations"]["tuple_unique"] is False
    assert outcome.observed["expectations"]["round_trip"] is False  # (1, 1, 0) maps back to one item only
    assert outcome.observed["expectations"]["row_count"] is True
    assert outcome.observed["n_round_trip_mismatches"] == 1
