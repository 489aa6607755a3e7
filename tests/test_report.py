"""The evaluation report: intervals, paired differences, same-user check, training records, λ sweep, verdict,
skipped methods, Markdown, PNGs, JSON."""
import json
import struct

import numpy as np
import pytest

from recmodels.evaluation.metrics import METRIC_NAMES
from recmodels.evaluation.plots import plot_lambda_sweep, plot_report, plot_training_curves
from recmodels.evaluation.report import PolicyEvaluation, format_interval, build_report
from recmodels.evaluation.report_output import comparison_table, report_markdown, write_report

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


def test_atomic_policies_get_a_zero_hallucination_rate_and_the_frontier_its_points(report):
    for p in report["policies"].values():
        assert p["hallucination_rate"] == 0.0 and p["decoding"]["tokenization"] == "atomic"
        assert p["decoding"]["constrained"]["hr@10"] == pytest.approx(p["metrics"]["hr@10"]["mean"])
    assert [r["policy"] for r in report["hallucination_frontier"]] == ["pretrained"]  # no nll_grpo / adagrpo here


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
    assert set(files) == {"json", "md", "png", "lambda_png", "curves_png", "frontier_png"}
    assert files["frontier_png"].name == "hr10_vs_hallucination.png"
    assert json.loads(files["json"].read_text()) == report
    assert files["png"].read_bytes()[:8] == PNG_MAGIC
    assert "exp_rw_sft" in files["md"].read_text()
    assert not list((tmp_path / "out").glob("*.tmp"))


# --- post-trained policies: training records, λ sweep, verdict, skipped methods, figures -----------------------

SKIPPED = {"ips": "skipped: the logs carry no propensities"}


def _history(best_step: int, valid_at_best: float, kl_at_best: float, **telemetry) -> list[dict]:
    return [{"step": 0, "epoch": 0.0, "kl_to_reference": 0.0, "valid_ndcg@10": 0.1, "valid_hr@10": 0.2},
            *({"step": s, "epoch": s / 100, "loss": 3.0 - s / 100, **telemetry, "valid_hr@10": 0.3,
               "kl_to_reference": np.float32(kl_at_best if s == best_step else kl_at_best / 2),
               "valid_ndcg@10": valid_at_best if s == best_step else valid_at_best - 0.05} for s in (50, 100))]


def _post_trained(name, method, ranks, rewards, judged, params, best_step=100, valid=0.2, kl=0.1, **telemetry):
    return PolicyEvaluation(name, ranks, rewards, judged, method=method, extra={
        "params": params, "best_step": best_step, "history": _history(best_step, valid, kl, **telemetry)})


def _sweep_evals(n: int = 80):
    """Crafted: grpo ranks every test item first (largest NDCG@10 gain); exp_rw_sft λ=0.3 ranks liked items
    first and disliked ones lower (largest reward-weighted gain, best valid NDCG@10); ppo keeps the ranks but
    its lists get a much higher ranker score (reward hacking); adagrpo is at least as good as every nll_grpo α."""
    rng = np.random.default_rng(1)
    rewards = rng.choice([-1.0, -0.5, 0.5, 1.0], size=n)
    base = rng.integers(1, 40, size=n)
    judged = rng.normal(0.0, 0.3, size=n)
    liked = rewards > 0
    erw = dict(method="exp_rw_sft", rewards=rewards, judged=judged, ess=90.0)
    return [
        PolicyEvaluation("pretrained", base, rewards, judged),
        _post_trained("exp_rw_sft_lambda_3", ranks=base.copy(), params={"lam": 3.0}, valid=0.21, kl=0.05, **erw),
        _post_trained("exp_rw_sft", ranks=base.copy(), params={"lam": 1.0}, valid=0.22, kl=0.1, **erw),
        _post_trained("exp_rw_sft_lambda_0_3", ranks=np.where(liked, 1, base + 20), params={"lam": 0.3},
                      valid=0.30, kl=0.2, **erw),
        _post_trained("exp_rw_sft_lambda_0_1", ranks=base.copy(), params={}, valid=0.25, kl=0.5, **erw),
        _post_trained("dpo", "dpo", base.copy(), rewards, judged, {"beta": 0.1}, rollout_reward=0.1),
        _post_trained("ppo", "ppo", base.copy(), rewards, judged + 1.0, {"eps": 0.2, "beta": 0.05}),
        _post_trained("grpo", "grpo", np.ones(n, dtype=int), rewards, judged, {"group_size": 8}),
        _post_trained("nll_grpo_alpha_0_1", "nll_grpo", base.copy(), rewards, judged, {"alpha": 0.1}),
        _post_trained("nll_grpo_alpha_1", "nll_grpo", np.maximum(1, base - 2), rewards, judged, {"alpha": 1.0}),
        _post_trained("adagrpo", "adagrpo", np.maximum(1, base - 6), rewards, judged, {"alpha": 0.3, "tau_h": 0.5},
                      best_step=50, gate_open_rate=0.25, hard_rate=0.5, disc_rate=0.4, rollout_reward=0.2),
    ]


