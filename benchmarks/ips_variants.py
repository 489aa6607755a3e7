"""IPS with negative rewards dropped (the default) vs kept as signed weights (design §4 as written), on simulated
logs whose oracle knows each item's true reward; JSON on stdout.

    python benchmarks/ips_variants.py [--users 3000 --items 1500] [--seed 0] [--steps 200]

One comparison (`recmodels.studies.comparison.run_comparison`: the pretrained policy early-stopped on
valid, the ranker, then every variant with the same budget and selection on valid NDCG@10) with the
variants `sft` (the "just more training" control), `ips` (w = min(max(r, 0)/p, c)) and `ips_signed`
(w = clip(r/p, -c, c), normalized by the total |w|). Per policy, on the test split: NDCG@10 and HR@10
(masked history, full ranking) and the oracle's true top-10 reward, each with its 95% bootstrap interval
and the paired difference vs the pretrained policy; the step valid selection picked. The simulator's
logging policy records each shown item's propensity; its defaults are those of the `simulator` partition.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = (("sft", "sft", {}), ("ips", "ips", {}), ("ips_signed", "ips", {"signed": True}))


def interval(values: dict) -> list[float]:
    return [round(values["mean"], 4), round(values["low"], 4), round(values["high"], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=None, help="simulated users (default: the simulator's)")
    parser.add_argument("--items", type=int, default=None, help="simulated items (default: the simulator's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="post-training steps of every variant")
    parser.add_argument("--eval-every", type=int, default=25)
    args = parser.parse_args()

    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.oracle import Oracle
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs
    from recmodels.post_training.loop import PostTrainConfig
    from recmodels.studies.comparison import ComparisonConfig, Variant, run_comparison

    settings = {k: v for k, v in (("n_users", args.users), ("n_items", args.items), ("seed", args.seed))
                if v is not None}
    raw = load_raw_logs("simulator", cache_dir=None, simulator=settings)
    inter = build_interactions(raw, RewardSpec())
    config = ComparisonConfig(post_train=PostTrainConfig(steps=args.steps, eval_every=args.eval_every),
                              variants=tuple(Variant(*v) for v in VARIANTS), seed=args.seed)
    start = time.perf_counter()
    result = run_comparison(inter.table, inter.n_items, inter.catalog, Oracle.from_dict(raw.oracle), config,
                            dataset="simulator")
    seconds = time.perf_counter() - start
    report = result.report
    policies = {}
    for name, policy in report["policies"].items():
        row = {m: interval(policy["metrics"][m]) for m in ("ndcg@10", "hr@10", "true_top10")}
        row |= {f"{m}_diff_vs_pretrained": interval(policy["diff_vs_baseline"][m]) for m in ("ndcg@10", "true_top10")
                if name != "pretrained"}
        if name in result.post_trained:
            row["best_step"] = result.post_trained[name].best_step
        policies[name] = row
    print(json.dumps({
        "benchmark": "ips_variants", "command": "python benchmarks/ips_variants.py " + " ".join(sys.argv[1:]),
        "protocol": "test split (leave-one-out), full ranking, history masked; true_top10: the oracle's mean true "
                    "reward of the top-10 list; [mean, 95% bootstrap low, high] over test users",
        "data": {"source": "simulator", "settings": settings, "users": inter.n_users, "items": inter.n_items,
                 "events": len(inter.table),
                 "negative_reward_share": round(float((inter.table["reward"] < 0).mean()), 4)},
        "budget": {"steps": args.steps, "eval_every": args.eval_every},
        "policies": policies, "oracle_best_top10_true": round(report.get("oracle_best_top10_true", float("nan")), 4),
        "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
