"""Data-parallel post-training of the NLL-type methods under torchrun (gloo, 2 CPU processes): the loss curve and
the valid selection follow the one-process run of the same global batch, the lead's checkpoint loads in one
process, the ranker-driven methods are refused, and every NLL-type method's target weights are its loss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from assets.data import interactions, raw_logs
from assets.item_tokens import item_tokens
from assets.models import pretrained_policy, ranker_reward_model
from assets.post_training import post_trained_policies
from assets.resources import MlflowTracking, RecalignHome

from recmodels.data.sequences import build_user_sequences, eval_examples, training_windows
from recmodels.evaluation.metrics import ndcg
from recmodels.evaluation.ranking import target_ranks
from recmodels.models.policy import PolicyConfig
from recmodels.post_training.distributed import job_spec, post_train_distributed
from recmodels.post_training.loop import MethodContext, PostTrainConfig, post_train
from recmodels.post_training.registry import METHODS, data_parallel_methods, get_method
from recmodels.post_training.sft import target_nll, weighted_nll
from recmodels.storage.checkpoints import save_checkpoint
from recmodels.storage.model_io import load_policy
from recmodels.training.pretraining import PretrainConfig, pretrain_policy
from tests.synthetic import cyclic_interactions, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 40
TINY = PolicyConfig(vocab_size=N_ITEMS + 1, max_len=8, d_model=16, n_layers=1, n_heads=1, dropout=0.0)
# 60 users x 12 train events -> 120 windows; a global batch of 17 cuts each batch into shares of 9 and 8 windows
# and leaves a last batch of one window, where one process has an empty share.
TRAIN = PostTrainConfig(steps=14, batch_size=17, lr=3e-3, eval_every=4, seed=3, max_len=8,
                        method_params={"lam": 0.3})
# As for data-parallel pretraining (test_distributed_pretraining.py): the two processes sum their halves and DDP
# averages the gradients, so float32 sums are taken in another order (~1e-7 relative per step).
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def logs_and_policy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_post")
    df = cyclic_interactions(n_users=60, n_items=N_ITEMS, events=14, rewards=(1.0, -1.0, 0.0), seed=2,
                             propensity=True)
    df.to_parquet(tmp / "interactions.parquet", index=False)
    pretrained = pretrain_policy(df, N_ITEMS, TINY, PretrainConfig(epochs=2, batch_size=32, seed=1),
                                 device="cpu").policy
    save_checkpoint(tmp / "pretrained.pt", pretrained, pretrained.cfg)
    return df, tmp, pretrained


@pytest.fixture(scope="module")
def two_process_run(logs_and_policy):
    df, tmp, _ = logs_and_policy
    spec = job_spec("exp_rw_sft", tmp / "interactions.parquet", tmp / "pretrained.pt", TRAIN, tmp / "post.pt")
    (tmp / "job.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "recmodels.post_training.distributed", "--spec", str(tmp / "job.json"),
               "--out", str(tmp / "result.json")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((tmp / "result.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def one_process_run(logs_and_policy):
    df, _, pretrained = logs_and_policy
    return post_train("exp_rw_sft", pretrained, df, TRAIN, device="cpu")


def test_two_processes_follow_the_one_process_run_of_the_same_global_batch(two_process_run, one_process_run):
    ddp, stdout = two_process_run
    single = one_process_run
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["steps"] == single.steps == TRAIN.steps
    assert [row["step"] for row in ddp["history"]] == [row["step"] for row in single.history] == [0, 4, 8, 12, 14]
    ddp_losses = [row["loss"] for row in ddp["history"][1:]]
    single_losses = [row["loss"] for row in single.history[1:]]
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=LOSS_RTOL)
    np.testing.assert_allclose([row["nll"] for row in ddp["history"][1:]],
                               [row["nll"] for row in single.history[1:]], rtol=LOSS_RTOL)
    np.testing.assert_allclose([row["valid_ndcg@10"] for row in ddp["history"]],
                               [row["valid_ndcg@10"] for row in single.history], atol=1e-6)
    assert single.history[-1]["kl_to_reference"] > 1e-3  # it trained away from the start
    assert ddp["best_step"] == single.best_step and ddp["params"] == single.params
    printed = [json.loads(line)["step"] for line in stdout.splitlines()]
    assert printed == [0, 4, 8, 12, 14]  # the callback ran in the lead only


def test_the_lead_process_checkpoint_loads_and_scores_in_one_process(logs_and_policy, two_process_run,
                                                                     one_process_run):
    df, tmp, _ = logs_and_policy
    policy = load_policy(tmp / "post.pt")  # {state_dict, config} of the unwrapped policy
    single = one_process_run.policy
    valid = eval_examples(build_user_sequences(df), "valid", TINY.max_len)
    with torch.no_grad():
        torch.testing.assert_close(policy.next_item_logits(valid.history), single.next_item_logits(valid.history),
                                   rtol=1e-4, atol=1e-4)
    ranks = target_ranks(policy, valid)
    assert float(ndcg(ranks, 10).mean()) == pytest.approx(two_process_run[0]["best_valid_ndcg10"], abs=1e-6)


def test_only_the_nll_type_methods_train_data_parallel():
    assert data_parallel_methods() == ("sft", "exp_rw_sft", "ips")
    with pytest.raises(ValueError, match=r"'grpo' does not train data-parallel.*\['sft', 'exp_rw_sft', 'ips'\]"):
        post_train_distributed("grpo", None, None, PostTrainConfig())


@pytest.mark.parametrize("method", data_parallel_methods())
def test_the_target_weights_are_the_methods_loss(logs_and_policy, method):
    """What the data-parallel step computes from the weights, sum_i w_i NLL_i / total, is the method's own loss."""
    df, _, pretrained = logs_and_policy
    windows = training_windows(build_user_sequences(df), TINY.max_len)
    batch = replace(windows, **{f: getattr(windows, f)[:23] for f in ("users", "inputs", "targets", "rewards",
                                                                      "propensities")})
    spec = get_method(method)
    params = spec.parse_params({"lam": 0.3} if method == "exp_rw_sft" else {})
    state = spec.prepare(params, df) if spec.prepare else {}
    ctx = MethodContext(params=params, reference=pretrained, ranker=None, state=state, device=torch.device("cpu"),
                        generator=torch.Generator())
    loss, _ = METHODS[method].loss(pretrained, batch, ctx)
    nll, mask = target_nll(pretrained, batch)
    w, total = spec.target_weights(batch, ctx)
    assert w.shape == (int(mask.sum()),) and not w.requires_grad
    assert loss.item() == pytest.approx(weighted_nll(nll[mask], w, total).item(), rel=1e-6)
    if method != "sft":
        assert w.std() > 0  # the rewards weigh the targets differently


