"""`ppo`: proximal policy optimization against the frozen ranker, KL-penalized reward (docs/design.md §4).

Rollouts: for each context x (one per window by default, see contexts.py) K = `samples_per_context` items
y ~ pi_old (the policy when they are drawn), independent draws (`rollouts="iid"`, the default) or K
distinct items (`"distinct"`, tilted to the tail, see contexts.RolloutSampling), then

    reward  = R(x, y) - beta * (log pi_old(y|x) - log pi_ref(y|x))
    A       = reward - mean of the rollout batch's rewards            (batch-mean baseline)
    loss    = -mean min(rho A, clip(rho, 1-eps, 1+eps) A),   rho = pi(y|x) / pi_old(y|x)

Semantic IDs: y is a code tuple sampled unconstrained (a tuple that is no item gets R = the
reward spec's lower bound, `ctx.invalid_reward`) and log pi(y|x) is the sum of its L+1 code
log-probs. The ratio is the SEQUENCE ratio rho = pi(y|x) / pi_old(y|x) = exp(sum_t log-ratio of
code t): the clip acts on the item's own probability, the quantity the KL-shaped reward is defined
on (GRPO is the method with token-level ratios). With atomic tokens both are the same.

Step accounting: each inner epoch is ONE optimizer step of the shared budget, so ppo takes exactly
as many optimizer steps as every other method. Every `inner_epochs` steps the method draws fresh
rollouts on the batch the loop hands it (pi_old = the detached policy of that forward pass, rho = 1);
the following inner_epochs - 1 steps update again on the same contexts and rollouts (kept in
`ctx.memory`; `spent` after the last inner epoch, when a resumable save may drop them), and the
batches the loop hands in meanwhile are not used. The reference's
log-probs for those contexts come from the shared cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pydantic import ConfigDict, Field

from recmodels.post_training.contexts import (ContextChoice, RLContexts, RolloutSampling, dropout, ranker_rewards,
                                              select_contexts, signal_seen)
from recmodels.post_training.grpo import clipped_surrogate
from recmodels.post_training.knobs import MethodKnobs
from recmodels.decoding.rollouts import Rollouts, kl_divergence
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext

BUFFER_KEY = "ppo_rollouts"


class PPOParams(MethodKnobs):
    model_config = ConfigDict(title="ppo")

    eps: float = Field(0.2, gt=0, lt=1, title="ε")
    beta: float = Field(0.05, ge=0, allow_inf_nan=False, title="β")  # KL penalty in the reward
    inner_epochs: int = Field(2, ge=1)  # optimizer steps per rollout batch
    samples_per_context: int = Field(4, ge=1)
    contexts: ContextChoice = "last"
    rollouts: RolloutSampling = "iid"  # K independent draws from pi per context, or K distinct items
    dropout: bool = False  # off: pi / pi_old and pi / pi_ref compare deterministic forward passes


@dataclass
class RolloutBatch:
    """Rollouts kept for the inner epochs."""

    contexts: RLContexts
    rollouts: Rollouts  # items [N, K] (and code tuples), detached
    logp_old: torch.Tensor  # [N, K] log pi_old(y|x)
    advantages: torch.Tensor  # [N, K]
    telemetry: dict[str, float]
    inner_epochs: int  # optimizer steps to take on these rollouts
    updates: int = 0  # optimizer steps taken on these rollouts so far

    @property
    def spent(self) -> bool:
        """All its inner epochs are done: the next step draws fresh rollouts, so the buffer may be dropped
        (the training loop saves a resumable state only when every kept buffer is spent)."""
        return self.updates >= self.inner_epochs


def _fresh_rollouts(policy, batch: TrainingWindows, ctx: MethodContext,
                    params: PPOParams) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw rollouts; return them, this forward's log-probs of the rollouts [N, K] (grad) and its
    first-token distribution, and the reference's first-token distribution."""
    tokenization = ctx.tokenization
    contexts = select_contexts(batch, params.contexts, ctx.generator)
    with dropout(policy, params.dropout):
        rollouts = tokenization.sample(policy, contexts, params.samples_per_context, ctx.generator,
                                       distinct=params.rollouts == "distinct")
    logp_old = rollouts.logp.detach()
    scores = ranker_rewards(ctx.ranker, contexts, rollouts.items, rollouts.valid, invalid_reward=ctx.invalid_reward)
    ref = tokenization.reference(ctx, contexts, rollouts)
    penalty = params.beta * (logp_old - ref.tokens.sum(dim=2))  # [N, K]
    reward = scores - penalty
    telemetry = {"rollout_reward": scores.mean().item(), "kl_penalty": penalty.mean().item(),
                 "shaped_reward": reward.mean().item(),
                 "rollout_invalid_rate": (~rollouts.valid).float().mean().item()}
    kept = Rollouts(items=rollouts.items, logp=logp_old, valid=rollouts.valid,
                    first_token_log_probs=rollouts.first_token_log_probs.detach(), tuples=rollouts.tuples)
    buffer = RolloutBatch(contexts=contexts, rollouts=kept, logp_old=logp_old,
                          advantages=reward - reward.mean(), telemetry=telemetry, inner_epochs=params.inner_epochs)
    return buffer, rollouts.logp, rollouts.first_token_log_probs, ref.first_token


def ppo_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: PPOParams = ctx.params
    buffer: RolloutBatch | None = ctx.memory.get(BUFFER_KEY)
    fresh = buffer is None or buffer.spent
    if fresh:
        buffer, logp, first_token, ref_first_token = _fresh_rollouts(policy, batch, ctx, params)
        ctx.memory[BUFFER_KEY] = buffer
    else:
        with dropout(policy, params.dropout):
            scored = ctx.tokenization.score(policy, buffer.contexts, buffer.rollouts)
        logp, first_token = scored.tokens.sum(dim=2), scored.first_token  # sequence log-prob [N, K]
        ref_first_token = ctx.tokenization.reference(ctx, buffer.contexts).first_token
    buffer.updates += 1
    surrogate = clipped_surrogate(logp, buffer.logp_old, buffer.advantages, params.eps)
    loss = -surrogate.mean()
    ratio = torch.exp(logp.detach() - buffer.logp_old)
    telemetry = {
        "ppo": loss.item(),
        **buffer.telemetry,
        "kl": kl_divergence(first_token.detach(), ref_first_token).mean().item(),
        "clip_fraction": ((ratio - 1).abs() > params.eps).float().mean().item(),
        "fresh_rollouts": float(fresh),
        # new contexts and rollouts only on a fresh step: the inner epochs reuse them
        **signal_seen(contexts=len(buffer.contexts) if fresh else 0,
                      rollouts=buffer.rollouts.items.numel() if fresh else 0),
        **ctx.tokenization.reference_telemetry(ctx),
    }
    return loss, telemetry
