"""GRPO and PPO groups drawn i.i.d. from the policy (the default) vs as distinct items (without replacement), on
MovieLens-100k or the simulator; JSON on stdout.

    python benchmarks/rollout_sampling.py --dataset movielens-100k [--steps 200] [--seed 0]
    python benchmarks/rollout_sampling.py --dataset simulator

One comparison (`recmodels.studies.comparison.run_comparison`: the pretrained policy early-stopped on
valid, the ranker, then every variant with the same budget and selection on valid NDCG@10) with each
ranker-driven method that samples groups from the policy (grpo, ppo, nll_grpo at α 0.3, adagrpo) twice:
`rollouts: iid` and `rollouts: distinct`. Per policy, on the test split: NDCG@10 and HR@10 under the
masked protocol (history excluded, full ranking; the unmasked NDCG@10 beside it), their paired difference
vs the pretrained policy, the selected step, the KL to the pretrained policy and the mean ranker reward of
the rollouts at that step; on the simulator, the oracle's true top-10 reward as well.
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

METHODS = (("grpo", {}), ("ppo", {}), ("nll_grpo_alpha_0_3", {"alpha": 0.3}), ("adagrpo", {}))


def interval(values: dict) -> list[float]:
    return [round(values["mean"], 4), round(values["low"], 4), round(values["high"], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("movielens-100k", "simulator"), default="movielens-100k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="post-training steps of every variant")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--cache-dir", default=str(ROOT / ".recalign" / "cache"), help="where the wheels are cached")
    args = parser.parse_args()

    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.oracle import Oracle
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs
    from recmodels.post_training.loop import PostTrainConfig
    from recmodels.studies.comparison import ComparisonConfig, Variant, run_comparison

    raw = load_raw_logs(args.dataset, cache_dir=Path(args.cache_dir),
                        simulator={"seed": args.seed} if args.dataset == "simulator" else None)
    inter = build_interactions(raw, RewardSpec())
    variants = [Variant("sft", "sft", {})]
    for name, knobs in METHODS:
        method = name.split("_alpha")[0]
        for sampling in ("iid", "distinct"):
            variants.append(Variant(f"{name}_{sampling}", method, {**knobs, "rollouts": sampling}))
    config = ComparisonConfig(post_train=PostTrainConfig(steps=args.steps, eval_every=args.eval_every),
                              variants=tuple(variants), seed=args.seed)
    oracle = Oracle.from_dict(raw.oracle) if raw.oracle else None
    start = time.perf_counter()
    result = run_comparison(inter.table, inter.n_items, inter.catalog, oracle, config, dataset=args.dataset)
    seconds = time.perf_counter() - start
    report = result.report
    metrics = ("ndcg@10", "hr@10") + (("true_top10",) if oracle is not None else ())
    policies = {}
    for name, policy in report["policies"].items():
        row = {m: interval(policy["metrics"][m]) for m in metrics}
        row["ndcg@10_unmasked"] = interval(policy["unmasked"]["metrics"]["ndcg@10"])
        if name != "pretrained":
            row |= {f"{m}_diff_vs_pretrained": interval(policy["diff_vs_baseline"][m])
                    for m in ("ndcg@10",) + (("true_top10",) if oracle is not None else ())}
        if name in result.post_trained:
            trained = result.post_trained[name]
            at_best = next(r for r in trained.history if r["step"] == trained.best_step)
            row |= {"best_step": trained.best_step, "kl_to_reference_at_best": round(at_best["kl_to_reference"], 4)}
            if "rollout_reward" in at_best:
                row["rollout_reward_at_best"] = round(at_best["rollout_reward"], 4)
        policies[name] = row
    print(json.dumps({
        "benchmark": "rollout_sampling", "command": "python benchmarks/rollout_sampling.py " + " ".join(sys.argv[1:]),
        "protocol": "test split (leave-one-out), full ranking, history masked (ndcg@10_unmasked: history items "
                    "ranked too); [mean, 95% bootstrap low, high] over test users"
                    + ("; true_top10: the oracle's mean true reward of the top-10 list" if oracle is not None else ""),
        "data": {"source": args.dataset, "users": inter.n_users, "items": inter.n_items, "events": len(inter.table)},
        "budget": {"steps": args.steps, "eval_every": args.eval_every},
        "policies": policies, "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