def _materialize_post_training(tmp_path: Path, variants: dict[str, dict]) -> tuple[dg.ExecuteInProcessResult, str]:
    """raw_logs -> ... -> the given post_trained_<variant> assets (with their configs) on a small synthetic file,
    in a real Dagster instance and MLflow store; the run's result and its log text."""
    logs, catalog = write_synthetic_dataset(tmp_path / "data", n_users=40, n_items=30, seed=4)
    ops = {"raw_logs": {"config": {"path": str(logs), "catalog_path": str(catalog)}},
           "pretrained_policy": {"config": {"epochs": 2, "d_model": 16, "n_heads": 1, "n_layers": 1, "max_len": 10,
                                            "batch_size": 32}},
           "ranker_reward_model": {"config": {"epochs": 1, "batch_size": 64}},
           **{f"post_trained_{v}": {"config": cfg} for v, cfg in variants.items()}}
    selected = [a for a in post_trained_policies if a.key.to_user_string().removeprefix("post_trained_") in variants]
    resources = {"home": RecalignHome(root=str(tmp_path / "home")),
                 "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                          artifact_root=str(tmp_path / "artifacts"))}
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([raw_logs, interactions, item_tokens, pretrained_policy, ranker_reward_model,
                                 *selected], instance=instance, resources=resources, run_config={"ops": ops},
                                partition_key="file", raise_on_error=False)
        logs_text = " ".join(e.message or "" for e in instance.all_logs(result.run_id))
    return result, logs_text


@pytest.mark.integration
def test_an_nll_type_variant_trains_in_two_processes_through_dagster_pipes(tmp_path):
    config = {"steps": 6, "eval_every": 3, "batch_size": 16, "nproc_per_node": 2}
    result, logs_text = _materialize_post_training(tmp_path, {"exp_rw_sft_lambda_0_3": config})
    assert result.success
    record = result.output_for_node("post_trained_exp_rw_sft_lambda_0_3")
    assert record.steps == 6 and [row["step"] for row in record.history] == [0, 3, 6]
    assert record.best_step in (3, 6) and record.params["lam"] == 0.3
    assert record.model_version == "1" and load_policy(record.checkpoint).cfg.d_model == 16
    (materialization,) = result.asset_materializations_for_node("post_trained_exp_rw_sft_lambda_0_3")
    meta = materialization.metadata
    assert meta["world_size"].value == 2 and meta["ddp_backend"].value == "gloo"
    assert meta["best_step"].value == record.best_step
    assert "data-parallel post-training: 2 processes" in logs_text and "step 6: loss=" in logs_text

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(record.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["nproc_per_node"] == "2"
    assert {m.step for m in client.get_metric_history(record.mlflow_run_id, "valid_ndcg_at_10")} == {0, 3, 6}


@pytest.mark.integration
def test_a_ranker_driven_variant_given_two_processes_fails_naming_the_methods_that_can(tmp_path):
    result, _ = _materialize_post_training(tmp_path, {"grpo": {"steps": 2, "batch_size": 16, "nproc_per_node": 2}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "post_trained_grpo config 'nproc_per_node'/'nnodes': method 'grpo' does not train data-parallel" in message
    assert "['sft', 'exp_rw_sft', 'ips']" in message
    assert not result.asset_materializations_for_node("post_trained_grpo")


@pytest.mark.integration
def test_a_method_that_cannot_run_on_these_logs_is_skipped_in_two_processes_as_in_one(tmp_path):
    result, logs_text = _materialize_post_training(tmp_path, {"ips": {"steps": 2, "batch_size": 16,
                                                                      "nproc_per_node": 2}})
    assert result.success
    record = result.output_for_node("post_trained_ips")
    assert record.skipped == "skipped: the logs carry no propensities" and record.checkpoint is None
    assert "data-parallel post-training: 2 processes" in logs_text
