"""Evaluate several policies on the same test users (docs/design.md §5): ranks, top-10 lists, judged scores.

Each policy is ranked by its tokenization (`recmodels.tokenization`, `ItemTokenization.rank`). Atomic
policies (one token per item) rank the full catalog. Semantic-ID policies generate items as code
tuples with beam search (`BEAM_SIZE` beams, history excluded): their ranks, top-10 list (judged by
the ranker and, on simulated data, by the oracle) come from CONSTRAINED decoding (prefix trie of
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

from recmodels.data.sequences import EvalExamples, build_user_sequences, eval_examples
from recmodels.evaluation.ground_truth import OracleIds, best_possible_top10, true_reward_metrics
from recmodels.evaluation.hallucination import BEAM_SIZE
from recmodels.evaluation.report import PolicyEvaluation
from recmodels.tokenization.items import tokenization_for


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
    evaluations = []
    for name, (policy, method) in policies.items():
        try:
            ranking = tokenization_for(policy, semantic_ids, strict=False).rank(policy, examples, beam_size)
        except ValueError as exc:
            raise ValueError(f"policy {name!r}: {exc}") from exc
        judged = ranker_list_scores(ranker, examples, ranking.top10)
        per_user = ({} if oracle is None else
                    true_reward_metrics(oracle, ids, examples.users.numpy(), ranking.top10, judged))
        evaluations.append(PolicyEvaluation(
            name=name, method=method, ranks=ranking.ranks, target_rewards=examples.target_rewards.numpy(),
            ranker_top10_score=judged, users=examples.users.numpy(), per_user=per_user, decoding=ranking.decoding,
            ranks_unmasked=ranking.ranks_unmasked, seen_in_top10_unmasked=ranking.seen_in_top10_unmasked))
    return evaluations


def oracle_upper_bound(oracle, interactions: pd.DataFrame, catalog: pd.DataFrame, max_len: int,
                       split: str = "test") -> float:
    """Mean true reward of the best possible top-10 lists of the evaluated users (history excluded)."""
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    ids = OracleIds(interactions, catalog)
    return float(best_possible_top10(oracle, ids, examples.users.numpy(), examples.seen).mean())
