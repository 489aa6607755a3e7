"""The studies: cross-data-set summary tables, the robustness findings, the robustness study on a tiny
world (one shared pretraining), the comparison's skips and bad-config errors, and one real Dagster
materialization of `robustness_study` logging to a real MLflow sqlite store."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from recmodels.data.interactions import build_interactions
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import RawLogs
from recmodels.post_training.loop import PostTrainConfig
from recmodels.training.ranker_training import RankerTrainConfig
from recmodels.studies.comparison import ComparisonConfig, Variant, method_variants, run_comparison
from recmodels.studies.cross_dataset import summary_markdown, summary_records, summary_table
from recmodels.studies.findings import claim_adagrpo, claim_exp_rw_sft, robustness_findings
from recmodels.studies.robustness import RobustnessConfig, run_robustness_study
from recmodels.studies.robustness_report import write_robustness
from tests.synthetic import make_synthetic_logs

TINY_MODELS = dict(pretrain=dict(epochs=1, d_model=16, n_layers=1, n_heads=1, max_len=10, batch_size=32),
                   ranker=RankerTrainConfig(epochs=1, batch_size=64),
                   post_train=PostTrainConfig(steps=2, eval_every=1, batch_size=16), n_boot=50)
TINY_WORLD = dict(n_users=60, n_items=30, dim=4, events_per_user=(4, 9))


# --- cross-data-set summary ---------------------------------------------------------------------

def iv(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


def hand_report(policies: dict, skipped=None, metrics=("ndcg@10",), n_users=100) -> dict:
    return {"metrics": list(metrics), "n_users": n_users, "skipped": skipped or {},
            "policies": {name: {"method": None if name == "pretrained" else name,
                                "metrics": {m: iv(*values[m]) for m in metrics},
                                "diff_vs_baseline": {m: iv(values[m][0] - 0.1, -0.01, 0.02) for m in metrics}}
                         for name, values in policies.items()}}


@pytest.fixture
def reports():
    return {
        "movielens-100k": hand_report({"pretrained": {"ndcg@10": (0.109, 0.093, 0.125)},
                                       "grpo": {"ndcg@10": (0.111, 0.095, 0.1274)}},
                                      skipped={"ips": "skipped: the logs carry no propensities"}),
        "simulator": hand_report({"pretrained": {"ndcg@10": (0.2, 0.18, 0.22), "true_top10": (0.05, 0.04, 0.06)},
                                  "ips": {"ndcg@10": (0.21, 0.19, 0.23), "true_top10": (0.07, 0.06, 0.08)}},
                                 metrics=("ndcg@10", "true_top10")),
    }


def test_summary_table_has_methods_as_rows_and_data_sets_as_columns(reports):
    table = summary_table(reports)
    assert list(table.columns) == ["method", "movielens-100k", "simulator"]
    assert list(table["method"]) == ["pretrained", "grpo", "ips"]  # baseline first, then first appearance
    cells = table.set_index("method")
    assert cells.at["pretrained", "movielens-100k"] == "0.109 [0.093, 0.125]"
    assert cells.at["grpo", "movielens-100k"] == "0.111 [0.095, 0.127]"
    assert cells.at["ips", "movielens-100k"] == "skipped"  # skipped there, with its reason below the table
    assert cells.at["grpo", "simulator"] == "-"  # not in that comparison at all
    diff = summary_table(reports, section="diff_vs_baseline").set_index("method")
    assert diff.at["ips", "simulator"] == "+0.110 [-0.010, +0.020]"
    assert "pretrained" not in diff.index  # no difference of the baseline with itself


def test_summary_rows_follow_the_configured_variant_order(reports):
    for report in reports.values():
        report["variants"] = ["ips", "grpo"]  # as run_comparison records them, skipped ones included
    assert list(summary_table(reports)["method"]) == ["pretrained", "ips", "grpo"]
    assert list(summary_table(reports, "true_top10")["method"]) == ["pretrained", "ips", "grpo"]


def test_true_reward_table_only_has_the_simulated_data_set(reports):
    table = summary_table(reports, "true_top10")
    assert list(table.columns) == ["method", "simulator"]
    assert table.set_index("method").at["ips", "simulator"] == "0.070 [0.060, 0.080]"
    markdown = summary_markdown(reports)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("|")]
    assert ["method", "movielens-100k", "simulator"] in rows
    assert ["ips", "skipped", "0.210 [0.190, 0.230]"] in rows
    assert "## True top-10 reward" in markdown and ["method", "simulator"] in rows
    assert "movielens-100k: `ips`: skipped: the logs carry no propensities" in markdown
    records = summary_records(reports)
    skipped = records[(records["dataset"] == "movielens-100k") & (records["method"] == "ips")]
    assert skipped["skipped"].tolist() == ["skipped: the logs carry no propensities"]
    assert len(records[records["dataset"] == "simulator"]) == 4  # 2 methods x 2 metrics


def test_summary_table_rejects_an_unknown_section(reports):
    with pytest.raises(ValueError, match="section must be 'metrics' or 'diff_vs_baseline', got 'mean'"):
        summary_table(reports, section="mean")


# --- findings -------------------------------------------------------------------------------------

LEVELS = (0.1, 1.0)


def tidy_row(noise, variant, method, gain, lam=np.nan, selected=False):
    """A tidy-table row whose true top-10 gain interval is gain +- 0.01."""
    return {"noise": noise, "variant": variant, "method": method, "lambda": lam, "selected_lambda": selected,
            "true_top10_diff": gain, "true_top10_diff_low": gain - 0.01, "true_top10_diff_high": gain + 0.01,
            "hacking_gap_top10_diff": 0.0, "hacking_gap_top10_diff_low": -0.01, "hacking_gap_top10_diff_high": 0.01}


def hand_tables(exp_gain: float, exp_vs_rival: float, ada_vs_nll: float, nll_hr: float = 0.2):
    rows, h2h = [], []
    for noise in LEVELS:
        rows += [tidy_row(noise, "exp_rw_sft_lambda_0_3", "exp_rw_sft", exp_gain / 2, 0.3),
                 tidy_row(noise, "exp_rw_sft_lambda_1", "exp_rw_sft", exp_gain, 1.0, selected=True)]
        rows += [tidy_row(noise, m, m, 0.0) for m in ("ppo", "dpo", "grpo", "adagrpo", "nll_grpo")]
        h2h += [{"noise": noise, "a": "exp_rw_sft_lambda_1", "b": m, "metric": "true_top10", "diff": exp_vs_rival,
                 "diff_low": exp_vs_rival - 0.01, "diff_high": exp_vs_rival + 0.01} for m in ("ppo", "dpo", "grpo")]
        h2h.append({"noise": noise, "a": "adagrpo", "b": "nll_grpo", "metric": "hr@10", "diff": ada_vs_nll,
                    "diff_low": ada_vs_nll - 0.005, "diff_high": ada_vs_nll + 0.005, "b_mean": nll_hr,
                    "relative": ada_vs_nll / nll_hr, "relative_low": (ada_vs_nll - 0.005) / nll_hr,
                    "relative_high": (ada_vs_nll + 0.005) / nll_hr})
    return pd.DataFrame(rows), pd.DataFrame(h2h)


def test_findings_say_the_claims_held_when_every_criterion_is_met():
    table, h2h = hand_tables(exp_gain=0.05, exp_vs_rival=0.03, ada_vs_nll=0.02)  # HR@10 +10% relative
    findings = robustness_findings(table, h2h)
    assert findings[0].startswith("Claim 1 (exp_rw_sft is robust") and ": held on this data" in findings[0]
    assert "significantly at 2 of 2 noise levels" in findings[0]
    assert "vs `ppo` it won at 2 of 2 levels and lost at 0 (noise 1: +0.030 [+0.020, +0.040])" in findings[0]
    assert "+0.030 [+0.020, +0.040]" in findings[0]
    assert findings[1].startswith("Claim 2") and ": held on this data" in findings[1]
    assert "+10.0% [+7.5%, +12.5%]" in findings[1]
    assert any("`exp_rw_sft_lambda_1` improved the true top-10 reward over the pretrained policy significantly "
               "at 2 of 2 noise levels (noise 0.1, 1)" in s for s in findings)
    assert any(s.startswith("λ trade-off") and "λ=1 (+0.050)" in s for s in findings)


def test_findings_say_the_claims_did_not_hold_when_no_criterion_is_met():
    table, h2h = hand_tables(exp_gain=0.0, exp_vs_rival=-0.03, ada_vs_nll=0.0)
    findings = robustness_findings(table, h2h)
    assert ": did not hold on this data" in findings[0] and "significantly at 0 of 2 noise levels" in findings[0]
    assert "vs `grpo` it won at 0 of 2 levels and lost at 2" in findings[0]
    assert ": did not hold on this data" in findings[1] and "met in 0 of 2 comparisons" in findings[1]


def test_a_significant_but_small_adagrpo_gain_does_not_support_the_ten_percent_claim():
    _, h2h = hand_tables(exp_gain=0.05, exp_vs_rival=0.03, ada_vs_nll=0.008)  # significant, +4% relative
    assert ": did not hold on this data" in claim_adagrpo(h2h)
    table, h2h = hand_tables(exp_gain=0.05, exp_vs_rival=0.03, ada_vs_nll=0.02)
    mixed = h2h[~((h2h["metric"] == "true_top10") & (h2h["b"] == "dpo") & (h2h["noise"] == 1.0))]
    mixed = pd.concat([mixed, pd.DataFrame([{"noise": 1.0, "a": "exp_rw_sft_lambda_1", "b": "dpo",
                                             "metric": "true_top10", "diff": -0.03, "diff_low": -0.04,
                                             "diff_high": -0.02}])])
    assert ": partly held on this data" in claim_exp_rw_sft(table, mixed)


def test_claims_without_the_methods_to_judge_them_say_so():
    table, h2h = hand_tables(exp_gain=0.05, exp_vs_rival=0.03, ada_vs_nll=0.02)
    assert "cannot be judged" in claim_adagrpo(h2h[h2h["metric"] != "hr@10"])
    assert "cannot be judged" in claim_exp_rw_sft(table[table["method"] != "exp_rw_sft"], h2h)


# --- the robustness study on a tiny world ----------------------------------------------------------

def tiny_study(**overrides) -> RobustnessConfig:
    settings = dict(simulator=TINY_WORLD, noise_levels=(0.1, 0.8), lambdas=(1.0,), methods=("grpo",), **TINY_MODELS)
    return RobustnessConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def tiny_result():
    events = []
    result = run_robustness_study(tiny_study(), events.append)
    return result, events


def test_robustness_study_has_a_row_per_noise_level_and_variant(tiny_result):
    result, _ = tiny_result
    table = result.table
    assert sorted(zip(table["noise"], table["variant"])) == [
        (0.1, "exp_rw_sft_lambda_1"), (0.1, "grpo"), (0.8, "exp_rw_sft_lambda_1"), (0.8, "grpo")]
    for col in ("true_top10_diff", "ndcg@10_diff", "hacking_gap_top10_diff"):
        assert (table[f"{col}_low"] <= table[col]).all() and (table[col] <= table[f"{col}_high"]).all()
    assert table["selected_lambda"].sum() == 2  # one exp_rw_sft variant selected per level
    assert result.findings[0].startswith("Claim 1") and result.findings[1].startswith("Claim 2")


def test_robustness_study_pretrains_once_for_every_noise_level(tiny_result):
    result, events = tiny_result
    started = [e for e in events if e["event"] == "model_started"]
    pretrained = [e for e in started if e["role"] == "pretrained_policy"]
    assert result.pretraining_runs == 1 and len(pretrained) == 1
    assert pretrained[0]["dataset"] == "simulator-robustness" and pretrained[0]["noise_levels"] == [0.1, 0.8]
    rankers = sorted(e["dataset"] for e in started if e["role"] == "ranker")
    assert rankers == ["simulator-robustness-noise-0.1", "simulator-robustness-noise-0.8"]
    assert {e["study"] for e in events} == {"robustness"}
    # the same pretrained policy is every level's baseline
    assert result.table.groupby("noise")["pretrained_true_top10"].first().nunique() == 1


def test_no_policy_beats_the_oracles_best_list(tiny_result):
    result, _ = tiny_result
    for noise, report in result.reports.items():
        best = report["oracle_best_top10_true"]
        assert all(p["metrics"]["true_top10"]["mean"] <= best + 1e-9 for p in report["policies"].values()), noise


def test_sharing_pretraining_changes_no_number(tiny_result):
    shared, _ = tiny_result
    separate = run_robustness_study(tiny_study(share_pretraining=False))
    assert separate.pretraining_runs == 2
    pd.testing.assert_frame_equal(separate.table, shared.table)


def test_tuned_robustness_study_compares_each_method_at_the_setting_valid_chose(tmp_path):
    post_train = PostTrainConfig(steps=4, eval_every=4, early_eval_every=2, early_eval_until=2, batch_size=16)
    result = run_robustness_study(tiny_study(lambdas=(0.3, 3.0), lrs=(1e-4, 1e-2), post_train=post_train))
    grid = result.grids
    # every level searched the same grid: 2 lrs x 2 λ for exp_rw_sft, 2 lrs x 3 β for grpo
    assert sorted(grid.groupby("noise").size().tolist()) == [10, 10]
    assert {"true_top10_diff", "hacking_gap_top10_diff", "kl_to_reference"} <= set(grid.columns)
    for noise, level in grid.groupby("noise"):
        report = result.reports[noise]
        for method, rows in level.groupby("method"):
            best = rows.loc[rows["valid_ndcg@10"].idxmax()]
            assert report["chosen"][method]["variant"] == best["variant"]  # chosen on valid, never on test
            # the level's table reports the chosen grid point under the method's name
            row = result.table[(result.table["noise"] == noise) & (result.table["variant"] == method)].iloc[0]
            assert row["true_top10_diff"] == pytest.approx(best["true_top10_diff"])
    assert sorted(result.table["variant"].unique()) == ["exp_rw_sft", "grpo"]
    assert result.table["selected_lambda"].sum() == 2 and result.pretraining_runs == 1
    files = write_robustness(result, tmp_path)
    saved = pd.read_csv(files["grid_csv"])
    assert list(saved.columns) == list(grid.columns) and len(saved) == len(grid)
    np.testing.assert_allclose(saved["true_top10_diff"], grid["true_top10_diff"])
    text = Path(files["md"]).read_text()
    assert "tuned protocol" in text and "## Settings valid chose" in text


def test_the_tuned_robustness_config_is_the_jobs_schema():
    from pipelines.definitions import defs

    shipped = yaml.safe_load(open("pipelines/configs/robustness_study_tuned.yaml"))
    assert dg.validate_run_config(defs.resolve_job_def("robustness_study_job"), shipped)
    from assets.studies import RobustnessStudyConfig

    study = RobustnessStudyConfig(**shipped["ops"]["robustness_study"]["config"]).to_library()
    assert study.lrs and study.post_train.early_eval_every == 5
    with pytest.raises(dg.Failure, match="either 'lr'.*or 'lrs'"):
        RobustnessStudyConfig(lr=1e-3, lrs=[1e-4]).to_library()


@pytest.mark.parametrize("override, message", [
    ({"simulator": {"noise": 0.5}}, r"must not set \['noise'\]: use noise_levels"),
    ({"noise_levels": (0.1, -0.2)}, r"noise_levels must be >= 0, got \[-0.2\]"),
    ({"noise_levels": (0.3, 0.3)}, "repeated levels"),
    ({"simulator": {"n_userz": 5}}, r"unknown settings \['n_userz'\]"),
    ({"noise_kind": "cauchy"}, "noise_kind must be one of"),
    ({"lambdas": (0.0,)}, r"lambdas must be > 0"),
])
def test_bad_robustness_config_is_rejected_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        tiny_study(**override)


# --- the comparison -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"pretrain": {"epochz": 3}}, r"ComparisonConfig.pretrain: unknown settings \['epochz'\]"),
    ({"variants": [("a", "sft", {}), ("a", "grpo", {})]}, r"names must be unique, \['a'\] repeat"),
    ({"variants": [("x", "reinforce", {})]}, "variant 'x': unknown post-training method 'reinforce'"),
    ({"variants": [("x", "exp_rw_sft", {"temperature": 2})]}, "variant 'x': unknown parameter 'temperature'"),
    ({"post_train": PostTrainConfig(method_params={"lam": 1.0})}, "method_params must be empty"),
])
def test_bad_comparison_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ComparisonConfig(**kwargs)


def test_method_variants_name_each_knob():
    names = [v.name for v in method_variants(("exp_rw_sft", "ppo"), lambdas=(0.3, 1.0), nll_grpo_alphas=(0.1,))]
    assert names == ["exp_rw_sft_lambda_0_3", "exp_rw_sft_lambda_1", "nll_grpo_alpha_0_1", "ppo"]


def test_comparison_skips_ips_on_logs_without_propensities():
    raw = RawLogs("synthetic", make_synthetic_logs(n_users=40, n_items=20, seed=2), None, "digest")
    inter = build_interactions(raw, RewardSpec())
    events = []
    config = ComparisonConfig(**TINY_MODELS, variants=[Variant("ips", "ips"), Variant("sft", "sft")])
    result = run_comparison(inter.table, inter.n_items, inter.catalog, config=config, callback=events.append,
                            dataset="synthetic")
    assert result.skipped == {"ips": "skipped: the logs carry no propensities"}
    assert list(result.report["policies"]) == ["pretrained", "sft"]
    assert result.report["skipped"] == result.skipped and "true_top10" not in result.report["metrics"]
    assert [e["model"] for e in events if e["event"] == "model_skipped"] == ["ips"]
    finished = {e["model"]: e for e in events if e["event"] == "model_finished"}
    assert set(finished) == {"pretrained", "ranker", "sft"}
    assert all(e["dataset"] == "synthetic" for e in events)
    assert all(isinstance(e["row"], dict) for e in events if e["event"] == "history")


# --- Dagster + MLflow -----------------------------------------------------------------------------

@pytest.mark.integration
def test_robustness_study_materializes_with_an_mlflow_experiment_per_data_set(tmp_path):
    from mlflow import MlflowClient

    from assets.resources import MlflowTracking, RecalignHome
    from assets.studies import robustness_study

    config = {"noise_levels": [0.1, 0.8], "lambdas": [1.0], "methods": ["grpo"], "simulator": TINY_WORLD,
              "pretrain_epochs": 1, "pretrain": {"d_model": 16, "n_layers": 1, "n_heads": 1, "max_len": 10},
              "ranker_epochs": 1, "steps": 2, "eval_every": 1, "batch_size": 16, "n_boot": 50}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {"home": RecalignHome(root=str(tmp_path / "home")),
                 "mlflow": MlflowTracking(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts"))}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([robustness_study], instance=instance, resources=resources,
                                run_config={"ops": {"robustness_study": {"config": config}}})
    assert result.success
    record = result.output_for_node("robustness_study")
    assert record.pretraining_runs == 1
    table = json.loads(Path(record.files["table_json"]).read_text())
    assert len(table) == 4 and Path(record.files["noise_png"]).read_bytes()[:4] == b"\x89PNG"
    assert "## Findings" in Path(record.files["md"]).read_text()
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert "Claim 1" in metadata["findings"].value and metadata["mlflow_model_runs"].value == 1 + 2 * 3

    client = MlflowClient(uri)
    runs_of = {}
    for name in ("simulator-robustness", "simulator-robustness-noise-0.1", "simulator-robustness-noise-0.8"):
        experiment = client.get_experiment_by_name(f"recalign/{name}")
        assert experiment is not None, name
        runs_of[name] = client.search_runs([experiment.experiment_id])
    shared = {r.data.tags["model"] for r in runs_of["simulator-robustness"]}
    assert shared == {"pretrained", "robustness_study"}  # the shared pretrained policy and the study's report
    level = runs_of["simulator-robustness-noise-0.8"]
    assert {r.data.tags["model"] for r in level} == {"ranker", "exp_rw_sft_lambda_1", "grpo"}
    assert {r.data.tags["noise"] for r in level} == {"0.8"}
    assert all(r.data.tags["dagster_run_id"] == result.run_id for r in level)
    grpo = next(r for r in level if r.data.tags["model"] == "grpo")
    assert "valid_ndcg_at_10" in grpo.data.metrics and grpo.data.params["method"] == "grpo"
    assert [a.path for a in client.list_artifacts(grpo.info.run_id, "checkpoint")] == ["checkpoint/grpo.pt"]
