"""The evaluation report: intervals, paired differences, same-user check, Markdown, PNG, JSON."""
import json

import numpy as np
import pytest

from recmodels.evaluation.metrics import METRIC_NAMES
from recmodels.evaluation.report import (PolicyEvaluation, build_report, comparison_table, plot_report,
                                         report_markdown, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _evals(n: int = 60):
    rng = np.random.default_rng(0)
    rewards = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=n)
    base = rng.integers(1, 40, size=n)
    better = np.maximum(1, base - 5)
    return [
        PolicyEvaluation("pretrained", base, rewards, rng.random(n)),
        PolicyEvaluation("sft", better, rewards, rng.random(n), method="sft", extra={"best_step": np.int64(50)}),
        PolicyEvaluation("exp_rw_sft", base.copy(), rewards, rng.random(n), method="exp_rw_sft"),
    ]


@pytest.fixture(scope="module")
def report():
    return build_report(_evals(), n_boot=200)


def test_report_has_intervals_and_paired_diffs(report):
    assert report["n_users"] == 60 and report["baseline"] == "pretrained"
    for p in report["policies"].values():
        for m in METRIC_NAMES:
            iv = p["metrics"][m]
            assert iv["low"] <= iv["mean"] <= iv["high"]
            assert m in p["diff_vs_baseline"]
        assert set(p["reward_alignment"]) >= {"hr@10_liked", "hr@10_disliked", "n_liked", "n_disliked"}
    base = report["policies"]["pretrained"]["diff_vs_baseline"]
    same = report["policies"]["exp_rw_sft"]["diff_vs_baseline"]  # identical ranks to the baseline
    for m in METRIC_NAMES:
        assert base[m] == same[m] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    # every rank of sft is at least as good, so no difference can be negative
    assert all(v["low"] >= 0 for k, v in report["policies"]["sft"]["diff_vs_baseline"].items() if k in METRIC_NAMES)
    assert report["policies"]["sft"]["diff_vs_baseline"]["hr@20"]["mean"] > 0


def test_report_metric_means_match_direct_computation(report):
    ev = _evals()[1]
    assert report["policies"]["sft"]["metrics"]["hr@10"]["mean"] == pytest.approx(np.mean(ev.ranks <= 10))
    assert report["policies"]["sft"]["ranker_top10_score"]["mean"] == pytest.approx(ev.ranker_top10_score.mean())


def test_report_json_round_trips(report):
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert report["policies"]["sft"]["extra"] == {"best_step": 50}


def test_mismatched_users_rejected():
    evals = _evals()
    evals[1] = PolicyEvaluation("sft", evals[1].ranks[:-1], evals[1].target_rewards[:-1],
                                evals[1].ranker_top10_score[:-1])
    with pytest.raises(ValueError, match="same users"):
        build_report(evals)
    evals = _evals()
    evals[2].target_rewards = evals[2].target_rewards[::-1].copy()
    with pytest.raises(ValueError, match="same users"):
        build_report(evals)


def test_missing_baseline_and_duplicate_names_rejected():
    with pytest.raises(ValueError, match="baseline policy 'nope'"):
        build_report(_evals(), baseline="nope")
    evals = _evals()
    evals[2].name = "sft"
    with pytest.raises(ValueError, match="unique"):
        build_report(evals)


def test_markdown_names_every_policy_and_metric(report):
    md = report_markdown(report)
    for name in ("pretrained", "sft", "exp_rw_sft"):
        assert name in md
    for m in METRIC_NAMES:
        assert m in md
    assert "Paired difference vs `pretrained`" in md and "hr@10 liked" in md and "Protocol" in md
    sft_ci = report["policies"]["sft"]["metrics"]["ndcg@10"]
    assert f"{sft_ci['mean']:.3f} [{sft_ci['low']:.3f}, {sft_ci['high']:.3f}]" in md


def test_comparison_table_rows(report):
    df = comparison_table(report)
    assert df["policy"].tolist() == ["pretrained", "sft", "exp_rw_sft"]
    assert {"ndcg@10", "hr@10", "ndcg@10_diff", "ranker_top10_score"} <= set(df.columns)
    assert df.loc[0, "ndcg@10_diff"] == 0.0


def test_plot_and_write_report(report, tmp_path):
    png = plot_report(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    files = write_report(report, tmp_path / "out")
    assert set(files) == {"json", "md", "png"}
    assert json.loads(files["json"].read_text()) == report
    assert files["png"].read_bytes()[:8] == PNG_MAGIC
    assert "exp_rw_sft" in files["md"].read_text()
    assert not list((tmp_path / "out").glob("*.tmp"))
