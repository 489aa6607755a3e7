"""Data-parallel pretraining under torchrun (gloo, 2 CPU processes): the loss curve follows the one-process run
of the same global batch, the checkpoint loads in one process, and the asset trains through Dagster Pipes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from assets.data import interactions, raw_logs
from assets.item_tokens import item_tokens
from assets.model_runs import POLICY_MODEL, registered_model_name
from assets.models import pretrained_policy
from assets.torchrun import torchrun_command
from recmodels.data.sequences import build_user_sequences, eval_examples
from recmodels.evaluation.metrics import ndcg
from recmodels.evaluation.ranking import target_ranks
from recmodels.models.policy import PolicyConfig
from recmodels.storage.model_io import load_policy
from recmodels.training.distributed import job_spec
from recmodels.training.pretraining import PretrainConfig, pretrain_policy
from tests.local_stores import local_resources, local_tracking_uri
from tests.synthetic import cyclic_interactions, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 40
TINY = PolicyConfig(vocab_size=N_ITEMS + 1, max_len=8, d_model=16, n_layers=1, n_heads=1, dropout=0.0)
# 60 users x 12 train events -> 120 windows; a global batch of 17 leaves a last batch of one window, so one
# process has an empty share there and joins the all-reduce with zero gradients.
TRAIN = PretrainConfig(epochs=6, batch_size=17, lr=1e-2, weight_decay=0.01, patience=6, seed=5)
# Per-epoch train losses of the 2-process run vs the 1-process run. They are not bit-identical: each process sums
# the NLL of its half of the batch and DDP averages the two gradients, where one process reduces the whole batch
# at once, so float32 sums are taken in another order and the rounding differs (~1e-7 relative per step), which
# the following steps carry along. Seen: ~1e-7 relative after 6 epochs; allowed: 1e-4.
LOSS_RTOL = 1e-4


def torchrun(nproc: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    df = cyclic_interactions(n_users=60, n_items=N_ITEMS, events=14, rewards=(1.0, 0.0), seed=2)
    df.to_parquet(tmp / "interactions.parquet", index=False)
    spec = job_spec(tmp / "interactions.parquet", N_ITEMS, "atomic", TRAIN, TINY, tmp / "policy.pt")
    (tmp / "job.json").write_text(json.dumps(spec))
    done = torchrun(2, "-m", "recmodels.training.distributed", "--spec", str(tmp / "job.json"),
                    "--out", str(tmp / "result.json"))
    return df, tmp, json.loads((tmp / "result.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def one_process_run(two_process_run):
    """The same data, config and global batch in this process (one thread, see conftest)."""
    return pretrain_policy(two_process_run[0], N_ITEMS, TINY, TRAIN, device="cpu")


def test_two_processes_follow_the_one_process_loss_curve_of_the_same_global_batch(two_process_run,
                                                                                  one_process_run):
    _, _, ddp, stdout = two_process_run
    single = one_process_run
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    ddp_losses = [row["train_loss"] for row in ddp["history"]]
    single_losses = [row["train_loss"] for row in single.history]
    assert len(ddp_losses) == len(single_losses) == TRAIN.epochs
    np.testing.assert_allclose(ddp_losses, single_losses, rtol=LOSS_RTOL)
    assert ddp_losses[-1] < 0.7 * ddp_losses[0]  # it learns
    printed = [json.loads(line)["epoch"] for line in stdout.splitlines()]
    assert printed == list(range(1, TRAIN.epochs + 1))  # the callback ran in rank 0 only
    assert ddp["best_epoch"] == single.best_epoch
    assert ddp["best_valid_ndcg10"] == pytest.approx(single.best_valid_ndcg10, abs=1e-6)


def test_the_lead_process_checkpoint_loads_and_scores_in_one_process(two_process_run, one_process_run):
    df, tmp, ddp, _ = two_process_run
    policy = load_policy(tmp / "policy.pt")  # {state_dict, config} of the unwrapped policy: no "module." prefix
    single = one_process_run.policy
    ddp_weights, single_weights = policy.state_dict(), single.state_dict()
    # The key bias (middle third of qkv.bias) adds the same q.b_k to every score of a query: softmax cancels it, so
    # its true gradient is 0 and what it gets is rounding noise, which AdamW scales up to lr-sized steps. It differs
    # between the two runs and changes no output (the logits are compared below): leave it out.
    d = TINY.d_model
    for weights in (ddp_weights, single_weights):
        bias = weights.pop("blocks.0.attn.qkv.bias")
        weights["query and value bias"] = torch.cat([bias[:d], bias[2 * d:]])
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    valid = eval_examples(build_user_sequences(df), "valid", TINY.max_len)
    with torch.no_grad():
        torch.testing.assert_close(policy.next_item_logits(valid.history), single.next_item_logits(valid.history),
                                   rtol=1e-4, atol=1e-4)
    assert float(ndcg(target_ranks(policy, valid), 10).mean()) == pytest.approx(ddp["best_valid_ndcg10"], abs=1e-6)


def test_the_torchrun_command_of_one_node_and_of_several():
    one = {"nproc_per_node": 2, "nnodes": 1, "rdzv_endpoint": None, "rdzv_id": None}
    assert torchrun_command(one, "pretraining", "pretrained_policy")[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "assets" / "training_worker.py"), "pretraining"]
    several = {**one, "nnodes": 3, "rdzv_endpoint": "node0:29400"}
    assert torchrun_command(several, "pretraining", "pretrained_policy")[3:-2] == [
        "--nnodes", "3", "--rdzv_backend", "c10d", "--rdzv_endpoint", "node0:29400",
        "--rdzv_id", "recalign-pretrained_policy", "--nproc_per_node", "2"]
    named = torchrun_command({**several, "rdzv_id": "nightly-7"}, "post_training", "post_trained_sft")
    assert named[named.index("--rdzv_id") + 1] == "nightly-7" and named[-1] == "post_training"


@pytest.mark.integration
def test_the_asset_trains_in_two_processes_through_dagster_pipes(tmp_path):
    logs, catalog = write_synthetic_dataset(tmp_path / "data", n_users=40, n_items=30, seed=4)
    ops = {"raw_logs": {"config": {"path": str(logs), "catalog_path": str(catalog)}},
           "item_tokens": {"config": {"n_levels": 2, "codebook_size": 4, "svd_dim": 8, "seed": 1}},
           "pretrained_policy": {"config": {"epochs": 3, "d_model": 16, "n_heads": 1, "n_layers": 1, "max_len": 10,
                                            "batch_size": 32, "nproc_per_node": 2}}}
    tracking_uri, resources = local_tracking_uri(tmp_path), local_resources(tmp_path)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = dg.materialize([raw_logs, interactions, item_tokens, pretrained_policy], instance=instance,
                                resources=resources, run_config={"ops": ops}, partition_key="file")
        logs_text = " ".join(e.message or "" for e in instance.all_logs(result.run_id))
    assert result.success
    record = result.output_for_node("pretrained_policy")
    assert record.epochs == 3 and 1 <= record.best_epoch <= 3 and record.sequences_per_s > 0
    assert record.registered_model == registered_model_name(POLICY_MODEL, record.dataset)
    assert record.model_version == "1" and record.tokenization == "atomic" and record.semantic_ids is None
    policy = load_policy(record.checkpoint)
    assert policy.cfg.d_model == 16
    (materialization,) = result.asset_materializations_for_node("pretrained_policy")
    meta = materialization.metadata
    assert meta["world_size"].value == 2 and meta["ddp_backend"].value == "gloo"
    assert meta["best_epoch"].value == record.best_epoch and "history" in meta
    assert "data-parallel pretraining: 2 processes" in logs_text and "epoch 3: train_loss=" in logs_text

    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(record.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["nproc_per_node"] == "2"
    losses = client.get_metric_history(record.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2, 3]
    assert {m.step for m in client.get_metric_history(record.mlflow_run_id, "valid_ndcg_at_10")} == {1, 2, 3}
    assert max(m.value for m in client.get_metric_history(record.mlflow_run_id, "valid_ndcg_at_10")) == \
        pytest.approx(record.best_valid_ndcg10)