@pytest.fixture(scope="module")
def sweep_report():
    return build_report(_sweep_evals(), n_boot=200, skipped=SKIPPED)


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n\n", 1)[1].split("\n\n## ", 1)[0]


def _table_rows(section: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()[2:]]


def test_training_section_holds_the_selected_step(sweep_report):
    t = sweep_report["policies"]["adagrpo"]["training"]
    assert t["method"] == "adagrpo" and t["params"] == {"alpha": 0.3, "tau_h": 0.5} and t["best_step"] == 50
    assert t["at_best_step"]["step"] == 50 and t["at_best_step"]["gate_open_rate"] == 0.25
    assert [r["step"] for r in t["history"]] == [0, 50, 100]
    assert sweep_report["policies"]["pretrained"]["training"] is None


def test_skipped_methods_in_json_and_markdown(sweep_report):
    assert sweep_report["skipped"] == SKIPPED
    assert "`ips`: skipped: the logs carry no propensities" in _section(report_markdown(sweep_report),
                                                                        "Skipped methods")
    assert _section(report_markdown(build_report(_evals(), n_boot=50)), "Skipped methods") == "_none_"


def test_lambda_sweep_table_lists_lambda_in_order(sweep_report):
    assert [r["lambda"] for r in sweep_report["lambda_sweep"]] == [0.1, 0.3, 1.0, 3.0]  # 0.1 from the variants table
    rows = _table_rows(_section(report_markdown(sweep_report), "λ sweep of exp_rw_sft"))
    assert [(r[0], r[1], r[4]) for r in rows] == [("0.1", "exp_rw_sft_lambda_0_1", "0.5"),
                                                  ("0.3", "exp_rw_sft_lambda_0_3", "0.2"),
                                                  ("1", "exp_rw_sft", "0.1"), ("3", "exp_rw_sft_lambda_3", "0.05")]
    gain = sweep_report["policies"]["exp_rw_sft_lambda_0_3"]["diff_vs_baseline"]["reward_weighted_ndcg@10"]
    assert rows[1][2] == f"{gain['mean']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]" and gain["low"] > 0


def test_telemetry_table_shows_what_each_method_reports(sweep_report):
    rows = {r[0]: r for r in _table_rows(_section(report_markdown(sweep_report), "Training telemetry"))}
    assert "pretrained" not in rows and len(rows) == 10
    # policy, method, knobs, best step, KL, valid ndcg@10, ess, rollout_reward, gate_open_rate, hard_rate, disc_rate
    assert rows["adagrpo"][1:] == ["adagrpo", "α=0.3, τ_H=0.5", "50", "0.1", "0.2", "-", "0.2", "0.25", "0.5", "0.4"]
    assert rows["exp_rw_sft_lambda_0_3"][2:7] == ["λ=0.3", "100", "0.2", "0.3", "90"]
    assert rows["dpo"][6:] == ["-", "0.1", "-", "-", "-"]
    assert rows["exp_rw_sft_lambda_0_1"][2] == "λ=0.1"  # no params: λ read from the variants table


def test_signal_per_step_and_adagrpos_effective_alpha():
    rng = np.random.default_rng(2)
    ranks, rewards, judged = rng.integers(1, 40, size=30), rng.choice([-1.0, 1.0], size=30), np.zeros(30)
    report = build_report([
        PolicyEvaluation("pretrained", ranks, rewards, judged),
        _post_trained("sft", "sft", ranks, rewards, judged, {}, targets=5000.0, contexts=0.0, rollouts=0.0),
        _post_trained("nll_grpo_alpha_0_3", "nll_grpo", ranks, rewards, judged, {"alpha": 0.3}, targets=5000.0,
                      contexts=128.0, rollouts=1024.0),
        PolicyEvaluation("adagrpo", ranks, rewards, judged, method="adagrpo", extra={
            "params": {"alpha": 0.3}, "best_step": 50,
            "history": [{"step": 0, "valid_ndcg@10": 0.1},
                        {"step": 50, "valid_ndcg@10": 0.2, "gate_open_rate": 0.1, "contexts": 128.0},
                        {"step": 100, "valid_ndcg@10": 0.2, "gate_open_rate": 0.3, "contexts": 64.0}]}),
    ], n_boot=50)
    pols = report["policies"]
    assert pols["sft"]["training"]["signal_per_step"] == {"targets": 5000.0, "contexts": 0.0, "rollouts": 0.0}
    assert pols["sft"]["training"]["grpo_weight"] is None
    assert pols["nll_grpo_alpha_0_3"]["training"]["grpo_weight"] == pytest.approx(0.3)
    adagrpo = pols["adagrpo"]["training"]
    assert adagrpo["grpo_weight"] == pytest.approx(0.3 * 0.2)  # α x the mean gate-open rate over training
    assert adagrpo["signal_per_step"] == {"targets": None, "contexts": 96.0, "rollouts": None}  # step 0 excluded
    rows = {r[0]: r for r in _table_rows(_section(report_markdown(report), "Signal per step"))}
    assert rows["nll_grpo_alpha_0_3"][1:] == ["nll_grpo", "5000", "128", "1024", "0.3"]
    assert rows["adagrpo"][2:] == ["-", "96", "-", "0.06"] and "pretrained" not in rows


