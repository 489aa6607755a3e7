"""Rollouts from a generative policy: the one sampler every RL post-training method shares.

A rollout is an item the policy generates for a context (a history). Two ways to generate G of
them per context, both over the *masked* next-item distribution (padding 0 and every item of the
context's history set to -inf, then renormalized, the distribution the evaluation ranks from):

- `sample_rollouts`: G distinct items sampled without replacement (Gumbel-top-k: the top G of
  log pi(y|x) + Gumbel noise, which is sampling G times without replacement);
- `top_k_rollouts`: the G most likely items (beam search; exact top-k for one-token items).

Tokenization. Today an item is one atomic token, so ONE forward pass per context gives the whole
next-item distribution: generating G items or scoring any items never re-encodes a sequence per
token (the atomic equivalent of decoding with cached keys/values). The public API speaks of items
and contexts only:

    sample_rollouts(policy, histories[N, T], G, generator, mask=None) -> Rollouts(items[N, G], logp[N, G])
    top_k_rollouts(policy, histories[N, T], G, mask=None) -> Rollouts
    sequence_logprob(policy, histories[N, T], items[N, G], mask=None) -> [N, G]

so that a semantic-ID tokenization (an item = L+1 codes decoded token by token with a KV cache,
log pi(item) = the sum of its code log-probs, some code tuples being no item) can provide the same
functions. `Rollouts.valid` marks generated items that are real items (always true for atomic
tokens; false for hallucinated code tuples) and `Rollouts.first_token_log_probs` is the
distribution of the first generated token (the whole item here), for entropy diagnostics.

The `*_from_log_probs` helpers work on next-item log-probs a caller already holds, so a loss can
sample from, and take gradients through, the same forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Rollouts:
    items: torch.Tensor  # [N, G] generated item ids
    logp: torch.Tensor  # [N, G] log pi(item | context) under the generating policy (masked, renormalized)
    valid: torch.Tensor  # [N, G] bool: the generated id is a real item (atomic tokens: always)
    first_token_log_probs: torch.Tensor  # [N, V] masked log-probs of the first generated token

    @property
    def group_size(self) -> int:
        return self.items.shape[1]


def history_mask(histories: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[N, V] bool, True = never generate: padding 0 and every item in the context's history."""
    if histories.dim() != 2:
        raise ValueError(f"histories must be [N, T] item ids, got shape {tuple(histories.shape)}")
    if histories.numel() and (int(histories.min()) < 0 or int(histories.max()) >= vocab_size):
        raise ValueError(f"histories hold ids outside 0..{vocab_size - 1} "
                         f"(min {int(histories.min())}, max {int(histories.max())})")
    mask = torch.zeros(histories.shape[0], vocab_size, dtype=torch.bool, device=histories.device)
    mask.scatter_(1, histories, True)
    mask[:, 0] = True
    return mask


def masked_log_probs(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log-softmax of `logits` [N, V] renormalized over the unmasked items (masked ones are -inf).

    Also renormalizes log-probs (log_softmax is idempotent), e.g. a cached unmasked distribution.
    """
    return F.log_softmax(logits.float().masked_fill(mask, float("-inf")), dim=-1)


def next_item_log_probs(policy, histories: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V] masked next-item log-probs of `policy` after each history: one forward pass (grad flows)."""
    logits = policy.next_item_logits(histories)  # [N, V]
    if mask is None:
        mask = history_mask(histories, logits.shape[1])
    return masked_log_probs(logits, mask)


def _check_group_size(log_probs: torch.Tensor, group_size: int) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    allowed = torch.isfinite(log_probs).sum(dim=1)  # [N]
    if log_probs.shape[0] and int(allowed.min()) < group_size:
        row = int(torch.argmin(allowed))
        raise ValueError(f"context row {row} leaves only {int(allowed[row])} items unmasked, "
                         f"fewer than group_size={group_size}")


def sample_from_log_probs(log_probs: torch.Tensor, group_size: int, generator: torch.Generator) -> Rollouts:
    """G distinct items per row drawn without replacement from exp(log_probs) [N, V] (Gumbel-top-k).

    top-G of log p + Gumbel noise, with Gumbel = -log(E), E ~ Exp(1). `logp` keeps the graph of
    `log_probs` (detach it for pi_old), so a loss can reuse the sampling forward pass.
    """
    _check_group_size(log_probs, group_size)
    with torch.no_grad():
        noise = torch.empty_like(log_probs, dtype=torch.float32).exponential_(generator=generator).log_()
        items = (log_probs.detach().float() - noise).topk(group_size, dim=1).indices  # [N, G]
    return Rollouts(items=items, logp=log_probs.gather(1, items), valid=torch.ones_like(items, dtype=torch.bool),
                    first_token_log_probs=log_probs)


def top_k_from_log_probs(log_probs: torch.Tensor, k: int) -> Rollouts:
    """The k most likely items per row of `log_probs` [N, V], most likely first."""
    _check_group_size(log_probs, k)
    items = log_probs.detach().topk(k, dim=1).indices
    return Rollouts(items=items, logp=log_probs.gather(1, items), valid=torch.ones_like(items, dtype=torch.bool),
                    first_token_log_probs=log_probs)


@torch.no_grad()
def sample_rollouts(policy, histories: torch.Tensor, group_size: int, generator: torch.Generator,
                    mask: torch.Tensor | None = None) -> Rollouts:
    """G distinct items per context sampled without replacement from the masked policy (no grad)."""
    return sample_from_log_probs(next_item_log_probs(policy, histories, mask), group_size, generator)


@torch.no_grad()
def top_k_rollouts(policy, histories: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> Rollouts:
    """The policy's k best items per context (beam search of width k), most likely first (no grad)."""
    return top_k_from_log_probs(next_item_log_probs(policy, histories, mask), k)


def sequence_logprob(policy, histories: torch.Tensor, items: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(item | context) [N, G] of given items under the masked policy (grad flows); -inf if masked."""
    if items.dim() != 2 or items.shape[0] != histories.shape[0]:
        raise ValueError(f"items must be [N={histories.shape[0]}, G], got {tuple(items.shape)}")
    return next_item_log_probs(policy, histories, mask).gather(1, items)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """[N] entropy of each row of log-probs [N, V] (masked -inf entries contribute 0)."""
    p = log_probs.exp()
    return -torch.where(p > 0, p * log_probs, torch.zeros_like(p)).sum(dim=1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N] KL(p || q) of rows of log-probs [N, V] sharing the same support (-inf entries skipped)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)
