"""Does the cost grow linearly with the data? Time the chain's stages at 1x, 4x and 16x users; print JSON.

    python benchmarks/scaling.py [--sources movielens-100k simulator movielens-1m] [--scales 1 4 16]
        [--post-steps 20] [--out benchmarks/results/scaling.json]

For each data set and scale, in a fresh process (so that its peak RSS is its own): the raw logs with every
user copied `scale` times (MovieLens: user ids `<id>~<copy>`, the same items and timestamps; simulator:
`n_users` times `scale`, which also times the simulation), then
- `labels`: reward labeling, id mapping and the chronological split (`build_interactions`);
- `pretrain_prepare`: user sequences, training windows and valid examples;
- `pretrain_epoch`: one pretraining epoch over every window (library defaults), and the valid evaluation
  that ends it (every user's valid item ranked over the full catalog, history masked);
- `ranker_epoch`: the ranker reward model's data preparation, one epoch and its valid RMSE;
- `post_train_prepare` and `post_train_step`: exp_rw_sft's preparation (sequences, windows, the valid
  examples) and the mean time of `--post-steps` of its optimizer steps (a step is a batch: flat in the data).
Each stage reports seconds and seconds per 1,000 interactions (per 1,000 users for the evaluation); a
stage whose per-interaction cost rises with the scale is super-linear. `peak_rss_mib` is the process's
peak resident memory. Threads: torch's default unless `--threads`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SOURCES = ("movielens-100k", "simulator", "movielens-1m")
ROOT = Path(__file__).resolve().parents[1]


def scaled_logs(source: str, scale: int, cache_dir: Path):
    """The raw logs of `source` with `scale` times the users (see the module doc)."""
    from dataclasses import replace

    import pandas as pd

    from recmodels.data.sources import load_raw_logs
    from recmodels.data.simulator import SimulatorConfig

    if source == "simulator":
        return load_raw_logs("simulator", cache_dir=cache_dir,
                             simulator={"n_users": SimulatorConfig().n_users * scale})
    raw = load_raw_logs(source, cache_dir=cache_dir)
    if scale == 1:
        return raw
    copies = [raw.logs.assign(user_id=raw.logs["user_id"] + f"~{copy}") for copy in range(scale)]
    return replace(raw, logs=pd.concat(copies, ignore_index=True))


def measure(source: str, scale: int, post_steps: int, cache_dir: Path) -> dict:
    """The stages of one data set at one scale (module doc), in this process."""
    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.rewards import RewardSpec
    from recmodels.post_training.loop import PostTrainConfig, post_train, prepare_run
    from recmodels.training.pretraining import PretrainConfig, prepare_pretraining, pretrain_policy
    from recmodels.training.ranker_training import RankerTrainConfig, train_ranker

    stages = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        stages[name] = {"s": time.perf_counter() - start}
        return out

    raw = timed("raw_logs", lambda: scaled_logs(source, scale, cache_dir))
    data = timed("labels", lambda: build_interactions(raw, RewardSpec()))
    n = len(data.table)
    prepared = timed("pretrain_prepare", lambda: prepare_pretraining(data.table, data.n_items))
    row = (result := pretrain_policy(data.table, data.n_items, config=PretrainConfig(epochs=1))).history[0]
    train_s = prepared.n_windows / row["sequences_per_s"]  # the epoch's training, its evaluation excluded
    stages["pretrain_epoch"] = {"s": train_s}
    stages["valid_evaluation"] = {"s": row["seconds"] - train_s}
    timed("ranker_epoch", lambda: train_ranker(data.table, data.n_items, RankerTrainConfig(epochs=1)))
    config = PostTrainConfig(steps=post_steps, eval_every=post_steps, method_params={"lam": 1.0})
    timed("post_train_prepare", lambda: prepare_run("exp_rw_sft", result.policy, data.table, config))
    post = post_train("exp_rw_sft", result.policy, data.table, config)
    stages["post_train_step"] = {"s": post.train_seconds / post.steps}
    for name, stage in stages.items():
        if name == "post_train_step":
            continue
        per, unit = (data.n_users, "s_per_1k_users") if name == "valid_evaluation" else (n, "s_per_1k_interactions")
        stage[unit] = round(1000 * stage["s"] / per, 5)
    for stage in stages.values():
        stage["s"] = round(stage["s"], 3)
    return {"source": source, "scale": scale, "users": data.n_users, "items": data.n_items, "interactions": n,
            "policy": {k: v for k, v in vars(result.policy_config).items() if k != "vocab_size"},
            "stages": stages, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads()}


def growth(rows: list[dict]) -> dict:
    """Per data set and stage: cost per unit at the largest scale over the cost at 1x (1.0 = linear)."""
    out = {}
    for source in sorted({r["source"] for r in rows}):
        mine = sorted((r for r in rows if r["source"] == source), key=lambda r: r["scale"])
        if len(mine) < 2:
            continue
        first, last = mine[0], mine[-1]
        ratios = {}
        for name, stage in first["stages"].items():
            unit = next((k for k in stage if k.startswith("s_per")), None)
            base, top = (stage.get(unit), last["stages"][name].get(unit)) if unit else (stage["s"],
                                                                                         last["stages"][name]["s"])
            ratios[name] = round(top / base, 2) if base else None
        out[source] = {"scales": [first["scale"], last["scale"]], "per_unit_cost_ratio": ratios,
                       "peak_rss_ratio_over_interactions_ratio": round(
                           (last["peak_rss_mib"] / first["peak_rss_mib"])
                           / (last["interactions"] / first["interactions"]), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--post-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--cache-dir", default=str(ROOT / ".recalign" / "cache"))
    parser.add_argument("--one", nargs=2, metavar=("SOURCE", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.one:
        from recmodels.runtime import retain_freed_memory

        retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
        row = measure(args.one[0], int(args.one[1]), args.post_steps, Path(args.cache_dir))
        print(json.dumps({**row, "retains_freed_memory": retains_freed_memory}))
        return
    rows = []
    for source in args.sources:
        for scale in args.scales:
            command = [sys.executable, __file__, "--one", source, str(scale), "--post-steps", str(args.post_steps),
                       "--cache-dir", args.cache_dir] + (["--threads", str(args.threads)] if args.threads else [])
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{source} at {scale}x failed:\n{done.stderr[-4000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"benchmark": "scaling", "rows": rows, "growth": growth(rows), "cpu_count": os.cpu_count(),
              "python": platform.python_version()}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