def test_verdict_names_the_winners(sweep_report):
    v = sweep_report["verdict"]
    assert _section(report_markdown(sweep_report), "Verdict") == " ".join(v)
    assert v[0].startswith("`grpo` has the largest paired NDCG@10 gain over `pretrained`")
    assert "excludes 0: a significant gain" in v[0]
    assert v[1].startswith("`exp_rw_sft_lambda_0_3` has the largest paired reward-weighted NDCG@10 gain")
    assert sweep_report["exp_rw_sft_best"] == {"policy": "exp_rw_sft_lambda_0_3", "lambda": 0.3,
                                               "selected_on": "valid NDCG@10"}
    vs = {s.split("`")[3]: s for s in v if s.startswith("`exp_rw_sft_lambda_0_3` (λ=0.3")}
    assert set(vs) == {"dpo", "ppo", "grpo"}  # one sentence per rival, in that order
    assert "trails `grpo` on NDCG@10" in vs["grpo"] and "beats `grpo` on reward-weighted NDCG@10" in vs["grpo"]
    assert "beats `dpo` on reward-weighted NDCG@10" in vs["dpo"]
    pols = sweep_report["policies"]
    a, b = (pols[n]["diff_vs_baseline"]["ndcg@10"]["mean"] for n in ("exp_rw_sft_lambda_0_3", "grpo"))
    assert f"({a - b:+.3f}: paired-diff means {a:+.3f} vs {b:+.3f}" in vs["grpo"]
    assert any(s.startswith("`adagrpo` beats every nll_grpo α on HR@10") and "(α=0.1)" in s and "(α=1)" in s
               for s in v)
    assert v[-1].startswith("Reward-hacking hint: `ppo`")


def test_verdict_is_honest_without_a_significant_gain():
    rng = np.random.default_rng(2)
    n = 60
    rewards, base = rng.choice([-1.0, 1.0], size=n), rng.integers(1, 30, size=n)
    swapped = base.reshape(-1, 2)[:, ::-1].reshape(-1)  # pairs of users trade ranks: no net change
    report = build_report([PolicyEvaluation("pretrained", base, rewards, np.zeros(n)),
                           PolicyEvaluation("sft", swapped, rewards, np.zeros(n), method="sft")], n_boot=200)
    assert "no significant difference" in report["verdict"][0] and "`sft`" in report["verdict"][0]
    assert len(report["verdict"]) == 2  # no exp_rw_sft, adagrpo or ranker-trained policy: those sentences skipped


def test_adagrpo_that_loses_to_an_alpha_does_not_beat_every_alpha():
    evals = [e for e in _sweep_evals() if e.name in ("pretrained", "nll_grpo_alpha_1", "adagrpo")]
    evals[1].ranks, evals[2].ranks = evals[2].ranks, evals[1].ranks
    text = " ".join(build_report(evals, n_boot=100)["verdict"])
    assert "`adagrpo` does not beat every nll_grpo α on HR@10" in text


def test_bad_training_record_and_skipped_rejected():
    evals = _sweep_evals()
    evals[-1].extra["best_step"] = 75
    with pytest.raises(ValueError, match="'adagrpo': best_step 75 is not a step of its history"):
        build_report(evals, n_boot=20)
    evals = _sweep_evals()
    evals[5].extra["history"] = [{"loss": 1.0}]
    with pytest.raises(ValueError, match="'dpo': extra\\['history'\\] must be a list of rows"):
        build_report(evals, n_boot=20)
    with pytest.raises(ValueError, match="'dpo' is listed as skipped"):
        build_report(_sweep_evals(), n_boot=20, skipped={"dpo": "no ranker"})


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_write_report_with_all_figures(sweep_report, tmp_path):
    files = write_report(sweep_report, tmp_path)
    assert json.loads(files["json"].read_text()) == sweep_report
    assert json.loads(json.dumps(sweep_report, allow_nan=False)) == sweep_report
    assert "## Verdict" in files["md"].read_text() and "Reward-hacking hint" in files["md"].read_text()
    message = _png_size(plot_lambda_sweep(build_report(_evals(), n_boot=50), tmp_path / "empty_sweep.png"))
    assert message == _png_size(plot_training_curves(build_report(_evals(), n_boot=50), tmp_path / "no_curves.png"))
    for key in ("png", "lambda_png", "curves_png"):
        assert _png_size(files[key]) != message  # a real plot, not the "nothing to draw" figure
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# --- both protocols: masked (primary) and unmasked (RecBole-comparable) -------------------------------------------

