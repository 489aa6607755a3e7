"""`ips`: inverse-propensity-weighted NLL of the logged items, self-normalized and clipped (docs/design.md §4).

    signed=True (default, §4):  w_i = clip(r_i / p_i, -c, c)       loss = -sum_i w_i log pi(a_i|x_i) / sum_i |w_i|
    signed=False:               w_i = min(max(r_i, 0) / p_i, c)    loss = -sum_i w_i log pi(a_i|x_i) / sum_i w_i

i runs over the batch's real targets, p_i is the logging policy's propensity of the logged item a_i
(the interactions' `propensity` column) and c the clip. Signed (design §4 as written): a disliked item
pushes its own log-probability down, with r / p clipped on both sides so that a disliked item shown
rarely cannot outweigh the whole batch, normalized by the total absolute weight. `signed=False` drops
negative rewards (weight 0): a likelihood loss then only pulls towards items, never pushing a
log-probability towards -inf (which only the gradient clip and the selection on valid bound). Measured
on the simulator (benchmarks/ips_variants.py, docs/results-studies.md): signed gained more true reward
(+0.130 [0.124, 0.138] vs +0.111 [0.104, 0.117] true top-10 reward over the pretrained policy), with
NDCG@10 within the interval of both; hence the default. Only applicable when the logs carry
propensities: `prepare` raises `MethodNotApplicable` otherwise, and the caller reports the method as skipped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import torch
from pydantic import AliasChoices, ConfigDict, Field

from recmodels.post_training.exp_rw_sft import effective_sample_size
from recmodels.post_training.contexts import signal_seen
from recmodels.post_training.knobs import MethodKnobs
from recmodels.post_training.sft import target_nll, weighted_nll
from recmodels.tokenization.items import tokenization_of
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext

NO_PROPENSITIES = "skipped: the logs carry no propensities"


class IPSParams(MethodKnobs):
    model_config = ConfigDict(title="ips")

    clip: float = Field(100.0, gt=0, allow_inf_nan=False,
                        validation_alias=AliasChoices("clip", "c"))  # c, the largest weight |r / p|
    signed: bool = True  # negative rewards as negative weights (design §4's r / p); False: weight 0


def prepare(params: IPSParams, interactions: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Nothing to precompute; refuses logs without a `propensity` column."""
    from recmodels.post_training.registry import MethodNotApplicable

    if "propensity" not in interactions.columns:
        raise MethodNotApplicable(NO_PROPENSITIES)
    return {}


def ips_weights(rewards: torch.Tensor, propensities: torch.Tensor, clip: float, signed: bool = False) -> torch.Tensor:
    """w = min(max(r, 0) / p, c) elementwise; signed: w = clip(r / p, -c, c)."""
    if signed:
        return (rewards / propensities).clamp(min=-clip, max=clip)
    return (rewards.clamp(min=0) / propensities).clamp(max=clip)


def _check_propensities(batch: TrainingWindows) -> None:
    if batch.propensities is None:
        from recmodels.post_training.registry import MethodNotApplicable

        raise MethodNotApplicable(NO_PROPENSITIES)


def ips_target_weights(batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the batch's real targets [M] (detached) and the loss's denominator, the total |w|."""
    params: IPSParams = ctx.params
    _check_propensities(batch)
    mask = batch.targets != 0
    w = ips_weights(batch.rewards[mask].float(), batch.propensities[mask].float(), params.clip,
                    params.signed).detach()  # [M]
    return w, w.abs().sum()  # = w.sum() unless signed


def ips_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: IPSParams = ctx.params
    _check_propensities(batch)
    nll, mask = target_nll(policy, batch, tokenization_of(ctx))  # [B, T]
    nll_t = nll[mask]
    w, total = ips_target_weights(batch, ctx)
    loss = weighted_nll(nll_t, w, total)  # no weight at all: no gradient
    telemetry = {
        "nll": nll_t.mean().item(),
        "weighted_nll": loss.item(),
        "ess": effective_sample_size(w.abs()) if total > 0 else 0.0,
        "clipped_rate": (w.abs() >= params.clip).float().mean().item(),
        "negative_weight_share": (w < 0).float().mean().item(),
        "mean_weight": w.mean().item(),
        **signal_seen(targets=w.numel()),
    }
    return loss, telemetry
