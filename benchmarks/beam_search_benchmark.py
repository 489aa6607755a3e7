"""Beam-search throughput of a semantic-ID policy on MovieLens-100k, printed as JSON.

    python benchmarks/beam_search_benchmark.py [--checkpoint POLICY.pt --semantic-ids ITEM_TOKENS.npz]
        [--users 256] [--beam 20] [--threads 1] [--pretrain-epochs 0] [--quantizer balanced_tree]
        [--semantic-set item_prefixes=true --semantic-set prefix_logits=true]

Users/s of the evaluation's beam search (`evaluate_beams`: history excluded, its default batches; one untimed
warm-up call on 64 users first) at beam
`--beam`, constrained (prefix trie) and unconstrained, with and without the policy's decoding cache, on the first
`--users` test users. Without --checkpoint the semantic IDs are built from the train split with the
library defaults (or `--quantizer`) and the policy is freshly initialized at the library's default size (its decoding
cost does not depend on its weights), with the `SemanticPolicyConfig` fields `--semantic-set NAME=VALUE`
names. `--pretrain-epochs N` also pretrains it for N epochs first and reports seconds per epoch and training
sequences/s (the policy then decodes with trained weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from pretrain_protocols import semantic_overrides  # beside this file
from recmodels.tokenization.semantic_ids import QUANTIZERS, SemanticIdConfig


def movielens_interactions(cache_dir: Path):
    from recmodels.data.interactions import build_interactions
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs

    return build_interactions(load_raw_logs("movielens-100k", cache_dir=cache_dir), RewardSpec())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a SemanticPolicy checkpoint (default: fresh policy)")
    parser.add_argument("--semantic-ids", default=None, help="the .npz of its semantic IDs (with --checkpoint)")
    parser.add_argument("--users", type=int, default=256)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pretrain-epochs", type=int, default=0)
    parser.add_argument("--quantizer", choices=QUANTIZERS, default=SemanticIdConfig.quantizer,
                        help="how the fresh policy's semantic IDs are built (without --checkpoint)")
    parser.add_argument("--semantic-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a SemanticPolicyConfig field of the fresh policy (default: the library's); repeatable")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".recalign" / "cache"))
    args = parser.parse_args()
    if bool(args.checkpoint) != bool(args.semantic_ids):
        parser.error("--checkpoint and --semantic-ids go together")

    import torch

    from recmodels.evaluation.hallucination import evaluate_beams
    from recmodels.storage.model_io import load_policy
    from recmodels.models.semantic_policy import SemanticPolicyConfig
    from recmodels.training.pretraining import PretrainConfig, pretrain_policy
    from recmodels.tokenization.items import SemanticItems, tokenization_class
    from recmodels.data.sequences import build_user_sequences, eval_examples
    from recmodels.runtime import retain_freed_memory
    from recmodels.tokenization import ItemTrie, SemanticIds, build_item_vectors, build_semantic_ids

    torch.set_num_threads(args.threads)
    retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
    data = movielens_interactions(Path(args.cache_dir))
    out = {"data": "movielens-100k", "n_items": data.n_items, "users": args.users, "beam": args.beam}
    if args.checkpoint:
        ids, policy = SemanticIds.load(args.semantic_ids), load_policy(args.checkpoint)
        if tokenization_class(policy) is not SemanticItems:
            parser.error(f"{args.checkpoint} is not a semantic-ID policy checkpoint")
    else:
        ids = build_semantic_ids(build_item_vectors(data.table, data.catalog, data.n_items).vectors,
                                 SemanticIdConfig(quantizer=args.quantizer))
        out["semantic_ids_build_s"] = round(ids.stats["build_seconds"], 2)
        torch.manual_seed(0)
        config = SemanticPolicyConfig(level_sizes=ids.level_sizes, n_items=ids.n_items,
                                      **semantic_overrides(args.semantic_set))
        policy = SemanticItems(ids).build_policy(config)
    out["level_sizes"] = list(ids.level_sizes)
    out["policy"] = {k: v for k, v in asdict(policy.cfg).items() if k != "level_sizes"}
    if args.pretrain_epochs:
        cfg = PretrainConfig(epochs=args.pretrain_epochs, patience=args.pretrain_epochs)
        result = pretrain_policy(data.table, ids.n_items, policy.cfg, cfg, device="cpu",
                                 tokenization=SemanticItems(ids))
        policy = result.policy
        out["pretrain"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                           for row in result.history]
    policy.eval()
    examples = eval_examples(build_user_sequences(data.table), "test", policy.cfg.max_len)
    n = min(args.users, len(examples))
    subset = type(examples)(users=examples.users[:n], history=examples.history[:n],
                            history_rewards=examples.history_rewards[:n], targets=examples.targets[:n],
                            target_rewards=examples.target_rewards[:n], seen=examples.seen[:n])
    trie = ItemTrie.from_semantic_ids(ids)
    runs = {}
    warm = type(subset)(users=subset.users[:64], history=subset.history[:64], history_rewards=subset.history_rewards[:64],
                        targets=subset.targets[:64], target_rewards=subset.target_rewards[:64], seen=subset.seen[:64])
    evaluate_beams(policy, warm, ids, beam_size=args.beam, trie=trie, device="cpu")  # one-time costs, untimed
    for mode, t in (("constrained", trie), ("unconstrained", None)):
        for cached in (True, False):
            start = time.perf_counter()
            result = evaluate_beams(policy, subset, ids, beam_size=args.beam, trie=t, use_cache=cached, device="cpu")
            seconds = time.perf_counter() - start
            runs[f"{mode}_{'cached' if cached else 'uncached'}"] = {
                "users_per_s": round(n / seconds, 1), "seconds": round(seconds, 2),
                "hallucination_rate_top10": round(result.top(10).hallucination_rate, 4),
                "hr@10": round(float((result.ranks <= 10).mean()), 4)}
    out["beam_search"] = runs
    out.update(torch_threads=torch.get_num_threads(), retains_freed_memory=retains_freed_memory, cpu_count=os.cpu_count(),
               python=platform.python_version(),
               torch=torch.__version__)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
