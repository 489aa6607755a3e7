"""`ips`: inverse-propensity-weighted NLL of the logged items, self-normalized and clipped (docs/design.md §4).

    w_i  = min(max(r_i, 0) / p_i, c)
    loss = -sum_i w_i log pi(a_i|x_i) / sum_i w_i

i runs over the batch's real targets, p_i is the logging policy's propensity of the logged item a_i
(the interactions' `propensity` column) and c the clip. Negative rewards get weight 0: a likelihood
loss can only pull towards an item, and a negative weight would push log pi(a_i|x_i) to -inf
without bound. Only applicable when the logs carry propensities: `prepare` raises
`MethodNotApplicable` otherwise, and the caller reports the method as skipped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from pydantic import AliasChoices, ConfigDict, Field

from recmodels.post_training.exp_rw_sft import effective_sample_size
from recmodels.post_training.knobs import MethodKnobs
from recmodels.post_training.sft import target_nll
from recmodels.tokenization.items import tokenization_of
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext

NO_PROPENSITIES = "skipped: the logs carry no propensities"


class IPSParams(MethodKnobs):
    model_config = ConfigDict(title="ips")

    clip: float = Field(100.0, gt=0, allow_inf_nan=False,
                        validation_alias=AliasChoices("clip", "c"))  # c, the largest weight r / p


def prepare(params: IPSParams, interactions: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Nothing to precompute; refuses logs without a `propensity` column."""
    from recmodels.post_training.registry import MethodNotApplicable

    if "propensity" not in interactions.columns:
        raise MethodNotApplicable(NO_PROPENSITIES)
    return {}


def ips_weights(rewards: torch.Tensor, propensities: torch.Tensor, clip: float) -> torch.Tensor:
    """w = min(max(r, 0) / p, c) elementwise."""
    return (rewards.clamp(min=0) / propensities).clamp(max=clip)


def ips_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: IPSParams = ctx.params
    if batch.propensities is None:
        from recmodels.post_training.registry import MethodNotApplicable

        raise MethodNotApplicable(NO_PROPENSITIES)
    nll, mask = target_nll(policy, batch, tokenization_of(ctx))  # [B, T]
    nll_t = nll[mask]
    w = ips_weights(batch.rewards[mask].float(), batch.propensities[mask].float(), params.clip).detach()  # [M]
    total = w.sum()
    loss = (w * nll_t).sum() / total if total > 0 else (0.0 * nll_t).sum()  # no positive reward: no gradient
    telemetry = {
        "nll": nll_t.mean().item(),
        "weighted_nll": loss.item(),
        "ess": effective_sample_size(w) if total > 0 else 0.0,
        "clipped_rate": (w >= params.clip).float().mean().item(),
        "mean_weight": w.mean().item(),
    }
    return loss, telemetry
