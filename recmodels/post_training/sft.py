"""`sft`: more next-item NLL on the same logged data, the control for "just more training" (design.md §4).

Also home of `target_nll`, the per-position NLL of the logged targets that every
likelihood-based method (sft, exp_rw_sft, ...) weights in its own way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from recmodels.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext


@dataclass
class SFTParams:
    """sft has no knobs: any key in `method_params` is rejected."""


def target_nll(policy, batch: TrainingWindows) -> tuple[torch.Tensor, torch.Tensor]:
    """-log pi(a_t | x_<=t) at every position [B, T] and the mask of real targets [B, T].

    Padding targets (0) are ignored by cross_entropy, so their NLL is exactly 0 and their
    gradient is 0: the -inf padding logit never turns into inf/NaN.
    """
    logits, _ = policy(batch.inputs)  # [B, T, V]
    B, T, V = logits.shape
    # flat [B*T, V] rows: faster than cross_entropy on the transposed [B, V, T] layout
    nll = F.cross_entropy(logits.reshape(B * T, V), batch.targets.reshape(B * T), ignore_index=0,
                          reduction="none").view(B, T)
    return nll, batch.targets != 0


def sft_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean NLL over the batch's real targets."""
    nll, mask = target_nll(policy, batch)
    loss = nll[mask].mean()
    return loss, {"nll": loss.item()}
