"""One knob of the ranker-driven methods at two or more values, side by side in one comparison; JSON on stdout.

Shared by `rollout_sampling.py` (`rollouts`: iid vs distinct) and `rl_contexts.py` (`contexts`: last vs every).
One comparison (`recmodels.studies.comparison.run_comparison`: the pretrained policy early-stopped on valid, the
ranker, then every variant with the same budget and selection on valid NDCG@10) holds the fixed variants once
and each (method, knob value) pair as `<name>_<value>`. Per policy, on the test split: NDCG@10 and HR@10 under
the masked protocol (history excluded, full ranking; the unmasked NDCG@10 beside it), their paired difference vs
the pretrained policy, the selected step, the KL to the pretrained policy, the mean ranker reward of the rollouts
and the contexts / targets a step learned from at that step (adagrpo: its gate-open, hard and discriminable rates);
on the simulator, the oracle's true top-10 reward.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GATE = ("gate_open_rate", "hard_rate", "disc_rate")  # adagrpo's telemetry


def interval(values: dict) -> list[float]:
    return [round(values["mean"], 4), round(values["low"], 4), round(values["high"], 4)]


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", choices=("movielens-100k", "simulator"), default="movielens-100k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="post-training steps of every variant")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--simulator", action="append", default=[], metavar="NAME=VALUE",
                        help="a SimulatorConfig setting of the simulated world (repeatable; `events_per_user=10,40`)")
    parser.add_argument("--cache-dir", default=str(ROOT / ".recalign" / "cache"), help="where the wheels are cached")
    return parser.parse_args()


def simulator_settings(pairs: Sequence[str], seed: int) -> dict:
    """`--simulator` pairs as SimulatorConfig settings: numbers, or tuples of numbers written with commas."""
    settings = {"seed": seed}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--simulator {pair!r}: write NAME=VALUE")
        numbers = tuple(float(v) if "." in v else int(v) for v in value.split(","))
        settings[name] = numbers if len(numbers) > 1 else numbers[0]
    return settings


def compare_knob(benchmark: str, args: argparse.Namespace, knob: str, values: Sequence[str],
                 methods: Sequence[tuple[str, str, dict]], fixed: Sequence[tuple[str, str, dict]]) -> dict:
    """`methods` / `fixed`: (name, method, knobs); each of `methods` runs once per value of `knob`."""
    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.oracle import Oracle
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs
    from recmodels.post_training.contexts import SIGNAL_KEYS
    from recmodels.post_training.loop import PostTrainConfig
    from recmodels.studies.comparison import ComparisonConfig, Variant, run_comparison

    if args.simulator and args.dataset != "simulator":
        raise SystemExit("--simulator sets the simulated world: use it with --dataset simulator")
    world = simulator_settings(args.simulator, args.seed) if args.dataset == "simulator" else None
    raw = load_raw_logs(args.dataset, cache_dir=Path(args.cache_dir), simulator=world)
    inter = build_interactions(raw, RewardSpec())
    variants = [Variant(name, method, knobs) for name, method, knobs in fixed]
    variants += [Variant(f"{name}_{value}", method, {**knobs, knob: value})
                 for name, method, knobs in methods for value in values]
    config = ComparisonConfig(post_train=PostTrainConfig(steps=args.steps, eval_every=args.eval_every),
                              variants=tuple(variants), seed=args.seed)
    oracle = Oracle.from_dict(raw.oracle) if raw.oracle else None
    start = time.perf_counter()
    result = run_comparison(inter.table, inter.n_items, inter.catalog, oracle, config, dataset=args.dataset)
    seconds = time.perf_counter() - start
    metrics = ("ndcg@10", "hr@10") + (("true_top10",) if oracle is not None else ())
    policies = {}
    for name, policy in result.report["policies"].items():
        row = {m: interval(policy["metrics"][m]) for m in metrics}
        row["ndcg@10_unmasked"] = interval(policy["unmasked"]["metrics"]["ndcg@10"])
        if name != "pretrained":
            row |= {f"{m}_diff_vs_pretrained": interval(policy["diff_vs_baseline"][m])
                    for m in ("ndcg@10",) + (("true_top10",) if oracle is not None else ())}
        if name in result.post_trained:
            trained = result.post_trained[name]
            at_best = next(r for r in trained.history if r["step"] == trained.best_step)
            row |= {"best_step": trained.best_step, "kl_to_reference_at_best": round(at_best["kl_to_reference"], 4),
                    "steps_per_s": round(trained.steps_per_s, 3)}
            row |= {f"{key}_per_step": at_best[key] for key in ("rollout_reward", *SIGNAL_KEYS) if key in at_best}
            row |= {f"{key}_at_best": round(at_best[key], 4) for key in GATE if key in at_best}
        policies[name] = row
    return {
        "benchmark": benchmark, "command": f"python benchmarks/{benchmark}.py " + " ".join(sys.argv[1:]),
        "protocol": "test split (leave-one-out), full ranking, history masked (ndcg@10_unmasked: history items "
                    "ranked too); [mean, 95% bootstrap low, high] over test users"
                    + ("; true_top10: the oracle's mean true reward of the top-10 list" if oracle is not None else ""),
        "data": {"source": args.dataset, "users": inter.n_users, "items": inter.n_items, "events": len(inter.table),
                 **({"simulator": world} if args.simulator else {})},
        "budget": {"steps": args.steps, "eval_every": args.eval_every}, "knob": knob, "values": list(values),
        "policies": policies, "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main(benchmark: str, description: str, knob: str, values: Sequence[str],
         methods: Sequence[tuple[str, str, dict]], fixed: Sequence[tuple[str, str, dict]] = ()) -> None:
    print(json.dumps(compare_knob(benchmark, arguments(description), knob, values, methods, fixed), indent=1))
