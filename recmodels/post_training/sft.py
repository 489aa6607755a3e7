"""`sft`: more next-item NLL on the same logged data, the control for "just more training" (docs/design.md §4).

Also home of `target_nll`, the per-position NLL of the logged targets that every
likelihood-based method (sft, exp_rw_sft, ips) weights in its own way. With semantic IDs the NLL
of an item is the sum of its L+1 code NLLs (`recmodels/tokenization/`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import ConfigDict

from recmodels.post_training.contexts import signal_seen
from recmodels.post_training.knobs import MethodKnobs
from recmodels.tokenization.items import AtomicItems, tokenization_of
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext


class SFTParams(MethodKnobs):
    """sft has no knobs: any key in `method_params` is rejected."""

    model_config = ConfigDict(title="sft")


def target_nll(policy, batch: TrainingWindows, tokenization=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-log pi(a_t | x_<=t) at every position [B, T] and the mask of real targets [B, T].

    Padding targets (0) are ignored by cross_entropy, so their NLL is exactly 0 and their
    gradient is 0: the -inf padding logit never turns into inf/NaN. `tokenization` defaults to
    atomic item tokens.
    """
    nll, mask, _ = (tokenization or AtomicItems()).window_nll(policy, batch)
    return nll, mask


def weighted_nll(nll: torch.Tensor, weights: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """sum_i w_i NLL_i / total over the real targets [M]: the loss of every NLL-type method (sft, exp_rw_sft,
    ips). A zero total (every weight 0) is a loss without gradient."""
    return (weights * nll).sum() / total if total > 0 else (0.0 * nll).sum()


def sft_target_weights(batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight 1 for each of the batch's M real targets, total M: the mean NLL."""
    n = (batch.targets != 0).sum()
    return torch.ones(int(n), device=batch.targets.device), n.float()


def sft_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean NLL over the batch's real targets."""
    nll, mask = target_nll(policy, batch, tokenization_of(ctx))
    loss = weighted_nll(nll[mask], *sft_target_weights(batch, ctx))
    return loss, {"nll": loss.item(), **signal_seen(targets=int(mask.sum()))}
