"""Pretraining of the semantic-ID policy: next-token NLL over the code tokens of the train windows.

The same protocol as `recmodels.training.pretraining` (docs/design.md §5) with items as L+1 code tokens: the
training windows of `training_windows` become token sequences with `SemanticIds.window_tokens`
(every target item costs its L+1 codes), and after each evaluated epoch the policy beam-searches
every user's `valid` item under the prefix trie of real items (constrained decoding, history
excluded); training stops when valid NDCG@10 has not improved for `patience` evaluations and the
best weights are restored.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from recmodels.evaluation.hallucination import evaluate_beams
from recmodels.evaluation.metrics import hit_rate, ndcg
from recmodels.training.pretraining import PretrainConfig, check_interactions, check_pretrain_config, run_epochs
from recmodels.runtime import default_device, seed_everything
from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig
from recmodels.data.sequences import EvalExamples, build_user_sequences, eval_examples, training_windows
from recmodels.tokenization.semantic_ids import SemanticIds
from recmodels.tokenization.trie import ItemTrie

VALID_BEAM_SIZE = 10  # enough for model selection on NDCG@10


@dataclass
class SemanticPretrainResult:
    policy: SemanticPolicy
    policy_config: SemanticPolicyConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_ndcg10: float = float("-inf")


def token_nll(policy: SemanticPolicy, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean code NLL over the non-zero targets; equals `policy(tokens, targets)[1]` but only projects
    the positions that have a target onto the vocabulary (windows are often mostly padding)."""
    mask = targets != 0
    h = policy.hidden(tokens)[0][mask]  # [n, d]
    logits = policy.logits(h, tokens[mask])  # [n, V], other levels at -inf
    return F.cross_entropy(logits, targets[mask])


def evaluate_valid_beams(policy: SemanticPolicy, examples: EvalExamples, semantic_ids: SemanticIds,
                         trie: ItemTrie, beam_size: int = VALID_BEAM_SIZE, device=None) -> dict[str, float]:
    """valid HR@10 / NDCG@10 of constrained beam search (targets beyond the beams are misses)."""
    ranks = evaluate_beams(policy, examples, semantic_ids, beam_size=beam_size, trie=trie, device=device).ranks
    return {"valid_hr@10": float(hit_rate(ranks, 10).mean()), "valid_ndcg@10": float(ndcg(ranks, 10).mean())}


def _resolve_configs(semantic_ids: SemanticIds, policy_config: SemanticPolicyConfig | None,
                     config: PretrainConfig) -> tuple[SemanticPolicyConfig, PretrainConfig]:
    if policy_config is None:
        policy_config = SemanticPolicyConfig(level_sizes=semantic_ids.level_sizes)
        if config.max_len is not None:
            policy_config = replace(policy_config, max_len=config.max_len)
    if tuple(policy_config.level_sizes) != tuple(semantic_ids.level_sizes):
        raise ValueError(f"SemanticPolicyConfig.level_sizes={policy_config.level_sizes} differ from the semantic "
                         f"IDs' level sizes {semantic_ids.level_sizes}")
    if config.max_len is None:
        config = replace(config, max_len=policy_config.max_len)
    if config.max_len != policy_config.max_len:
        raise ValueError(f"PretrainConfig.max_len={config.max_len} differs from "
                         f"SemanticPolicyConfig.max_len={policy_config.max_len}")
    check_pretrain_config(config)
    return policy_config, config


def pretrain_semantic_policy(interactions: pd.DataFrame, semantic_ids: SemanticIds,
                             policy_config: SemanticPolicyConfig | None = None, config: PretrainConfig | None = None,
                             callback: Callable[[dict], None] | None = None, device: torch.device | str | None = None,
                             valid_beam_size: int = VALID_BEAM_SIZE) -> SemanticPretrainResult:
    """Train a SemanticPolicy on the train split; early-stop on constrained-beam valid NDCG@10, keep the best weights."""
    config = config or PretrainConfig()
    check_interactions(interactions, semantic_ids.n_items)
    policy_config, config = _resolve_configs(semantic_ids, policy_config, config)
    if valid_beam_size < 10:
        raise ValueError(f"valid_beam_size must be >= 10 to measure NDCG@10, got {valid_beam_size}")
    device = torch.device(device) if device is not None else default_device()

    seqs = build_user_sequences(interactions)
    windows = training_windows(seqs, config.max_len, config.stride)
    tokens, targets = semantic_ids.window_tokens(windows.inputs, windows.targets)  # [N, (T+1)(L+1) - 1]
    valid = eval_examples(seqs, "valid", config.max_len)
    trie = ItemTrie.from_semantic_ids(semantic_ids)

    gen = seed_everything(config.seed)
    policy = SemanticPolicy(policy_config).to(device)
    result = SemanticPretrainResult(policy=policy, policy_config=policy_config)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return token_nll(policy, tokens[idx].to(device), targets[idx].to(device))

    def evaluate() -> dict[str, float]:
        return evaluate_valid_beams(policy, valid, semantic_ids, trie, valid_beam_size, device)

    return run_epochs(policy, len(windows), batch_loss, evaluate, config, gen, result, callback)
