"""Evaluate several policies on the same test users (docs/design.md §5): ranks, top-10 lists, judged scores.

Atomic policies (one token per item) rank the full catalog. Semantic-ID policies generate items as
code tuples with beam search (`BEAM_SIZE` beams, history excluded): their ranks, top-10 list (judged
by the ranker and, on simulated data, by the oracle) come from CONSTRAINED decoding (prefix trie of
real items; a target outside the beams is a miss, exact for every K <= BEAM_SIZE), and their
validity from UNCONSTRAINED decoding: the hallucination rate is the share of its top-10 tuples that
are no item, reported with its HR@10 / NDCG@10. Atomic policies cannot hallucinate (rate 0).

Two protocols (see `ranking.py`): every evaluation carries the masked ranks (primary: history items
excluded) and the unmasked ranks (RecBole's protocol: history items compete), with the number of
history items in each user's unmasked top 10. Atomic policies get both from one scoring pass;
semantic-ID policies from one more constrained beam search that does not exclude the history.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recmodels.evaluation.ground_truth import OracleIds, best_possible_top10, true_reward_metrics
from recmodels.evaluation.hallucination import evaluate_beams
from recmodels.evaluation.metrics import hit_rate, ndcg
from recmodels.evaluation.ranking import SEEN_TOP_K, rank_catalog
from recmodels.evaluation.report import PolicyEvaluation
from recmodels.data.sequences import EvalExamples, build_user_sequences, eval_examples

BEAM_SIZE = 20  # beams per user for semantic-ID policies: exact metrics @5/@10/@20
HALLUCINATION_K = 10  # the hallucination rate is measured over the top-10 unconstrained tuples
MISS_RANK = 2**31 - 1  # rank of a target outside the beams: beyond every cutoff, 1/rank ~ 0


@torch.no_grad()
def ranker_list_scores(ranker, examples: EvalExamples, lists: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Mean ranker score of each user's list: lists [N, K] item_idx -> [N]."""
    ranker.eval()
    device = next(ranker.parameters()).device
    out = []
    for s in range(0, len(examples), batch_size):
        sl = slice(s, s + batch_size)
        r_hat, _ = ranker(examples.history[sl].to(device), examples.history_rewards[sl].to(device),
                          torch.as_tensor(lists[sl], device=device))
        out.append(r_hat.mean(dim=1).cpu().numpy())
    return np.concatenate(out)


def is_semantic(policy) -> bool:
    """A policy over semantic-ID code tokens (generates items with beam search)."""
    from recmodels.models.semantic_policy import SemanticPolicy

    return isinstance(policy, SemanticPolicy)


def _accuracy(ranks: np.ndarray) -> dict[str, float]:
    return {"hr@10": float(hit_rate(ranks, 10).mean()), "ndcg@10": float(ndcg(ranks, 10).mean())}


