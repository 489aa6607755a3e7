"""`dpo`: direct preference optimization on preference pairs labelled by the ranker (docs/design.md §4).

For each context x (one per window by default, see contexts.py) K = `samples_per_context` distinct items are
sampled from the reference pi_ref without replacement (atomic tokens: from its cached next-item
distribution, so no extra model call once a context is cached; semantic IDs: K distinct code
tuples, unconstrained, so a sample may be no item and then gets the reward spec's lower bound)
and ordered by the ranker R. log pi(y|x) is the sum of y's token log-probs (its L+1 codes with
semantic IDs). Every pair with R(x, y_w) > R(x, y_l) (ties give no preference) contributes

    -log sigmoid(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

and the loss is the mean over the batch's pairs. At the start (pi = pi_ref) every margin is 0 and
the loss is log 2. Dropout is off by default: pi's log-ratios to pi_ref are the signal.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from recmodels.post_training.contexts import ContextChoice, dropout, ranker_rewards, select_contexts, signal_seen
from recmodels.post_training.knobs import MethodKnobs
from recmodels.decoding.rollouts import kl_divergence
from recmodels.data.sequences import TrainingWindows

if TYPE_CHECKING:
    from recmodels.post_training.loop import MethodContext


class DPOParams(MethodKnobs):
    model_config = ConfigDict(title="dpo")

    beta: float = Field(0.1, gt=0, allow_inf_nan=False, title="β")
    samples_per_context: int = Field(4, ge=2)  # K items from pi_ref per context -> up to K(K-1)/2 pairs
    contexts: ContextChoice = "last"
    dropout: bool = False


def preference_margins(log_ratio: torch.Tensor, rewards: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """beta * (h_w - h_l) for every pair of samples [N, K] ordered by reward, and which pairs have a preference.

    log_ratio h = log pi - log pi_ref of each sample; returns margins and a bool mask, both [N, K(K-1)/2].
    """
    j, k = torch.triu_indices(rewards.shape[1], rewards.shape[1], offset=1, device=rewards.device)
    sign = torch.sign(rewards[:, j] - rewards[:, k])  # +1: j preferred, -1: k preferred, 0: tie
    margins = beta * sign * (log_ratio[:, j] - log_ratio[:, k])
    return margins, sign != 0


def dpo_loss(policy, batch: TrainingWindows, ctx: MethodContext) -> tuple[torch.Tensor, dict[str, float]]:
    params: DPOParams = ctx.params
    tokenization = ctx.tokenization
    contexts = select_contexts(batch, params.contexts, ctx.generator)
    samples = tokenization.sample_reference(ctx, contexts, params.samples_per_context, ctx.generator)  # y ~ pi_ref
    rewards = ranker_rewards(ctx.ranker, contexts, samples.items, samples.valid,
                             invalid_reward=ctx.invalid_reward)  # [N, K]
    with dropout(policy, params.dropout):
        scored = tokenization.score(policy, contexts, samples)
    log_ratio = scored.tokens.sum(dim=2) - samples.token_logp.sum(dim=2)  # [N, K] log pi - log pi_ref
    margins, preferred = preference_margins(log_ratio, rewards, params.beta)
    per_pair = -F.logsigmoid(margins)
    n_pairs = int(preferred.sum())
    loss = (per_pair * preferred).sum() / max(n_pairs, 1)  # no preference in the batch: zero gradient
    j, k = torch.triu_indices(rewards.shape[1], rewards.shape[1], offset=1, device=rewards.device)
    gap = (rewards[:, j] - rewards[:, k]).abs()
    telemetry = {
        "dpo": loss.item(),
        "pair_accuracy": ((margins > 0) & preferred).sum().item() / max(n_pairs, 1),
        "reward_gap": (gap[preferred].mean().item() if n_pairs else 0.0),
        "kl": kl_divergence(scored.first_token.detach(), samples.first_token_log_probs).mean().item(),
        "rollout_reward": rewards.mean().item(),
        **tokenization.reference_telemetry(ctx),
        "rollout_invalid_rate": (~samples.valid).float().mean().item(),
        **signal_seen(contexts=len(contexts), rollouts=samples.items.numel()),
    }
    return loss, telemetry
