"""`nll_grpo`: next-item NLL plus a fixed share of GRPO (docs/design.md §4).

    loss = L_nll + alpha * L_grpo

L_nll is sft's loss (mean NLL of every real target of the batch windows; with semantic IDs an
item's NLL is the sum of its code NLLs) and L_grpo the grpo loss on the windows' contexts
(grpo.py). With atomic tokens one forward pass of the windows serves both: the contexts at the
window end read its last row. Dropout is on by default, as for sft, so that alpha -> 0 is sft.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import ConfigDict, Field

from recmodels.post_training.contexts import dropout
from recmodels.post_training.grpo import GroupRollouts, GRPOParams, grpo_terms
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext


class NLLGRPOParams(GRPOParams):
    model_config = ConfigDict(title="nll_grpo")

    alpha: float = Field(0.3, ge=0, allow_inf_nan=False, title="α")  # weight of the GRPO term
    dropout: bool = True  # the window forward serves the NLL too: train it like sft


def nll_and_group_rollouts(policy, batch: TrainingWindows, ctx: MethodContext,
                           params: NLLGRPOParams) -> tuple[torch.Tensor, GroupRollouts]:
    """Mean NLL of the batch's real targets (as sft) and the GRPO pass, sharing the windows' forward."""
    with dropout(policy, params.dropout):
        nll, mask, logits = ctx.tokenization.window_nll(policy, batch)  # [B, T], [B, T], [B, T, V] or None
    terms = grpo_terms(policy, batch, ctx, params, window_logits=logits)
    terms.telemetry["targets"] = float(mask.sum())  # the NLL term's logged targets (signal_seen)
    return nll[mask].mean(), terms


def nll_grpo_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: NLLGRPOParams = ctx.params
    nll, terms = nll_and_group_rollouts(policy, batch, ctx, params)
    loss = nll + params.alpha * terms.per_context_loss.mean()
    return loss, {"nll": nll.item(), **terms.telemetry}