def semantic_ranks_and_top10(policy, examples: EvalExamples, semantic_ids, beam_size: int = BEAM_SIZE,
                             trie=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Constrained ranks [N] (misses at MISS_RANK), constrained top-10 items [N, 10] and the decoding record
    (hallucination rate of the unconstrained top-10 tuples, both modes' HR@10 / NDCG@10)."""
    from recmodels.tokenization.trie import ItemTrie

    if semantic_ids is None:
        raise ValueError("a semantic-ID policy needs the semantic_ids it was trained with to be evaluated")
    if tuple(policy.cfg.level_sizes) != tuple(semantic_ids.level_sizes):
        raise ValueError(f"the policy's level sizes {tuple(policy.cfg.level_sizes)} differ from the semantic IDs' "
                         f"{tuple(semantic_ids.level_sizes)}")
    if beam_size < HALLUCINATION_K:
        raise ValueError(f"beam_size must be >= {HALLUCINATION_K}, got {beam_size}")
    trie = trie if trie is not None else ItemTrie.from_semantic_ids(semantic_ids)
    constrained = evaluate_beams(policy, examples, semantic_ids, beam_size=beam_size, trie=trie)
    free = evaluate_beams(policy, examples, semantic_ids, beam_size=beam_size, trie=None).top(HALLUCINATION_K)
    ranks = np.where(constrained.ranks <= beam_size, constrained.ranks, MISS_RANK)
    decoding = {"tokenization": "semantic", "beam_size": beam_size,
                "hallucination_rate": free.hallucination_rate, "hallucination_k": HALLUCINATION_K,
                "constrained": _accuracy(ranks), "unconstrained": _accuracy(free.ranks)}
    return ranks, constrained.items[:, :10], decoding


def history_items_in_beams(items: np.ndarray, n_beams: np.ndarray, examples: EvalExamples,
                           k: int = SEEN_TOP_K) -> np.ndarray:
    """[N] history items (other than the target) among each row's first k real beams [N, K]."""
    counts = np.empty(len(examples), dtype=np.int64)
    for row, (seen, target) in enumerate(zip(examples.seen, examples.targets.tolist())):
        top = items[row, :min(k, int(n_beams[row]))]
        counts[row] = int(np.isin(top, seen[seen != target]).sum())
    return counts


def semantic_unmasked_ranks(policy, examples: EvalExamples, semantic_ids, beam_size: int = BEAM_SIZE,
                            trie=None) -> tuple[np.ndarray, np.ndarray]:
    """Unmasked-protocol ranks [N] (misses at MISS_RANK) and history items in the top 10 [N]: one constrained
    beam search that does not exclude the history."""
    from recmodels.tokenization.trie import ItemTrie

    trie = trie if trie is not None else ItemTrie.from_semantic_ids(semantic_ids)
    beams = evaluate_beams(policy, examples, semantic_ids, beam_size=beam_size, trie=trie, exclude_history=False)
    ranks = np.where(beams.ranks <= beam_size, beams.ranks, MISS_RANK)
    return ranks, history_items_in_beams(beams.items, beams.real_beams(), examples)


def atomic_decoding(ranks: np.ndarray) -> dict:
    """The decoding record of an atomic policy: one decoding mode, no hallucination possible."""
    acc = _accuracy(ranks)
    return {"tokenization": "atomic", "beam_size": None, "hallucination_rate": 0.0,
            "hallucination_k": HALLUCINATION_K, "constrained": acc, "unconstrained": dict(acc)}


def evaluate_policies(policies: dict[str, tuple[torch.nn.Module, str | None]], interactions: pd.DataFrame,
                      ranker, max_len: int, split: str = "test", oracle=None,
                      catalog: pd.DataFrame | None = None, semantic_ids=None,
                      beam_size: int = BEAM_SIZE) -> list[PolicyEvaluation]:
    """Rank every user's held-out `split` item with each policy (masked and unmasked protocols); judge each
    (masked) top-10 list with the ranker.

    With the simulator's `oracle` (and the `catalog` mapping item_idx to item_id) each evaluation
    also carries the true reward of its top-1 / top-10 lists and the reward-hacking gap. Semantic-ID
    policies need `semantic_ids` (see the module doc); every evaluation carries a `decoding` record.
    """
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    ids = OracleIds(interactions, catalog) if oracle is not None else None
    trie = None
    if semantic_ids is not None and any(is_semantic(p) for p, _ in policies.values()):
        from recmodels.tokenization.trie import ItemTrie

        trie = ItemTrie.from_semantic_ids(semantic_ids)
    evaluations = []
    for name, (policy, method) in policies.items():
        if is_semantic(policy):
            try:
                ranks, top10, decoding = semantic_ranks_and_top10(policy, examples, semantic_ids, beam_size, trie)
                ranks_unmasked, seen_top10 = semantic_unmasked_ranks(policy, examples, semantic_ids, beam_size, trie)
            except ValueError as exc:
                raise ValueError(f"policy {name!r}: {exc}") from exc
        else:
            both = rank_catalog(policy, examples, k=10)
            ranks, top10, ranks_unmasked, seen_top10 = (both.ranks, both.top_items, both.ranks_unmasked,
                                                        both.seen_in_top10_unmasked)
            decoding = atomic_decoding(ranks)
        judged = ranker_list_scores(ranker, examples, top10)
        per_user = ({} if oracle is None else
                    true_reward_metrics(oracle, ids, examples.users.numpy(), top10, judged))
        evaluations.append(PolicyEvaluation(
            name=name, method=method, ranks=ranks, target_rewards=examples.target_rewards.numpy(),
            ranker_top10_score=judged, users=examples.users.numpy(), per_user=per_user, decoding=decoding,
            ranks_unmasked=ranks_unmasked, seen_in_top10_unmasked=seen_top10))
    return evaluations


def oracle_upper_bound(oracle, interactions: pd.DataFrame, catalog: pd.DataFrame, max_len: int,
                       split: str = "test") -> float:
    """Mean true reward of the best possible top-10 lists of the evaluated users (history excluded)."""
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    ids = OracleIds(interactions, catalog)
    return float(best_possible_top10(oracle, ids, examples.users.numpy(), examples.seen).mean())
