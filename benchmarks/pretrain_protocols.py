"""Pretrain the atomic policy on one data set and print its test accuracy under both protocols as JSON.

    python benchmarks/pretrain_protocols.py --dataset movielens-1m [--epochs 100] [--max-len 50] [--device cuda]
        [--nproc-per-node 2] [--set seen_bias=true --set lr=0.002 ...] [--out result.json]

`--set NAME=VALUE` overrides one field of `PretrainConfig` or `PolicyConfig` (an experiment: one change at a
time against the defaults); the JSON names every override.

The library's defaults (`PretrainConfig`, `PolicyConfig`), early stopping on valid NDCG@10 (masked),
then the test split ranked once over the full catalog: masked (history excluded, the project's
primary protocol, and the one of the HSTU repository's tables) and unmasked (history included,
RecBole's protocol for sequential models), HR@10 / NDCG@10 with 95% bootstrap intervals, and the
mean number of already-seen items in the unmasked top 10, and the MFU of a training step (`mfu.py`).
Runs on CUDA when present. `--nproc-per-node N` (N > 1) pretrains data-parallel instead, as the chain's
`pretrained_policy` does with that config: `torchrun --nproc_per_node N -m recmodels.training.distributed` on a
job spec, the cores shared among the processes (`OMP_NUM_THREADS`), then ranks the lead's checkpoint here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = ("movielens-100k", "movielens-1m")


def accuracy(ranks) -> dict:
    """HR@10 / NDCG@10 as {"mean", "low", "high"} (95% bootstrap interval over users)."""
    from recmodels.evaluation.metrics import bootstrap_ci, hit_rate, ndcg

    out = {}
    for name, values in (("hr@10", hit_rate(ranks, 10)), ("ndcg@10", ndcg(ranks, 10))):
        mean, low, high = bootstrap_ci(values)
        out[name] = {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4)}
    return out


def curve(history: list[dict]) -> list[dict]:
    """Per epoch: valid NDCG@10 (masked, where evaluated) and the seconds of training and evaluation so far."""
    rows, elapsed = [], 0.0
    for row in history:
        elapsed += row["seconds"]
        rows.append({"epoch": row["epoch"], "valid_ndcg@10": round(row["valid_ndcg@10"], 4)
                     if "valid_ndcg@10" in row else None, "elapsed_s": round(elapsed, 1)})
    return rows


def named_value(pair: str) -> tuple[str, object]:
    """`NAME=VALUE` -> (name, value), the value parsed as JSON when it can be (`true`, `0.2`, `256`), else text."""
    name, _, text = pair.partition("=")
    try:
        return name, json.loads(text)
    except json.JSONDecodeError:
        return name, text


def semantic_overrides(pairs: list[str]) -> dict:
    """`NAME=VALUE` pairs (`--semantic-set`) -> SemanticPolicyConfig fields (not `level_sizes`, `n_items`: the codebook
    sets those; not `max_len`: both tokenizations share it)."""
    from dataclasses import fields

    from recmodels.models.semantic_policy import SemanticPolicyConfig

    names = {f.name for f in fields(SemanticPolicyConfig)} - {"level_sizes", "n_items", "max_len"}
    chosen = dict(named_value(pair) for pair in pairs)
    unknown = sorted(set(chosen) - names)
    if unknown:
        raise SystemExit(f"--semantic-set: {unknown} are no fields of SemanticPolicyConfig (choose from {sorted(names)})")
    return chosen


def overrides(pairs: list[str]) -> tuple[dict, dict]:
    """`NAME=VALUE` pairs -> (PretrainConfig fields, PolicyConfig fields)."""
    from dataclasses import fields

    from recmodels.models.policy import PolicyConfig
    from recmodels.training.pretraining import PretrainConfig

    train_names = {f.name for f in fields(PretrainConfig)}
    policy_names = {f.name for f in fields(PolicyConfig)} - {"vocab_size", "max_len"}
    train, policy = {}, {}
    for pair in pairs:
        name, value = named_value(pair)
        if name in policy_names:
            policy[name] = value
        elif name in train_names - {"max_len"}:
            train[name] = value
        else:
            raise SystemExit(f"--set {pair}: {name!r} is no field of PretrainConfig or PolicyConfig "
                             f"(use --max-len for the window length)")
    return train, policy


def pretrain_data_parallel(table, n_items: int, policy_config, config, nproc: int):
    """Pretrain in `nproc` torchrun processes on this machine's cores; return (the `PretrainResult`, with the lead's
    checkpoint loaded on the CPU, and the torch threads of each process)."""
    from recmodels.runtime import threads_per_process
    from recmodels.storage.model_io import load_policy
    from recmodels.training.distributed import job_spec
    from recmodels.training.pretraining import PretrainResult

    threads = threads_per_process(nproc)
    with tempfile.TemporaryDirectory(prefix="pretrain-protocols-") as tmp:
        table.to_parquet(Path(tmp, "interactions.parquet"), index=False)
        spec = job_spec(Path(tmp, "interactions.parquet"), n_items, "atomic", config, policy_config,
                        Path(tmp, "policy.pt"))
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   "-m", "recmodels.training.distributed", "--spec", str(Path(tmp, "spec.json")),
                   "--out", str(Path(tmp, "summary.json"))]
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads(Path(tmp, "summary.json").read_text())
        policy = load_policy(Path(tmp, "policy.pt"))
    return PretrainResult(policy=policy, policy_config=policy.cfg, history=summary["history"],
                          best_epoch=summary["best_epoch"], best_valid_ndcg10=summary["best_valid_ndcg10"]), threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="movielens-100k")
    parser.add_argument("--epochs", type=int, default=None, help="epochs cap (default: the library's)")
    parser.add_argument("--max-len", type=int, default=None, help="window length (default: the library's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a PretrainConfig or PolicyConfig field (repeatable)")
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="data-parallel processes (torchrun; default 1: this process)")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".recalign" / "cache"))
    args = parser.parse_args()

    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs
    from recmodels.evaluation.ranking import rank_catalog
    from recmodels.models.policy import PolicyConfig
    from recmodels.training.pretraining import PretrainConfig, prepare_pretraining, pretrain_policy
    from recmodels.runtime import default_device, retain_freed_memory
    from recmodels.data.sequences import build_user_sequences, eval_examples

    device = torch.device(args.device) if args.device else default_device()
    retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
    data = build_interactions(load_raw_logs(args.dataset, cache_dir=Path(args.cache_dir)), RewardSpec())
    train_set, policy_set = overrides(args.set)
    config = PretrainConfig(**({"epochs": args.epochs} if args.epochs else {}), **train_set)
    policy_config = PolicyConfig(vocab_size=data.n_items + 1, **({"max_len": args.max_len} if args.max_len else {}),
                                 **policy_set)
    start = time.perf_counter()
    if args.nproc_per_node > 1:
        result, threads = pretrain_data_parallel(data.table, data.n_items, policy_config, config, args.nproc_per_node)
    else:
        result = pretrain_policy(data.table, data.n_items, policy_config=policy_config, config=config, device=device)
        threads = torch.get_num_threads()
    seconds = time.perf_counter() - start
    from mfu import training_step_mfu  # beside this file

    windows = prepare_pretraining(data.table, data.n_items, result.policy_config, config)
    mfu = training_step_mfu(result.policy, windows.tokens[:config.batch_size], windows.targets[:config.batch_size],
                            device)
    seqs = build_user_sequences(data.table)
    valid = rank_catalog(result.policy, eval_examples(seqs, "valid", result.policy_config.max_len), device=device)
    ranking = rank_catalog(result.policy, eval_examples(seqs, "test", result.policy_config.max_len), device=device)
    report = {
        "dataset": args.dataset, "users": data.n_users, "items": data.n_items, "overrides": args.set,
        "split": "test, chronological leave-one-out", "ranking": "full catalog, ties broken at random",
        "test_masked": accuracy(ranking.ranks), "test_unmasked": accuracy(ranking.ranks_unmasked),
        "valid_masked": accuracy(valid.ranks), "valid_unmasked": accuracy(valid.ranks_unmasked),
        "seen_in_top10_unmasked": round(float(ranking.seen_in_top10_unmasked.mean()), 2),
        "best_valid_ndcg@10_masked": round(result.best_valid_ndcg10, 4), "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "epochs_cap": config.epochs, "max_len": result.policy_config.max_len,
        "pretrain_s": round(seconds, 1), "training_step_mfu": mfu,
        "windows_per_s": round(sum(h["sequences_per_s"] for h in result.history) / len(result.history), 1),
        "curve": curve(result.history),
        "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "nproc_per_node": args.nproc_per_node,
        "threads_per_process": threads,
        "retains_freed_memory": retains_freed_memory,
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
    }
    if result.policy.seen_bias_logit is not None:
        report["seen_bias_logit"] = round(result.policy.seen_bias_logit, 3)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
