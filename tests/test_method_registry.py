"""One method spec and one variants table drive the assets, the report and the studies; knobs are pydantic models
that reject a bad key or value naming the method and the knob."""
import dagster as dg
import numpy as np
import pandas as pd
import pytest
from pydantic import ConfigDict, Field

from assets.post_training import VARIANTS as ASSET_VARIANTS
from assets.post_training import post_trained_assets
from pipelines.definitions import defs
from recmodels.evaluation.report import PolicyEvaluation, build_report, shown_knobs
from recmodels.post_training import registry
from recmodels.post_training.knobs import MethodKnobs
from recmodels.post_training.registry import METHODS, PostTrainingMethod, Sweep, get_method
from recmodels.post_training.sft import sft_loss
from recmodels.post_training.variants import VARIANTS, variants_table
from recmodels.studies.comparison import ComparisonConfig, default_variants
from recmodels.studies.findings import claim_exp_rw_sft
from recmodels.studies.robustness import RobustnessConfig

CHAIN_VARIANTS = ["sft", "exp_rw_sft", "ips", "dpo", "ppo", "grpo", "adagrpo",
                  "exp_rw_sft_lambda_0_1", "exp_rw_sft_lambda_0_3", "exp_rw_sft_lambda_3",
                  "nll_grpo_alpha_0_1", "nll_grpo_alpha_0_3", "nll_grpo_alpha_1"]


# --- the variants table drives the assets --------------------------------------------------------------------

def test_the_variants_table_keeps_the_chain_names_order_and_knobs():
    assert list(VARIANTS) == CHAIN_VARIANTS and ASSET_VARIANTS is VARIANTS
    assert {n: (v.method, dict(v.method_params)) for n, v in VARIANTS.items() if v.method_params} == {
        "exp_rw_sft_lambda_0_1": ("exp_rw_sft", {"lam": 0.1}), "exp_rw_sft_lambda_0_3": ("exp_rw_sft", {"lam": 0.3}),
        "exp_rw_sft_lambda_3": ("exp_rw_sft", {"lam": 3.0}), "nll_grpo_alpha_0_1": ("nll_grpo", {"alpha": 0.1}),
        "nll_grpo_alpha_0_3": ("nll_grpo", {"alpha": 0.3}), "nll_grpo_alpha_1": ("nll_grpo", {"alpha": 1.0})}
    for v in VARIANTS.values():  # every variant's knobs are valid knobs of its method
        get_method(v.method).parse_params(v.method_params)


def test_every_variant_has_an_asset_with_its_method_and_knobs():
    graph = defs.resolve_asset_graph()
    for name, variant in VARIANTS.items():
        node = graph.get(dg.AssetKey(f"post_trained_{name}"))
        assert node.tags["method"] == variant.method
        assert f"`{variant.method}` {dict(variant.method_params) or '(default knobs)'}" in node.description


# --- a method registered once shows up in the assets, the report and the studies ---------------------------

class ForgetParams(MethodKnobs):
    model_config = ConfigDict(title="forget")

    gamma: float = Field(1.0, gt=0, title="γ")


FORGET = PostTrainingMethod("forget", ForgetParams, sft_loss, family="rlhf", key_knobs=("gamma",),
                            sweep=Sweep("gamma", "gamma", (0.5,)))


@pytest.fixture
def forget(monkeypatch):
    """A test method registered with one line: an "rlhf"-family method (a rival of exp_rw_sft) swept over γ."""
    monkeypatch.setitem(METHODS, "forget", FORGET)
    return FORGET


def test_a_registered_method_gets_its_assets(forget):
    table = variants_table()
    assert list(table) == [*CHAIN_VARIANTS[:7], "forget", *CHAIN_VARIANTS[7:], "forget_gamma_0_5"]
    assert dict(table["forget_gamma_0_5"].method_params) == {"gamma": 0.5}
    assets = {a.key.to_user_string(): a for a in post_trained_assets(table)}
    assert {"post_trained_forget", "post_trained_forget_gamma_0_5"} <= set(assets)
    assert assets["post_trained_forget_gamma_0_5"].tags_by_key[dg.AssetKey("post_trained_forget_gamma_0_5")][
        "method"] == "forget"


def _policy(name, method, ranks, rewards, params=None):
    extra = {} if params is None else {"params": params, "best_step": 1, "history": [{"step": 1}]}
    return PolicyEvaluation(name, ranks, rewards, np.zeros(len(ranks)), method=method, extra=extra)


