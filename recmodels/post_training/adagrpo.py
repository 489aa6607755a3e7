"""`adagrpo`: NLL everywhere, GRPO only where the sample is hard AND the ranker can tell (docs/design.md §4).

    loss = L_nll + alpha * (1/B) sum_i g_i L_grpo,i,      g_i = hard_i AND disc_i

over the B contexts of the batch (one per window; with `contexts: "every"` the mean runs over every real
target position instead); a context with g_i = 0 gets pure NLL. The
diagnostics come from the same rollouts and the same ranker call as the GRPO term (the ground
truth a_i is scored next to the rollouts), no extra model call:

- hard_i, `hard="entropy"` (default): the normalized entropy of the first generated token's
  distribution, H(pi(.|x_i)) / log V >= tau_H, with the masked distribution the rollouts are
  drawn from: for atomic tokens the first token is the item and V the catalog size; for semantic
  IDs it is the level-0 code and V = V0, the level-0 codebook size;
  `hard="entropy_quantile"`: the same normalized entropy, relative to the batch: context i is hard when
  its entropy is in the batch's top `hard_share` (at or above the batch's (1 - hard_share) quantile).
  A fixed tau_H does not discriminate on large atomic catalogs, where the normalized entropy of a
  softmax over thousands of items stays above 0.5 for every context (the gate is then the
  discriminability test alone); the quantile keeps the most uncertain share of each batch;
  `hard="truth_not_sampled"`: a_i is not among the policy's own G rollouts.
- disc_i, `disc="zscore"` (default): (R(x_i, a_i) - mean_j R(x_i, o_ij)) / (std_j + 1e-4) >= delta
  (population std, as for the advantages); `disc="truth_first"`: a_i is ranked first by R among
  {a_i} U {o_ij} (ties count as first: a_i may be one of its own rollouts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import AliasChoices, ConfigDict, Field

from recmodels.post_training.grpo import ADV_EPS
from recmodels.post_training.knobs import NotNaN
from recmodels.post_training.nll_grpo import NLLGRPOParams, nll_and_group_rollouts
from recmodels.decoding.rollouts import entropy
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext


class AdaGRPOParams(NLLGRPOParams):
    model_config = ConfigDict(title="adagrpo")

    tau_h: NotNaN = Field(0.5, validation_alias=AliasChoices("tau_h", "tau_H"),
                          title="τ_H")  # hard when the normalized entropy is at least this
    delta: NotNaN = Field(1.0, title="δ")  # discriminable when the truth's reward z-score is at least this
    hard: Literal["entropy", "entropy_quantile", "truth_not_sampled"] = "entropy"
    hard_share: float = Field(0.5, gt=0, le=1)  # hard="entropy_quantile": the batch's most uncertain share
    disc: Literal["zscore", "truth_first"] = "zscore"


@dataclass
class GateDiagnostics:
    hard: torch.Tensor  # [N] bool
    disc: torch.Tensor  # [N] bool
    normalized_entropy: torch.Tensor  # [N] H / log V of the first generated token
    truth_zscore: torch.Tensor  # [N] (R(a) - mean_j R(o_j)) / (std_j + 1e-4)

    @property
    def gate(self) -> torch.Tensor:
        return self.hard & self.disc


@torch.no_grad()
def gate_diagnostics(first_token_log_probs: torch.Tensor, rollout_items: torch.Tensor, rollout_rewards: torch.Tensor,
                     truth: torch.Tensor, truth_reward: torch.Tensor, params: AdaGRPOParams,
                     n_choices: int | None = None) -> GateDiagnostics:
    """hard_i and disc_i from one context's rollouts: first-token log-probs [N, V], items and rewards [N, G],
    the logged item a_i and its ranker reward [N]. `n_choices`: the V of log V (default: the columns
    minus padding 0, the atomic catalog)."""
    n_items = first_token_log_probs.shape[1] - 1 if n_choices is None else n_choices
    normalized_entropy = entropy(first_token_log_probs.float()) / math.log(n_items) if n_items > 1 \
        else torch.zeros(first_token_log_probs.shape[0], device=first_token_log_probs.device)
    sampled = (rollout_items == truth[:, None]).any(dim=1)
    mean = rollout_rewards.mean(dim=1)
    std = rollout_rewards.std(dim=1, unbiased=False)
    zscore = (truth_reward - mean) / (std + ADV_EPS)
    if params.hard == "entropy":
        hard = normalized_entropy >= params.tau_h
    elif params.hard == "entropy_quantile":
        hard = normalized_entropy >= torch.quantile(normalized_entropy, 1 - params.hard_share)
    else:
        hard = ~sampled
    disc = zscore >= params.delta if params.disc == "zscore" else truth_reward >= rollout_rewards.max(dim=1).values
    return GateDiagnostics(hard=hard, disc=disc, normalized_entropy=normalized_entropy, truth_zscore=zscore)


def adagrpo_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: AdaGRPOParams = ctx.params
    nll, terms = nll_and_group_rollouts(policy, batch, ctx, params)
    diag = gate_diagnostics(terms.rollouts.first_token_log_probs.detach(), terms.rollouts.items, terms.rewards,
                            terms.contexts.truth, terms.truth_reward_hat, params,
                            n_choices=ctx.tokenization.first_token_choices(policy))
    gate = diag.gate.to(terms.per_context_loss.dtype)  # [N]
    gated = (gate * terms.per_context_loss).mean()
    loss = nll + params.alpha * gated
    telemetry = {
        "nll": nll.item(),
        **terms.telemetry,
        "gated_grpo": gated.item(),
        "gate_open_rate": diag.gate.float().mean().item(),
        "hard_rate": diag.hard.float().mean().item(),
        "disc_rate": diag.disc.float().mean().item(),
        "normalized_entropy": diag.normalized_entropy.mean().item(),
        "truth_zscore": diag.truth_zscore.mean().item(),
    }
    return loss, telemetry
