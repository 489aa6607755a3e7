"""Atomic vs semantic-ID tokenization on one MovieLens data set, same budget, printed as JSON.

    python benchmarks/tokenization_comparison.py --dataset movielens-100k --epochs 20 \
        [--post-train-steps 100] [--item-vectors atomic-policy|titles] [--quantizer balanced_tree]
        [--users-for-throughput 256] [--threads 1] [--set cpu_bf16=true --set dropout=0.0 ...]
        [--semantic-set d_model=256 ...] [--semantic-warm-start] [--semantic-distill 0.5] [--wider-beams 50 100]
        [--resume-dir DIR] [--out DIR]

What it does, all through the library (the Dagster chain runs the same functions):
1. the atomic policy pretrained, then semantic IDs (built by `--quantizer`, library defaults otherwise)
   from the train split and the catalog (`--item-vectors features`), from the atomic policy's item embeddings
   (`atomic-policy`) or from text embeddings of the catalog (`titles`, needs the text extra);
2. the semantic-ID policy pretrained with the atomic policy's `PretrainConfig` (epochs cap
   `--epochs`, patience 10, library defaults otherwise), each early-stopped on its own valid NDCG@10
   (atomic: full-catalog ranking; semantic: constrained beam 10); with `--semantic-warm-start` the semantic
   policy starts from the atomic one's trunk, item embeddings and seen bias (`recmodels.models.warm_start`);
   with `--semantic-distill W` it also learns the atomic policy's next-item distributions, W the share of its
   loss (`recmodels.training.distillation`);
3. with `--post-train-steps N > 0`: the ranker, then the semantic policy post-trained with
   `nll_grpo` at alpha 0.1 / 0.3 / 1.0 and `adagrpo` with the seed's difficulty test and with
   `hard: entropy_quantile` (N steps each, library defaults otherwise; selected step and gate rates in the JSON);
4. every policy evaluated on the same test users (semantic: constrained beam 20 for accuracy,
   unconstrained top-10 for the hallucination rate), HR@10 / NDCG@10 under both protocols (`_masked`:
   history excluded, the primary one; `_unmasked`: RecBole-comparable, history included); with `--out`
   the report (report.md, hr10_vs_hallucination.png, ...) is written there;
5. every semantic policy's masked accuracy and hallucination again with beams that renormalize each level over
   the codes left (`renormalized_beams`; how the evaluation ranked before it took the policy's own probabilities);
6. with `--wider-beams K ...`: the pretrained semantic policy's masked accuracy again from K constrained beams
   (how much of its gap to the atomic policy is search error of beam 20 rather than the model's);
7. beam-search throughput (users/s at beam 20, cached, constrained and unconstrained) of the
   pretrained semantic policy on the first `--users-for-throughput` test users.

`--set NAME=VALUE` overrides a `PretrainConfig` field for both policies, or a `PolicyConfig` field: for the
atomic policy, and for the semantic one where `SemanticPolicyConfig` has it (width, depth, heads, dropout), so
that both are trained alike (e.g. MovieLens-1M's `cpu_bf16=true dropout=0.0`, docs/experiments-pretraining.md).
`--semantic-set NAME=VALUE` overrides a `SemanticPolicyConfig` field for the semantic policy alone, applied
after `--set` (e.g. `d_model=256`: a wider semantic policy against the atomic policy at its own width).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from pretrain_protocols import overrides, semantic_overrides  # beside this file
from recmodels.tokenization.semantic_ids import QUANTIZERS, SemanticIdConfig

DATASETS = ("movielens-100k", "movielens-1m")
GATE = ("gate_open_rate", "hard_rate", "disc_rate")  # adagrpo's telemetry at the selected step


def progress(message: str) -> None:
    """One line per stage on stderr (stdout holds only the JSON)."""
    print(f"tokenization comparison: {message}", file=sys.stderr, flush=True)


def _accuracy(ranks, protocol: str) -> dict:
    """HR@10 / NDCG@10 of the ranks, the keys naming the protocol: {"hr@10_masked": ..., "ndcg@10_masked": ...}."""
    from recmodels.evaluation.metrics import hit_rate, ndcg

    return {f"hr@10_{protocol}": round(float(hit_rate(ranks, 10).mean()), 4),
            f"ndcg@10_{protocol}": round(float(ndcg(ranks, 10).mean()), 4)}


def _row(e) -> dict:
    """Test HR@10 / NDCG@10 under both protocols (masked: history excluded, the primary one; unmasked:
    RecBole-comparable), history items in the unmasked top 10, and the decoding record (masked protocol)."""
    return {**_accuracy(e.ranks, "masked"), **_accuracy(e.ranks_unmasked, "unmasked"),
            "seen_in_top10_unmasked": round(float(e.seen_in_top10_unmasked.mean()), 2),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.decoding.items()}}


def _paired(semantic: dict, atomic: dict) -> dict:
    """The semantic policy minus the atomic one per user (the same test users), HR@10 / NDCG@10 under every
    protocol that both `{protocol: ranks}` dicts hold: the difference, its paired 95% bootstrap interval, and
    both relative to the atomic mean."""
    from recmodels.evaluation.metrics import hit_rate, ndcg, paired_bootstrap_diff

    out = {}
    for protocol in (p for p in semantic if p in atomic):
        for name, metric in (("hr@10", hit_rate), ("ndcg@10", ndcg)):
            a, b = metric(semantic[protocol], 10), metric(atomic[protocol], 10)
            diff, low, high = paired_bootstrap_diff(a, b)
            base = float(b.mean())
            out[f"{name}_{protocol}"] = {"diff": round(diff, 4), "diff_low": round(low, 4), "diff_high": round(high, 4),
                                         "relative": round(diff / base, 4), "relative_low": round(low / base, 4),
                                         "relative_high": round(high / base, 4)}
    return out


def _state_dir(root: str | None, policy: str) -> Path | None:
    """Where `--resume-dir` keeps a policy's resumable pretraining state (None: nowhere)."""
    return Path(root) / policy if root else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="movielens-100k")
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs cap, both tokenizations")
    parser.add_argument("--post-train-steps", type=int, default=0)
    parser.add_argument("--ranker-epochs", type=int, default=30)
    parser.add_argument("--users-for-throughput", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--item-vectors", choices=("features", "atomic-policy", "titles"), default="features",
                        help="what the semantic IDs cluster: SVD factors + genres + year (the library's default), "
                             "the item embeddings of the atomic policy pretrained here, or all-MiniLM-L6-v2 "
                             "embeddings of 'title (year): genres' (the text extra)")
    parser.add_argument("--quantizer", choices=QUANTIZERS, default=SemanticIdConfig.quantizer,
                        help="how the item vectors become code tuples (recmodels.tokenization.semantic_ids)")
    parser.add_argument("--wider-beams", type=int, nargs="*", default=[], metavar="K",
                        help="also rank the test targets among K constrained beams (masked), for each K")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a PretrainConfig or PolicyConfig field, both policies (repeatable)")
    parser.add_argument("--semantic-set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a SemanticPolicyConfig field, the semantic policy only (repeatable)")
    parser.add_argument("--semantic-warm-start", action="store_true",
                        help="start the semantic policy from the atomic one (recmodels.models.warm_start)")
    parser.add_argument("--semantic-distill", type=float, default=0.0, metavar="WEIGHT",
                        help="the semantic policy also learns the atomic policy's next-item distributions, WEIGHT the "
                             "share of its loss (recmodels.training.distillation); 0: none")
    parser.add_argument("--resume-dir", default=None, metavar="DIR",
                        help="keep each policy's resumable pretraining state in DIR/atomic and DIR/semantic: a rerun "
                             "with the same data and settings resumes it, or loads it at once when it had finished "
                             "(runs that vary the semantic policy alone then train the atomic one once)")
    parser.add_argument("--out", default=None, help="folder for the report (report.md, plots)")
    parser.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / ".recalign" / "cache"))
    args = parser.parse_args()

    import torch

    from recmodels.data.interactions import build_interactions
    from recmodels.data.rewards import RewardSpec
    from recmodels.data.sources import load_raw_logs
    from recmodels.evaluation.evaluate import evaluate_policies
    from recmodels.evaluation.hallucination import beam_ranks, evaluate_beams
    from recmodels.evaluation.report import build_report
    from recmodels.evaluation.report_output import write_report
    from recmodels.post_training.loop import PostTrainConfig, post_train
    from recmodels.training.pretraining import PretrainConfig, pretrain_policy
    from recmodels.training.ranker_training import RankerTrainConfig, train_ranker
    from recmodels.tokenization.items import SemanticItems
    from recmodels.models.policy import PolicyConfig
    from recmodels.runtime import retain_freed_memory
    from recmodels.models.semantic_policy import SemanticPolicyConfig
    from recmodels.data.sequences import build_user_sequences, eval_examples
    from recmodels.tokenization import (ItemTrie, build_item_vectors, build_semantic_ids, embedding_item_vectors,
                                        text_item_vectors)

    torch.set_num_threads(args.threads)
    retains_freed_memory = retain_freed_memory()  # as the chain's step processes do (recmodels.runtime)
    started = time.perf_counter()
    data = build_interactions(load_raw_logs(args.dataset, cache_dir=Path(args.cache_dir)), RewardSpec())
    table = data.table
    train_set, policy_set = overrides(args.set)
    semantic_only = semantic_overrides(args.semantic_set)
    cfg = PretrainConfig(**{"epochs": args.epochs, "patience": 10, **train_set})
    timings = {}
    progress(f"{args.dataset}: {data.n_users} users, {data.n_items} items; pretraining the atomic policy")
    t = time.perf_counter()
    atomic = pretrain_policy(table, data.n_items, PolicyConfig(vocab_size=data.n_items + 1, **policy_set), config=cfg,
                             device="cpu", resume_dir=_state_dir(args.resume_dir, "atomic"))
    timings["atomic_pretrain_s"] = round(time.perf_counter() - t, 1)
    if args.item_vectors == "atomic-policy":
        vectors = embedding_item_vectors(atomic.policy.tok_emb.weight.detach().cpu().numpy())
    elif args.item_vectors == "titles":
        vectors = text_item_vectors(data.catalog, data.n_items)
    else:
        vectors = build_item_vectors(table, data.catalog, data.n_items)
    ids = build_semantic_ids(vectors.vectors, SemanticIdConfig(quantizer=args.quantizer))
    out: dict = {"dataset": args.dataset, "n_users": data.n_users, "n_items": data.n_items, "overrides": args.set,
                 "semantic_overrides": args.semantic_set, "semantic_warm_start": args.semantic_warm_start,
                 "semantic_distill": args.semantic_distill,
                 "item_vectors": args.item_vectors, "quantizer": args.quantizer, "level_sizes": list(ids.level_sizes),
                 "semantic_ids": ids.stats}
    progress("pretraining the semantic-ID policy")
    t = time.perf_counter()
    semantic_fields = {f.name for f in fields(SemanticPolicyConfig)}
    semantic_set = {name: value for name, value in policy_set.items() if name in semantic_fields}
    semantic_set |= semantic_only
    semantic_config = SemanticPolicyConfig(level_sizes=ids.level_sizes, n_items=data.n_items, **semantic_set)
    out["semantic_policy"] = {k: v for k, v in asdict(semantic_config).items() if k != "level_sizes"}
    semantic_cfg = replace(cfg, distill_weight=args.semantic_distill)
    semantic = pretrain_policy(table, data.n_items, semantic_config, config=semantic_cfg, device="cpu",
                               tokenization=SemanticItems(ids),
                               start_from=atomic.policy if args.semantic_warm_start else None,
                               teacher=atomic.policy if args.semantic_distill else None,
                               resume_dir=_state_dir(args.resume_dir, "semantic"))
    timings["semantic_pretrain_s"] = round(time.perf_counter() - t, 1)
    out["pretraining"] = {
        name: {"epochs": len(r.history), "best_epoch": r.best_epoch,
               "best_valid_ndcg@10_masked": round(r.best_valid_ndcg10, 4),
               "sequences_per_s": round(sum(h["sequences_per_s"] for h in r.history) / len(r.history), 1)}
        for name, r in (("atomic", atomic), ("semantic", semantic))}

    progress("training the ranker")
    t = time.perf_counter()
    ranker = train_ranker(table, data.n_items, RankerTrainConfig(epochs=args.ranker_epochs), device="cpu").ranker
    timings["ranker_s"] = round(time.perf_counter() - t, 1)
    policies = {"pretrained": (semantic.policy, None), "atomic_pretrained": (atomic.policy, None)}
    extras, post_trained = {}, {}
    if args.post_train_steps > 0:
        variants = [("nll_grpo_alpha_0_1", "nll_grpo", {"alpha": 0.1}), ("nll_grpo_alpha_0_3", "nll_grpo", {"alpha": 0.3}),
                    ("nll_grpo_alpha_1", "nll_grpo", {"alpha": 1.0}), ("adagrpo", "adagrpo", {}),
                    ("adagrpo_entropy_quantile", "adagrpo", {"hard": "entropy_quantile"})]
        for name, method, params in variants:
            t = time.perf_counter()
            result = post_train(method, semantic.policy, table,
                                PostTrainConfig(steps=args.post_train_steps, method_params=params),
                                ranker=ranker, semantic_ids=ids, device="cpu")
            timings[f"{name}_s"] = round(time.perf_counter() - t, 1)
            policies[name] = (result.policy, method)
            extras[name] = {"params": result.params, "best_step": result.best_step, "history": result.history}
            at_best = next(r for r in result.history if r["step"] == result.best_step)
            post_trained[name] = {"best_step": result.best_step, "steps_per_s": round(result.steps_per_s, 3),
                                  **{k: round(at_best[k], 4) for k in GATE if k in at_best}}
    progress("evaluating on the test users")
    t = time.perf_counter()
    evals = evaluate_policies(policies, table, ranker, semantic.policy_config.max_len, semantic_ids=ids)
    timings["evaluation_s"] = round(time.perf_counter() - t, 1)
    for e in evals:
        e.extra = extras.get(e.name, {})
    out["test"] = {e.name: _row(e) | post_trained.get(e.name, {}) for e in evals}
    ranks_of = {e.name: {"masked": e.ranks, "unmasked": e.ranks_unmasked} for e in evals}
    atomic_ranks = ranks_of["atomic_pretrained"]
    out["semantic_vs_atomic"] = _paired(ranks_of["pretrained"], atomic_ranks)
    test = eval_examples(build_user_sequences(table), "test", semantic.policy_config.max_len)
    trie = ItemTrie.from_semantic_ids(ids)
    for k in args.wider_beams:
        t = time.perf_counter()
        ranks = beam_ranks(evaluate_beams(semantic.policy, test, ids, beam_size=k, trie=trie, batch_size=64,
                                          device="cpu"))
        paired = _paired({"masked": ranks}, atomic_ranks)  # {"hr@10_masked": ..., "ndcg@10_masked": ...}
        out.setdefault("semantic_wider_beams", {})[str(k)] = {
            **_accuracy(ranks, "masked"), **{f"{key}_vs_atomic": value for key, value in paired.items()},
            "seconds": round(time.perf_counter() - t, 1)}
    for name, (policy, _) in policies.items():  # the same policies ranked as before: levels renormalized
        if name == "atomic_pretrained":
            continue
        constrained = evaluate_beams(policy, test, ids, beam_size=20, trie=trie, device="cpu", renormalize=True)
        free = evaluate_beams(policy, test, ids, beam_size=20, device="cpu", renormalize=True).top(10)
        out.setdefault("renormalized_beams", {})[name] = {
            **_accuracy(beam_ranks(constrained), "masked"), "hallucination_rate": round(free.hallucination_rate, 4)}
    if args.out:
        report = build_report(evals)
        write_report(report, args.out)
        out["report_dir"] = str(args.out)

    n = min(args.users_for_throughput, len(test))
    subset = type(test)(users=test.users[:n], history=test.history[:n], history_rewards=test.history_rewards[:n],
                        targets=test.targets[:n], target_rewards=test.target_rewards[:n], seen=test.seen[:n])
    out["beam20_users_per_s"] = {}
    for mode, constraint in (("constrained", trie), ("unconstrained", None)):
        t = time.perf_counter()
        evaluate_beams(semantic.policy, subset, ids, beam_size=20, trie=constraint, use_cache=True, device="cpu")
        out["beam20_users_per_s"][mode] = round(n / (time.perf_counter() - t), 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    out.update(timings=timings, torch_threads=torch.get_num_threads(), retains_freed_memory=retains_freed_memory,
               cpu_count=os.cpu_count(),
               python=platform.python_version(), torch=torch.__version__)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