def _evals_with_unmasked(n: int = 60):
    """_evals() with unmasked ranks: pretrained's seen items push every target 3 places down (4 history items in
    each top 10 on average); sft's never outscore its targets; exp_rw_sft has no unmasked evaluation."""
    evals = _evals(n)
    evals[0].ranks_unmasked = evals[0].ranks + 3
    evals[0].seen_in_top10_unmasked = np.arange(n) % 5 * 2  # 0, 2, 4, 6, 8, 0, ...: mean 4.0
    evals[1].ranks_unmasked = evals[1].ranks.copy()
    evals[1].seen_in_top10_unmasked = np.zeros(n, dtype=int)
    return evals


@pytest.fixture(scope="module")
def both_report():
    return build_report(_evals_with_unmasked(), n_boot=200)


def test_report_json_has_the_unmasked_block_beside_the_masked_one(both_report, report, tmp_path):
    pols = both_report["policies"]
    base = _evals_with_unmasked()[0]
    unmasked = pols["pretrained"]["unmasked"]["metrics"]  # shaped as the masked block, pols[...]["metrics"]
    assert set(unmasked) == set(METRIC_NAMES)
    assert unmasked["hr@10"]["mean"] == pytest.approx(np.mean(base.ranks + 3 <= 10))
    assert unmasked["hr@10"]["mean"] < pols["pretrained"]["metrics"]["hr@10"]["mean"]
    assert unmasked["mrr@20"]["mean"] == pytest.approx(np.mean(np.where(base.ranks + 3 <= 20, 1 / (base.ranks + 3), 0)))
    assert all(iv["low"] <= iv["mean"] <= iv["high"] for iv in unmasked.values())
    assert pols["pretrained"]["seen_in_top10_unmasked"]["mean"] == pytest.approx(4.0)
    no_seen_item_wins = {m: pols["sft"]["metrics"][m] for m in METRIC_NAMES}
    assert pols["sft"]["unmasked"]["metrics"] == no_seen_item_wins
    assert pols["sft"]["seen_in_top10_unmasked"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert pols["exp_rw_sft"]["unmasked"] is None and pols["exp_rw_sft"]["seen_in_top10_unmasked"] is None
    for name, p in pols.items():  # the masked (primary) block is the same with or without unmasked ranks
        assert p["metrics"] == report["policies"][name]["metrics"]
    on_disk = json.loads(write_report(both_report, tmp_path)["json"].read_text())
    assert set(on_disk["protocols"]) == {"masked", "unmasked", "split"}
    assert "history items excluded" in on_disk["protocols"]["masked"]
    assert "RecBole" in on_disk["protocols"]["unmasked"] and "leave-one-out" in on_disk["protocols"]["split"]
    assert on_disk["policies"]["pretrained"]["unmasked"] == {"metrics": unmasked}


def test_markdown_accuracy_table_has_the_unmasked_columns(both_report):
    md = report_markdown(both_report)
    table = _section(md, "Accuracy").split("\n\n")[-1]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[:2 + len(both_report["metrics"])] == ["policy", "method", *both_report["metrics"]]  # masked first
    assert header[-3:] == ["hr@10 unmasked (RecBole-comparable)", "ndcg@10 unmasked (RecBole-comparable)",
                           "history items in unmasked top-10"]
    rows = {r[0]: r for r in _table_rows(table)}
    unmasked = both_report["policies"]["pretrained"]["unmasked"]["metrics"]
    assert rows["pretrained"][-3] == format_interval(unmasked["hr@10"]) and rows["pretrained"][-2] == format_interval(unmasked["ndcg@10"])
    assert rows["pretrained"][-1].startswith("4.000 [")
    assert rows["exp_rw_sft"][-3:] == ["-", "-", "-"]
    assert "- unmasked: full ranking over the catalog, history items included" in md
    df = comparison_table(both_report)
    assert df.loc[0, "hr@10_unmasked"] == pytest.approx(unmasked["hr@10"]["mean"])
    assert df.loc[0, "seen_in_top10_unmasked"] == pytest.approx(4.0)
