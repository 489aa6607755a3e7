"""The tuning study: every method searched over the same learning rates and its own knob, the setting chosen
on valid only, the chosen settings reported by method with adagrpo's effective α, denser valid checks early."""
from __future__ import annotations

import pandas as pd
import pytest

from recmodels.data.interactions import build_interactions
from recmodels.data.sources import RawLogs
from recmodels.data.rewards import RewardSpec
from recmodels.post_training.loop import PostTrainConfig
from recmodels.studies.tuning import TuningConfig, run_tuning, write_tuning
from recmodels.training.ranker_training import RankerTrainConfig
from tests.local_stores import local_resources, local_tracking_uri
from tests.synthetic import make_synthetic_logs

TINY = dict(pretrain=dict(epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=10, batch_size=32),
            ranker=RankerTrainConfig(epochs=1, batch_size=64), n_boot=50)


@pytest.fixture(scope="module")
def tuned():
    raw = RawLogs("synthetic", make_synthetic_logs(n_users=40, n_items=20, seed=2), None, "digest")
    inter = build_interactions(raw, RewardSpec())
    config = TuningConfig(methods=("sft", "ips", "exp_rw_sft", "adagrpo"), lrs=(1e-3, 3e-2),
                          knob_grid={"exp_rw_sft": ("lam", (0.3, 3.0)), "adagrpo": ("alpha", (0.3, 1.0))},
                          post_train=PostTrainConfig(steps=6, eval_every=3, batch_size=16, early_eval_every=1,
                                                     early_eval_until=2), **TINY)
    return run_tuning(inter.table, inter.n_items, inter.catalog, config=config, dataset="synthetic")


def test_every_method_gets_each_lr_times_each_value_of_its_knob(tuned):
    grid = tuned.grid
    assert grid.groupby("method", sort=False).size().to_dict() == {"sft": 2, "ips": 2, "exp_rw_sft": 4, "adagrpo": 4}
    assert sorted(grid.loc[grid["method"] == "adagrpo", ["lr", "value"]].itertuples(index=False, name=None)) == \
        [(1e-3, 0.3), (1e-3, 1.0), (3e-2, 0.3), (3e-2, 1.0)]
    assert "exp_rw_sft__lr_0_03__lam_3" in set(grid["variant"])
    assert grid.loc[grid["method"] == "ips", "skipped"].str.contains("no propensities").all()
    trained = tuned.comparison.post_trained["sft__lr_0_03"]
    assert [row["step"] for row in trained.history] == [0, 1, 2, 3, 6]  # dense early checks, then every 3


def test_each_method_is_chosen_on_valid_and_reported_under_its_name(tuned):
    grid = tuned.grid[tuned.grid["skipped"].isna()]
    for method, variant in tuned.chosen.items():
        rows = grid[grid["method"] == method]
        assert rows.loc[rows["variant"] == variant, "valid_ndcg@10"].iloc[0] == rows["valid_ndcg@10"].max()
    assert set(tuned.chosen) == {"sft", "exp_rw_sft", "adagrpo"}
    report = tuned.report
    assert list(report["policies"]) == ["pretrained", "sft", "exp_rw_sft", "adagrpo"]
    assert report["skipped"] == {"ips": "skipped: the logs carry no propensities"}
    chosen = tuned.comparison.post_trained[tuned.chosen["adagrpo"]]
    lr = tuned.grid.set_index("variant").loc[tuned.chosen["adagrpo"], "lr"]
    assert report["chosen"]["adagrpo"] == {"variant": tuned.chosen["adagrpo"], "lr": lr,
                                           "alpha": chosen.params["alpha"]}
    open_rates = [row["gate_open_rate"] for row in chosen.history if row["step"] > 0]
    assert report["policies"]["adagrpo"]["training"]["grpo_weight"] == \
        pytest.approx(chosen.params["alpha"] * sum(open_rates) / len(open_rates))


def test_the_study_writes_its_tables(tuned, tmp_path):
    files = write_tuning(tuned, tmp_path)
    text = files["md"].read_text()
    assert "## Chosen settings" in text and "### Signal per step" in text and "## Every grid point" in text
    chosen = pd.read_csv(files["chosen_csv"])
    assert list(chosen["method"]) == ["sft", "exp_rw_sft", "adagrpo"]
    assert chosen.loc[0, "knob"] == "-" and chosen.loc[2, "knob"].startswith("alpha=")
    assert len(pd.read_csv(files["grid_csv"])) == 12


def test_bad_tuning_configs_are_named():
    with pytest.raises(ValueError, match="unknown methods \\['sftt'\\]"):
        TuningConfig(methods=("sftt",))
    with pytest.raises(ValueError, match="'beta' is no knob of 'exp_rw_sft'"):
        TuningConfig(methods=("exp_rw_sft",), knob_grid={"exp_rw_sft": ("beta", (0.1,))})
    with pytest.raises(ValueError, match="positive learning rates"):
        TuningConfig(lrs=(0.0,))
    with pytest.raises(ValueError, match="early_eval_until"):
        PostTrainConfig(early_eval_every=5)


@pytest.mark.integration
def test_the_tuning_job_runs_on_a_real_instance_and_store(tmp_path):
    import dagster as dg
    import mlflow
    import yaml

    from pipelines.definitions import defs

    job = defs.resolve_job_def("tuning_study_job")
    shipped = yaml.safe_load(open("pipelines/configs/tuning_study.yaml"))
    assert dg.validate_run_config(job, shipped)  # the YAML `make tune` passes is the job's schema
    world = {"n_users": 60, "n_items": 30, "dim": 4, "events_per_user": [4, 9]}
    config = {"source": "simulator", "simulator": world,
              "methods": ["sft", "grpo"], "lrs": [1e-3, 1e-2], "knob_values": {"grpo": [0.04]},
              "pretrain": {"epochs": 1, "d_model": 16, "n_layers": 1, "n_heads": 1, "max_len": 10},
              "ranker_epochs": 1, "steps": 4, "eval_every": 2, "early_eval_every": 1, "early_eval_until": 2,
              "batch_size": 16, "n_boot": 50}
    tracking_uri, resources = local_tracking_uri(tmp_path), local_resources(tmp_path)
    (tmp_path / "dagster").mkdir()
    from assets.studies import tuning_study

    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([tuning_study], instance=instance, resources=resources,
                                run_config={"ops": {"tuning_study": {"config": config}}})
    assert result.success
    record = result.output_for_node("tuning_study")
    assert set(record.chosen) == {"sft", "grpo"} and record.chosen["grpo"]["beta"] == 0.04
    assert record.chosen["sft"]["lr"] in (1e-3, 1e-2)
    assert "## Chosen settings" in open(record.files["md"]).read()
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.study = 'tuning'")
    # the pretrained policy, the ranker, 2 sft and 2 grpo grid points, and the study's own run
    assert len(runs) == 7 and all(r.info.status == "FINISHED" for r in runs)
    with pytest.raises(dg.Failure, match="knob_values.*'sft'"):
        dg.materialize([tuning_study], resources=resources,
                       run_config={"ops": {"tuning_study": {"config": {**config, "knob_values": {"sft": [1.0]}}}}})
