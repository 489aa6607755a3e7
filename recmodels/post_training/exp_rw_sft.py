"""`exp_rw_sft`: reward-weighted NLL with exponential weights (docs/design.md §4).

    w_i = exp(r_i / lambda)                    (or exp((r_i - b(x_i)) / lambda) with the baseline)
    w_i <- min(w_i, w_max)                     (optional clip)
    loss = -sum_i w_i log pi(a_i|x_i) / sum_i w_i       normalization="batch"
    loss = -mean_i w_i log pi(a_i|x_i)                  normalization="none"

i runs over the batch's real targets; r_i is the logged reward of target i and b(x_i) the mean
train reward of the window's user. lambda -> inf recovers sft; lambda -> 0 keeps only the
batch's best-rewarded targets.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import AliasChoices, ConfigDict, Field

from recmodels.post_training.contexts import signal_seen
from recmodels.post_training.knobs import MethodKnobs
from recmodels.post_training.sft import target_nll, weighted_nll
from recmodels.tokenization.items import tokenization_of
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext

Normalization = Literal["batch", "none"]


class ExpRwSFTParams(MethodKnobs):
    model_config = ConfigDict(title="exp_rw_sft")

    lam: float = Field(1.0, gt=0, allow_inf_nan=False, validation_alias=AliasChoices("lam", "lambda"),
                       title="λ")  # temperature lambda
    normalization: Normalization = "batch"
    baseline: bool = False  # subtract the user's mean train reward ("advantage" variant)
    w_max: float | None = Field(None, gt=0)  # clip on the weights (before batch normalization)


def user_mean_rewards(interactions: pd.DataFrame) -> torch.Tensor:
    """[max user_idx + 1] mean `train` reward of each user (0 for a user without train events)."""
    train = interactions[interactions["split"].astype(str) == "train"]
    n_users = int(interactions["user_idx"].max()) + 1
    means = train.groupby("user_idx")["reward"].mean()
    out = np.zeros(n_users, np.float32)
    out[means.index.to_numpy(np.int64)] = means.to_numpy(np.float32)
    return torch.as_tensor(out)


def prepare(params: ExpRwSFTParams, interactions: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Per-user baselines, precomputed once from the interactions table when the baseline is on."""
    return {"user_mean_reward": user_mean_rewards(interactions)} if params.baseline else {}


def effective_sample_size(weights: torch.Tensor) -> float:
    """(sum w)^2 / sum w^2 as a fraction of the number of weights: 1 = uniform, 1/n = one sample."""
    w = weights.double()
    return float(w.sum() ** 2 / (w.pow(2).sum() * w.numel()))


def log_weights(rewards: torch.Tensor, params: ExpRwSFTParams, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """log w_i = (r_i - b_i) / lambda, clipped at log w_max; rewards and baseline [M]."""
    adv = rewards if baseline is None else rewards - baseline
    logw = adv / params.lam
    if params.w_max is not None:
        logw = logw.clamp(max=math.log(params.w_max))
    return logw


def _batch_log_weights(batch: TrainingWindows, ctx: MethodContext) -> torch.Tensor:
    """log w_i of the batch's M real targets (row-major over [B, T]), detached."""
    params: ExpRwSFTParams = ctx.params
    mask = batch.targets != 0  # [B, T]
    baseline = None
    if params.baseline:
        b_user = ctx.state["user_mean_reward"][batch.users]  # [B]
        baseline = b_user[:, None].expand_as(mask)[mask]  # [M]
    return log_weights(batch.rewards[mask].float(), params, baseline).detach()  # [M]


def _normalized(logw: torch.Tensor, params: ExpRwSFTParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights [M] and their total: exp(logw - max) over its sum ("batch"), or exp(logw) over M ("none")."""
    if params.normalization == "batch":
        w = torch.exp(logw - logw.max())  # same ratios as exp(logw), never overflows
        return w, w.sum()
    w = torch.exp(logw)
    if not torch.isfinite(w).all():
        raise FloatingPointError(
            f"exp_rw_sft: weights exp(r / lambda) overflow with lambda={params.lam} and "
            f"normalization='none' (max r/lambda = {logw.max().item():.3g}); "
            "use normalization='batch', a larger lambda or w_max")
    return w, torch.tensor(float(w.numel()), device=w.device)


def exp_rw_sft_target_weights(batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of the batch's real targets [M] and the loss's denominator (see the module docstring)."""
    return _normalized(_batch_log_weights(batch, ctx), ctx.params)


def exp_rw_sft_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    nll, mask = target_nll(policy, batch, tokenization_of(ctx))  # [B, T]
    nll_t = nll[mask]  # [M]
    logw = _batch_log_weights(batch, ctx)  # [M]
    w, total = _normalized(logw, ctx.params)
    loss = weighted_nll(nll_t, w, total)
    logw64 = logw.double()
    telemetry = {
        "nll": nll_t.mean().item(),
        "weighted_nll": loss.item(),
        "ess": effective_sample_size(w),
        # raw weights exp((r - b) / lambda) after the clip, before any normalization (saturate at ~8e307)
        "mean_weight": math.exp(min((torch.logsumexp(logw64, 0) - math.log(logw.numel())).item(), 709.0)),
        "max_weight": math.exp(min(logw64.max().item(), 709.0)),
        **signal_seen(targets=logw.numel()),
    }
    return loss, telemetry