def test_a_registered_method_gets_its_place_in_the_report(forget):
    rng = np.random.default_rng(0)
    rewards, base = rng.choice([-1.0, 1.0], size=40), rng.integers(1, 30, size=40)
    evals = [_policy("pretrained", None, base, rewards),
             _policy("exp_rw_sft", "exp_rw_sft", np.maximum(1, base - 3), rewards, {"lam": 1.0}),
             _policy("forget_gamma_0_5", "forget", base.copy(), rewards, {})]
    report = build_report(evals, n_boot=20)
    rivals = {r["b"] for r in report["head_to_head"] if r["a"] == "exp_rw_sft"}
    assert rivals == {"forget_gamma_0_5"}  # its family makes it a rival of exp_rw_sft
    assert any("`forget_gamma_0_5`" in s and s.startswith("`exp_rw_sft` (λ=1") for s in report["verdict"])
    assert shown_knobs("forget_gamma_0_5", "forget", {}) == {"γ": 0.5}  # no params: the variants table's knobs
    assert shown_knobs("forget_gamma_0_5", "forget", {"gamma": 2.0}) == {"γ": 2.0}  # the record wins


def test_a_registered_method_gets_its_place_in_the_studies(forget):
    assert "forget" in [v.name for v in ComparisonConfig().variants]
    assert "forget" in RobustnessConfig(noise_levels=(0.1,)).methods  # a rival: the robustness study's claim 1
    table = pd.DataFrame([{"noise": 0.1, "variant": "exp_rw_sft_lambda_1", "method": "exp_rw_sft", "lambda": 1.0,
                           "selected_lambda": True, "true_top10_diff_low": 0.01}])
    h2h = pd.DataFrame(columns=["noise", "a", "b", "metric", "diff", "diff_low", "diff_high"])
    assert "(dpo, ppo, grpo, forget not in the study)" in claim_exp_rw_sft(table, h2h)


def test_the_studies_select_from_the_registry_with_a_sweep_override():
    names = [v.name for v in default_variants()]
    assert names[:4] == ["exp_rw_sft_lambda_0_3", "exp_rw_sft_lambda_1", "exp_rw_sft_lambda_3", "nll_grpo_alpha_0_3"]
    assert names[4:] == [m for m in METHODS if m not in ("exp_rw_sft", "nll_grpo")]
    assert RobustnessConfig(noise_levels=(0.1,)).methods == registry.methods_of_family("rlhf", "nll_plus_rl")


# --- knobs are validated by their pydantic model ---------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_unknown_knobs_are_rejected_naming_the_method(method):
    with pytest.raises(ValueError, match=rf"unknown parameter 'bogus' for post-training method '{method}'"):
        get_method(method).parse_params({"bogus": 1})
    assert get_method(method).parse_params({}) == METHODS[method].params_cls()


@pytest.mark.parametrize("method, knobs, knob", [
    ("exp_rw_sft", {"lam": float("inf")}, "lam"), ("exp_rw_sft", {"w_max": 0.0}, "w_max"),
    ("exp_rw_sft", {"baseline": "yes"}, "baseline"), ("ips", {"c": -1.0}, "c"), ("dpo", {"beta": 0}, "beta"),
    ("ppo", {"eps": 1.0}, "eps"), ("ppo", {"inner_epochs": 1.5}, "inner_epochs"), ("grpo", {"dropout": 1}, "dropout"),
    ("nll_grpo", {"alpha": -0.1}, "alpha"), ("adagrpo", {"tau_H": float("nan")}, "tau_H"),
    ("adagrpo", {"hard": "loss"}, "hard"),
])
def test_out_of_range_knobs_are_rejected_naming_the_method_and_the_knob(method, knobs, knob):
    with pytest.raises(ValueError, match=rf"^parameter '{knob}' of post-training method '{method}': Input should"):
        get_method(method).parse_params(knobs)


def test_aliases_set_their_knob_once():
    assert get_method("adagrpo").parse_params({"tau_H": 0.2, "G": 4}).model_dump()["tau_h"] == 0.2
    with pytest.raises(ValueError, match="parameter 'group_size' of post-training method 'grpo' is given twice"):
        get_method("grpo").parse_params({"group_size": 4, "G": 4})
    with pytest.raises(ValueError, match="unknown parameter 'invalid_reward' for post-training method 'grpo'"):
        get_method("grpo").parse_params({"invalid_reward": -2.0})  # it is the reward spec's lower bound now
