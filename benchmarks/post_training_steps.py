"""Seconds per post-training step and per valid check, fp32 against CPU bf16, from a finished `make run`, as JSON.

    python benchmarks/post_training_steps.py --run-dir .recalign/datasets/movielens-100k/runs/<run id>
        [--variants exp_rw_sft adagrpo dpo] [--steps 50] [--eval-every 25] [--threads 1] [--out FILE]

Each variant of the chain's table (`recmodels.post_training.variants.VARIANTS`) is post-trained from the run's
pretrained policy, on its interactions and with its ranker, for `--steps` optimizer steps of the chain's batch,
once in fp32 and once under CPU bf16 autocast (`PostTrainConfig.cpu_bf16`, what the chain's post-training steps
use where the CPU multiplies bf16 natively). Reported per variant and precision: seconds per optimizer step
(loss, backward, update), seconds per valid check (what the run took besides its steps, over its checks, the
step-0 check and the run's setup included) and the valid NDCG@10 of each check, so that a speed-up is seen
next to what it does to model selection; and, once, the seconds of one valid check of the pretrained policy in
one pass (what the loop runs) against the three passes it replaced. `--threads 1` is what each of the chain's
two post-training step processes gets on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def run_variant(run_dir: Path, name: str, steps: int, eval_every: int, cpu_bf16: bool) -> dict:
    from recmodels.data.tables import read_parquet
    from recmodels.post_training.loop import PostTrainConfig, post_train
    from recmodels.post_training.variants import VARIANTS
    from recmodels.storage.model_io import load_policy, load_ranker

    variant = VARIANTS[name]
    config = PostTrainConfig(steps=steps, eval_every=eval_every, method_params=dict(variant.method_params),
                             cpu_bf16=cpu_bf16, **dict(variant.train))
    policy, interactions = load_policy(run_dir / "pretrained_policy.pt"), read_parquet(run_dir / "interactions.parquet")
    ranker = load_ranker(run_dir / "ranker.pt")
    started = time.perf_counter()
    result = post_train(variant.method, policy, interactions, config, ranker=ranker, device="cpu")
    total = time.perf_counter() - started
    checks = len(result.history)
    return {"steps": result.steps, "step_s": round(result.train_seconds / result.steps, 4),
            "check_s": round((total - result.train_seconds) / checks, 3), "checks": checks,
            "total_s": round(total, 2),
            "valid_ndcg@10": {row["step"]: round(row["valid_ndcg@10"], 4) for row in result.history},
            "best_step": result.best_step}


def time_valid_checks(run_dir: Path, rounds: int = 3) -> dict:
    """Seconds of one valid check of the pretrained policy against itself as reference: the one-pass check the
    loop uses (`AtomicItems.valid_check`, the reference's part built once, outside the timing) against the
    three passes it replaced (`kl_to_reference`, then `evaluate`); the best of `rounds`."""
    from recmodels.data.tables import read_parquet
    from recmodels.post_training.loop import PostTrainConfig, prepare_run
    from recmodels.storage.model_io import load_policy

    policy = load_policy(run_dir / "pretrained_policy.pt")
    run = prepare_run("sft", policy, read_parquet(run_dir / "interactions.parquet"), PostTrainConfig(),
                      device="cpu")
    tokens, reference, valid, cpu = run.tokenization, run.ctx.reference, run.valid, run.ctx.device
    one_pass = tokens.valid_check(reference, valid, cpu)

    def best(fn) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return round(min(times), 3)

    return {"examples": len(valid), "one_pass_s": best(lambda: one_pass(run.policy)),
            "three_pass_s": best(lambda: (tokens.kl_to_reference(run.policy, reference, valid.history, cpu),
                                          tokens.evaluate(run.policy, valid, cpu)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a make run's folder: pretrained_policy.pt, ranker.pt, "
                        "interactions.parquet")
    parser.add_argument("--variants", nargs="+", default=["exp_rw_sft", "adagrpo", "dpo"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    missing = [f for f in ("pretrained_policy.pt", "ranker.pt", "interactions.parquet") if not (run_dir / f).is_file()]
    if missing:
        parser.error(f"--run-dir {run_dir}: no {', '.join(missing)} there (a make run's "
                     ".recalign/datasets/<data set>/runs/<run id> folder holds them)")

    import torch
    from recmodels.runtime import cpu_has_bf16_dot_products, retain_freed_memory

    torch.set_num_threads(args.threads)
    retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
    variants = {}
    for name in args.variants:
        fp32 = run_variant(run_dir, name, args.steps, args.eval_every, cpu_bf16=False)
        bf16 = run_variant(run_dir, name, args.steps, args.eval_every, cpu_bf16=True)
        variants[name] = {"fp32": fp32, "cpu_bf16": bf16,
                          "step_speedup": round(fp32["step_s"] / bf16["step_s"], 2)}
    report = {"run_dir": str(run_dir), "steps": args.steps, "eval_every": args.eval_every,
              "valid_check": time_valid_checks(run_dir), "variants": variants, "threads": args.threads,
              "cpu_bf16_native": cpu_has_bf16_dot_products(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
              "retains_freed_memory": retains_freed_memory}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
