"""Evaluate several policies on the same test users (design.md §5): ranks, top-10 lists, judged scores."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

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
                      ranker, max_len: int, split: str = "test") -> list[PolicyEvaluation]:
    """Rank every user's held-out `split` item with each policy; judge each top-10 list with the ranker."""
    examples = eval_examples(build_user_sequences(interactions), split, max_len)
    evaluations = []
    for name, (policy, method) in policies.items():
        ranks = target_ranks(policy, examples)
        top10 = top_k_items(policy, examples, k=10)
        evaluations.append(PolicyEvaluation(
            name=name, method=method, ranks=ranks, target_rewards=examples.target_rewards.numpy(),
            ranker_top10_score=ranker_list_scores(ranker, examples, top10)))
    return evaluations
