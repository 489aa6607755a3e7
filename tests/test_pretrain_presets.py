"""A data set's measured pretraining settings (recmodels/training/presets.py): the chain takes them for the knobs
its run config leaves empty, and a knob the run config names wins."""
from __future__ import annotations

import dagster as dg
import pytest

from assets.data import interactions, raw_logs
from assets.item_tokens import item_tokens
from assets.model_runs import with_preset
from assets.models import pretrained_policy
from recmodels.storage.model_io import load_policy
from recmodels.training import presets
from tests.local_stores import local_resources, local_tracking_uri
from tests.synthetic import write_synthetic_dataset


@pytest.mark.parametrize("native", [True, False])
def test_movielens_1m_trains_its_goal_settings_with_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(presets, "cpu_has_bf16_dot_products", lambda: native)
    assert presets.pretrain_preset("movielens-1m", "atomic") == {"dropout": 0.0, "epochs": 8, "cpu_bf16": native}


def test_other_data_sets_and_the_semantic_policy_keep_the_library_defaults():
    assert presets.pretrain_preset("movielens-100k", "atomic") == {}
    assert presets.pretrain_preset("simulator", "atomic") == {}
    assert presets.pretrain_preset("movielens-1m", "semantic") == {}


def test_a_preset_fills_only_the_knobs_the_run_config_leaves_empty():
    settings = {"epochs": 3, "dropout": None, "lr": None, "cpu_bf16": False}
    filled, taken = with_preset(settings, {"epochs": 8, "dropout": 0.0, "cpu_bf16": True})
    assert filled == {"epochs": 3, "dropout": 0.0, "lr": None, "cpu_bf16": False}
    assert taken == {"dropout": 0.0}
    assert settings["dropout"] is None  # the run config's own dict is left as it was


@pytest.mark.integration
def test_the_pretrained_policy_asset_trains_with_the_data_sets_preset(tmp_path, monkeypatch):
    """The asset looks the preset up by the data set's name; here every data set gets MovieLens-1M's."""
    import assets.models

    monkeypatch.setattr(assets.models, "pretrain_preset",
                        lambda dataset, tokenization: presets.pretrain_preset("movielens-1m", tokenization))
    logs, catalog = write_synthetic_dataset(tmp_path / "data", n_users=30, n_items=20, seed=3)
    ops = {"raw_logs": {"config": {"path": str(logs), "catalog_path": str(catalog)}},
           "item_tokens": {"config": {"n_levels": 2, "codebook_size": 4, "svd_dim": 8, "seed": 1}},
           # the run config names epochs (it wins over the preset's 8) and leaves dropout empty (the preset's 0)
           "pretrained_policy": {"config": {"epochs": 2, "d_model": 16, "n_heads": 1, "n_layers": 1, "max_len": 10,
                                            "batch_size": 32, "cpu_bf16": False}}}
    tracking_uri, resources = local_tracking_uri(tmp_path), local_resources(tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([raw_logs, interactions, item_tokens, pretrained_policy], instance=instance,
                                resources=resources, run_config={"ops": ops}, partition_key="file")
    assert result.success
    record = result.output_for_node("pretrained_policy")
    assert record.epochs == 2
    assert load_policy(record.checkpoint).cfg.dropout == 0.0  # the library default is 0.2
    (materialization,) = result.asset_materializations_for_node("pretrained_policy")
    assert materialization.metadata["dataset_preset"].value == {"dropout": 0.0}

    import mlflow

    params = mlflow.MlflowClient(tracking_uri).get_run(record.mlflow_run_id).data.params
    assert params["dropout"] == "0.0" and params["epochs"] == "2" and params["cpu_bf16"] == "False"
