"""Evaluate several policies on the same test users (design.md §5): ranks, top-10 lists, judged scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recmodels.evaluation.ground_truth import OracleIds, best_possible_top10, true_reward_metrics
from recmodels.evaluation.ranking import target_ranks, top_k_items
from recmodels.evaluation.report import PolicyEvaluation
from recmodels.sequences import EvalExamples, build_user_sequences, eval_examples


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
                      catalog: pd.DataFrame | None = None) -> list[PolicyEvaluation]:
    """Rank every user's held-out `split` item with each policy; judge each top-10 list with the ranker.

    With the simulator's `oracle` (and the `catalog` mapping item_idx to item_id) each evaluation
    also carries the true reward of its top-1 / top-10 lists and the reward-hacking gap.
    """
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    ids = OracleIds(interactions, catalog) if oracle is not None else None
    evaluations = []
    for name, (policy, method) in policies.items():
        ranks = target_ranks(policy, examples)
        top10 = top_k_items(policy, examples, k=10)
        judged = ranker_list_scores(ranker, examples, top10)
        per_user = ({} if oracle is None else
                    true_reward_metrics(oracle, ids, examples.users.numpy(), top10, judged))
        evaluations.append(PolicyEvaluation(
            name=name, method=method, ranks=ranks, target_rewards=examples.target_rewards.numpy(),
            ranker_top10_score=judged, users=examples.users.numpy(), per_user=per_user))
    return evaluations


def oracle_upper_bound(oracle, interactions: pd.DataFrame, catalog: pd.DataFrame, max_len: int,
                       split: str = "test") -> float:
    """Mean true reward of the best possible top-10 lists of the evaluated users (history excluded)."""
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    ids = OracleIds(interactions, catalog)
    return float(best_possible_top10(oracle, ids, examples.users.numpy(), examples.seen).mean())
