"""Seconds per pretraining step of the atomic and the semantic-ID policies on MovieLens-100k's catalog, as JSON.

    python benchmarks/training_step.py [--batch 128] [--steps 8] [--rounds 3] [--threads 1]
        [--variant NAME:FIELD=VALUE,FIELD=VALUE ...] [--atomic-variant NAME:FIELD=VALUE,...] [--compile]
        [--cache-dir DIR]

One step is what pretraining does per batch: the tokenization's window tokens, `window_nll`, backward and an
AdamW update, on `--batch` full windows of max_len items drawn at random from the catalog (the cost depends on
the shapes, not on which items). The semantic IDs are the library's default codebook of the train split; the
policies are built by their tokenization at the library's default size. Each variant is timed `--steps` steps
after two untimed ones, the variants in turn, `--rounds` times; the JSON gives each variant's median seconds per
step and its throughput relative to the atomic policy (the issue's speed goal: semantic >= 50% of atomic).
Variants: `atomic`, `semantic` (the library defaults: item prefix logits), then each `--variant`
(SemanticPolicyConfig fields; default: the plain code head, and prefix logits over 2,048 hashed rows per level),
and each `--atomic-variant` (PolicyConfig fields, e.g. `hstu:block=hstu`). `--compile` adds `atomic_compiled`:
the atomic policy with its transformer (`GenerativePolicy.hidden`) compiled by `torch.compile` (inductor, static
shapes, `fallback_random` so that its dropout masks are eager's); its first step, compilation included, is timed
apart (`compile_seconds`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from pretrain_protocols import overrides, semantic_overrides  # beside this file

DEFAULT_VARIANTS = ["plain_code_head:item_prefixes=false,prefix_logits=false",
                    "hashed_prefix_logits:item_prefixes=false,prefix_buckets=2048"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variant", action="append", default=None, metavar="NAME:FIELD=VALUE,...",
                        help="a semantic policy with these SemanticPolicyConfig fields; repeatable")
    parser.add_argument("--atomic-variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="an atomic policy with these PolicyConfig fields; repeatable")
    parser.add_argument("--compile", action="store_true", help="also time the atomic policy under torch.compile")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".recalign" / "cache"))
    args = parser.parse_args()

    import torch

    from recmodels.runtime import retain_freed_memory

    from beam_search_benchmark import movielens_interactions  # beside this file
    from recmodels.models.policy import PolicyConfig
    from recmodels.models.semantic_policy import SemanticPolicyConfig
    from recmodels.tokenization import build_item_vectors, build_semantic_ids
    from recmodels.tokenization.items import AtomicItems, SemanticItems
    from recmodels.training.pretraining import window_nll

    torch.set_num_threads(args.threads)
    retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
    data = movielens_interactions(Path(args.cache_dir))
    ids = build_semantic_ids(build_item_vectors(data.table, data.catalog, data.n_items).vectors)
    T = PolicyConfig.max_len
    gen = torch.Generator().manual_seed(0)
    items = torch.randint(1, data.n_items + 1, (args.batch, T + 1), generator=gen)  # [B, T+1]: inputs, then targets

    setups = {"atomic": (AtomicItems(), PolicyConfig(vocab_size=data.n_items + 1)),
              "semantic": (SemanticItems(ids), SemanticPolicyConfig(level_sizes=ids.level_sizes, n_items=data.n_items))}
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, pairs = spec.partition(":")
        fields = semantic_overrides([p for p in pairs.split(",") if p])
        setups[name] = (SemanticItems(ids), SemanticPolicyConfig(level_sizes=ids.level_sizes, n_items=data.n_items,
                                                                 **fields))
    for spec in args.atomic_variant:
        name, _, pairs = spec.partition(":")
        training, fields = overrides([p for p in pairs.split(",") if p])
        if training:
            raise SystemExit(f"--atomic-variant {spec}: {sorted(training)} are training knobs, not PolicyConfig fields")
        setups[name] = (AtomicItems(), PolicyConfig(vocab_size=data.n_items + 1, **fields))
    if args.compile:
        setups["atomic_compiled"] = setups["atomic"]
    steps = {}
    for name, (tokenization, config) in setups.items():
        torch.manual_seed(0)
        policy = tokenization.build_policy(config).train()
        if name == "atomic_compiled":
            import torch._inductor.config

            torch._inductor.config.fallback_random = True  # dropout draws eager's masks from torch's generator
            policy.hidden = torch.compile(policy.hidden, dynamic=False)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        tokens, targets = tokenization.window_tokens(items[:, :-1], items[:, 1:])
        steps[name] = (policy, optimizer, tokens, targets)

    def step(policy, optimizer, tokens, targets):
        optimizer.zero_grad(set_to_none=True)
        window_nll(policy, tokens, targets).backward()
        optimizer.step()

    compile_seconds = None
    if args.compile:
        start = time.perf_counter()
        step(*steps["atomic_compiled"])
        compile_seconds = round(time.perf_counter() - start, 1)
    seconds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, run in steps.items():
            for _ in range(2):
                step(*run)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*run)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    atomic = statistics.median(seconds["atomic"])
    out = {"data": "movielens-100k", "n_items": data.n_items, "level_sizes": list(ids.level_sizes),
           "batch": args.batch, "max_len": T, "steps": args.steps, "rounds": args.rounds,
           "variants": {name: {"config": {k: v for k, v in vars(setups[name][1]).items() if k != "level_sizes"},
                               "seconds_per_step": [round(s, 4) for s in seconds[name]],
                               "median_seconds_per_step": round(statistics.median(seconds[name]), 4),
                               "throughput_vs_atomic": round(atomic / statistics.median(seconds[name]), 3)}
                        for name in steps},
           "compile_seconds": compile_seconds,
           "torch_threads": torch.get_num_threads(), "retains_freed_memory": retains_freed_memory, "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
