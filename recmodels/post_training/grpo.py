"""`grpo`: group-relative policy optimization against the frozen ranker (docs/design.md §4).

For each context x_i (one per window by default, see contexts.py) G items o_i1..o_iG are sampled from pi_old,
independently (`rollouts="iid"`, the default) or as G distinct items (`"distinct"`, without
replacement: biased toward the tail, see contexts.RolloutSampling; recmodels.decoding.rollouts), and
scored by the ranker R. An item o is
|o| tokens (1 atomic token, or L+1 semantic-ID codes); t runs over them:

    A_ij     = (R(x_i, o_ij) - mean_j R) / (std_j R + 1e-4)          (population std of the group)
    rho_ijt  = pi(o_ijt | x_i, o_ij<t) / pi_old(o_ijt | x_i, o_ij<t)  (token-level ratio)
    k3_ijt   = pi_ref/pi - log(pi_ref/pi) - 1   at token o_ijt        (unbiased KL(pi || pi_ref) estimate)
    L_grpo,i = (1/G) sum_j (1/|o|) sum_t [ -min(rho_ijt A_ij, clip(rho_ijt, 1-eps, 1+eps) A_ij) + beta k3_ijt ]
    loss     = mean_i L_grpo,i

Every optimizer step draws fresh rollouts and takes one update on them, so pi_old is the detached
current policy of the same forward pass: rho = 1 at the sample and the gradient flows through pi
(the clip only acts when rollouts are reused). Rollouts that are no real item (code tuples that
name no item, possible with semantic IDs since sampling is unconstrained) are not scored by the
ranker: they get `ctx.invalid_reward`, the reward spec's lower bound (the bottom of the reward range).

`grpo_terms` is the shared computation that nll_grpo and adagrpo weight in their own way; the
tokenization (`recmodels/tokenization/`) does the sampling and the per-token log-probs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from pydantic import AliasChoices, ConfigDict, Field

from recmodels.post_training.contexts import (ContextChoice, RLContexts, RolloutSampling, dropout, ranker_rewards,
                                              select_contexts, signal_seen)
from recmodels.post_training.knobs import MethodKnobs
from recmodels.decoding.rollouts import Rollouts, kl_divergence
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext

ADV_EPS = 1e-4


class GRPOParams(MethodKnobs):
    model_config = ConfigDict(title="grpo")

    group_size: int = Field(8, ge=2, validation_alias=AliasChoices("group_size", "G"),
                            title="G")  # G rollouts per context; >= 2: advantages compare rollouts
    eps: float = Field(0.2, gt=0, lt=1, validation_alias=AliasChoices("eps", "epsilon"), title="ε")  # ratio clip
    beta: float = Field(0.04, ge=0, allow_inf_nan=False, title="β")  # weight of the k3 KL to the reference
    contexts: ContextChoice = "last"  # which window positions are contexts: "last", "random" or "every"
    rollouts: RolloutSampling = "iid"  # a group: G independent draws from pi, or G distinct items
    dropout: bool = False  # run the policy with dropout (as in its training mode) while computing log-probs


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A [N, G]: rewards standardized within each group (row); a group of equal rewards gets exactly 0."""
    shifted = rewards - rewards[:, :1]  # exact zeros for a group of equal rewards (mean() would round)
    centered = shifted - shifted.mean(dim=1, keepdim=True)
    std = centered.pow(2).mean(dim=1, keepdim=True).sqrt()  # population std
    return centered / (std + ADV_EPS)


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """min(rho A, clip(rho, 1-eps, 1+eps) A) elementwise, rho = exp(logp - logp_old): the objective to maximize."""
    ratio = torch.exp(logp - logp_old)
    return torch.minimum(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref) at samples of pi: exp(d) - d - 1 with d = logp_ref - logp (>= 0)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


@dataclass
class GroupRollouts:
    """One GRPO pass over a batch: what the grpo family's losses and diagnostics read."""

    contexts: RLContexts
    rollouts: Rollouts  # items [N, G] (0 = no item), token_logp [N, G, n_tokens] with grad, first_token_log_probs
    rewards: torch.Tensor  # [N, G] R(x, o) (invalid rollouts at ctx.invalid_reward)
    truth_reward_hat: torch.Tensor  # [N] R(x, a) of the logged next item, from the same ranker call
    advantages: torch.Tensor  # [N, G]
    per_context_loss: torch.Tensor  # [N] L_grpo,i (grad flows)
    telemetry: dict[str, float] = field(default_factory=dict)


def grpo_terms(policy, batch: TrainingWindows, ctx: MethodContext, params: GRPOParams,
               window_logits: torch.Tensor | None = None) -> GroupRollouts:
    """Contexts, G rollouts each, rewards, advantages and the per-context GRPO loss of one batch.

    `window_logits` [B, T, V]: the batch windows' forward pass when the caller already ran it
    (atomic tokens: its last row serves the contexts at the window end, see
    contexts.context_log_probs; semantic IDs have none and score their tuples themselves).
    """
    tokenization = ctx.tokenization
    contexts = select_contexts(batch, params.contexts, ctx.generator)
    with dropout(policy, params.dropout):
        rollouts = tokenization.sample(policy, contexts, params.group_size, ctx.generator, window_logits,
                                       distinct=params.rollouts == "distinct")
    G = params.group_size
    candidates = torch.cat([rollouts.items, contexts.truth[:, None]], dim=1)  # [N, G+1]: rollouts + truth
    valid = torch.cat([rollouts.valid, torch.ones_like(contexts.truth[:, None], dtype=torch.bool)], dim=1)
    scores = ranker_rewards(ctx.ranker, contexts, candidates, valid, invalid_reward=ctx.invalid_reward)
    rewards, truth_reward_hat = scores[:, :G], scores[:, G]
    advantages = group_advantages(rewards)

    ref = tokenization.reference(ctx, contexts, rollouts)
    logp = rollouts.token_logp  # [N, G, n_tokens]
    k3 = kl_k3(logp, ref.tokens).mean(dim=2)  # [N, G]: mean over the item's tokens
    surrogate = clipped_surrogate(logp, logp.detach(), advantages[..., None], params.eps).mean(dim=2)  # (1/|o|) sum_t
    per_context = (-surrogate + params.beta * k3).mean(dim=1)  # [N]
    telemetry = {
        "grpo": per_context.mean().item(),
        "kl": kl_divergence(rollouts.first_token_log_probs.detach(), ref.first_token).mean().item(),
        "kl_k3": k3.mean().item(),
        "rollout_reward": rewards.mean().item(),
        "group_reward_std": rewards.std(dim=1, unbiased=False).mean().item(),
        "truth_reward_hat": truth_reward_hat.mean().item(),
        **tokenization.reference_telemetry(ctx),
        "rollout_invalid_rate": (~rollouts.valid).float().mean().item(),
        **signal_seen(contexts=len(contexts), rollouts=rollouts.items.numel()),
    }
    return GroupRollouts(contexts=contexts, rollouts=rollouts, rewards=rewards, truth_reward_hat=truth_reward_hat,
                         advantages=advantages, per_context_loss=per_context, telemetry=telemetry)


def grpo_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    terms = grpo_terms(policy, batch, ctx, ctx.params)
    return terms.per_context_loss.mean(), terms.telemetry
