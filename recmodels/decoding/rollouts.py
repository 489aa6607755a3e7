"""Rollouts from a generative policy: the one sampler every RL post-training method shares.

A rollout is an item the policy generates for a context (a history of item ids [T]). G of them per
context are generated from the *masked* next-item distribution: padding and every item of the
context's history are never generated (the distribution the evaluation ranks from).

- `sample_rollouts`: G distinct items sampled without replacement (`distinct=False`: G independent draws);
- `top_k_rollouts`: the G most likely items (beam search);
- `sequence_logprob`: log pi(item | context) of given items (grad flows).

These three ask the policy's tokenization (`recmodels.tokenization.items.tokenization_for`) to do it;
the public API speaks of items and contexts only:

    sample_rollouts(policy, histories[N, T], G, generator, mask=None, semantic_ids=None) -> Rollouts
    top_k_rollouts(policy, histories[N, T], G, mask=None, semantic_ids=None) -> Rollouts
    sequence_logprob(policy, histories[N, T], items[N, G], mask=None, semantic_ids=None) -> [N, G]

Atomic tokens (`GenerativePolicy`, one token per item): ONE forward pass per context gives the whole
next-item distribution, so generating G items (Gumbel-top-k: the top G of log pi(y|x) + Gumbel
noise, which is sampling G times without replacement) or scoring any items never re-encodes a
sequence. The `*_from_log_probs` helpers work on next-item log-probs a caller already holds, so a
loss can sample from, and take gradients through, the same forward pass. `mask` [N, V] overrides
`history_mask`.

Semantic IDs (`SemanticPolicy`, an item = L+1 codes; pass `semantic_ids`): the L+1 codes are
decoded level by level with the policy's decoding cache (`recmodels.decoding.beam_search`), UNCONSTRAINED (no trie) but
with the context's history items excluded (`history_exclusions`), so a generated tuple may be no
item: `Rollouts.valid` is False there and its item id is 0. log pi(item) is the sum of its L+1
code log-probs. `sample_tuple_rollouts` and `first_code_log_probs` take token histories directly
for callers that already hold them.

`Rollouts.first_token_log_probs` is the distribution of the first generated token (atomic: the
item, [N, V] with padding at -inf; semantic: the level-0 code, [N, V0]), for entropy diagnostics
and KL telemetry. `Rollouts.token_logp` [N, G, n_tokens] holds the log-prob of each generated
token (atomic: n_tokens = 1; semantic: the L+1 codes, scored by `tuple_token_log_probs`, which
encodes a history once and steps its G tuples through the policy's decoding cache).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recmodels.decoding.beam_search import admissible_codes, beam_search, build_exclusion, level_log_probs, sample_tuples
from recmodels.models.semantic_policy import SemanticPolicy
from recmodels.tokenization.semantic_ids import SemanticIds


@dataclass
class Rollouts:
    items: torch.Tensor  # [N, G] generated item ids (0 = a generated code tuple that is no item)
    logp: torch.Tensor  # [N, G] log pi(item | context) under the generating policy (masked, renormalized)
    valid: torch.Tensor  # [N, G] bool: the generated id is a real item (atomic tokens: always)
    first_token_log_probs: torch.Tensor  # [N, V] (atomic) or [N, V0] (semantic) masked first-token log-probs
    token_logp: torch.Tensor | None = None  # [N, G, n_tokens] log-prob of each generated token; sums to logp
    tuples: torch.Tensor | None = None  # [N, G, L+1] generated code tuples (semantic IDs only)

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


def sample_from_log_probs(log_probs: torch.Tensor, group_size: int, generator: torch.Generator,
                          distinct: bool = True) -> Rollouts:
    """G items per row drawn from exp(log_probs) [N, V].

    `distinct=True`: G different items, drawn without replacement (Gumbel-top-k: the top G of
    log p + Gumbel noise, with Gumbel = -log(E), E ~ Exp(1)). The group is then no sample of pi:
    the most likely item appears at most once where G independent draws would hold it about G·pi
    times, so the tail is over-represented. `distinct=False`: G independent draws (with
    replacement), a sample of pi whose group mean estimates the expected reward under pi.
    `logp` keeps the graph of `log_probs` (detach it for pi_old), so a loss can reuse the sampling
    forward pass.
    """
    _check_group_size(log_probs, group_size if distinct else 1)
    with torch.no_grad():
        if distinct:
            noise = torch.empty_like(log_probs, dtype=torch.float32).exponential_(generator=generator).log_()
            items = (log_probs.detach().float() - noise).topk(group_size, dim=1).indices  # [N, G]
        else:
            items = torch.multinomial(log_probs.detach().float().exp(), group_size, replacement=True,
                                      generator=generator)  # [N, G]
    logp = log_probs.gather(1, items)
    return Rollouts(items=items, logp=logp, valid=torch.ones_like(items, dtype=torch.bool),
                    first_token_log_probs=log_probs, token_logp=logp.unsqueeze(-1))


def top_k_from_log_probs(log_probs: torch.Tensor, k: int) -> Rollouts:
    """The k most likely items per row of `log_probs` [N, V], most likely first."""
    _check_group_size(log_probs, k)
    items = log_probs.detach().topk(k, dim=1).indices
    logp = log_probs.gather(1, items)
    return Rollouts(items=items, logp=logp, valid=torch.ones_like(items, dtype=torch.bool),
                    first_token_log_probs=log_probs, token_logp=logp.unsqueeze(-1))


# The policy's tokenization builds on this module, hence the imports inside the three functions below.

@torch.no_grad()
def sample_rollouts(policy, histories: torch.Tensor, group_size: int, generator: torch.Generator,
                    mask: torch.Tensor | None = None, semantic_ids: SemanticIds | None = None) -> Rollouts:
    """G distinct items per context sampled without replacement from the masked policy (no grad)."""
    from recmodels.tokenization.items import tokenization_for

    tokenization = tokenization_for(policy, semantic_ids, strict=False)
    return tokenization.sample_rollouts(policy, histories, group_size, generator, mask)


@torch.no_grad()
def top_k_rollouts(policy, histories: torch.Tensor, k: int, mask: torch.Tensor | None = None,
                   semantic_ids: SemanticIds | None = None) -> Rollouts:
    """The policy's k best items per context (beam search of width k), most likely first (no grad).

    Semantic IDs: unconstrained beam search over code tuples, history items excluded."""
    from recmodels.tokenization.items import tokenization_for

    return tokenization_for(policy, semantic_ids, strict=False).top_k_rollouts(policy, histories, k, mask)


def sequence_logprob(policy, histories: torch.Tensor, items: torch.Tensor,
                     mask: torch.Tensor | None = None, semantic_ids: SemanticIds | None = None) -> torch.Tensor:
    """log pi(item | context) [N, G] of given items under the masked policy (grad flows); -inf if masked.

    Semantic IDs: the sum of the item's L+1 code log-probs, one teacher-forced forward per item."""
    from recmodels.tokenization.items import tokenization_for

    if items.dim() != 2 or items.shape[0] != histories.shape[0]:
        raise ValueError(f"items must be [N={histories.shape[0]}, G], got {tuple(items.shape)}")
    return tokenization_for(policy, semantic_ids, strict=False).sequence_logprob(policy, histories, items, mask)


# --- semantic IDs: an item is a tuple of L+1 codes -------------------------------------------------------------


def history_exclusions(semantic_ids: SemanticIds, histories: torch.Tensor) -> list[np.ndarray]:
    """Per context, the code tuples [n, L+1] of its history items: never generated (history_mask's counterpart)."""
    if histories.dim() != 2:
        raise ValueError(f"histories must be [N, T] item ids, got shape {tuple(histories.shape)}")
    h = histories.detach().cpu().numpy()
    if h.size and (h.min() < 0 or h.max() > semantic_ids.n_items):
        raise ValueError(f"histories hold ids outside 0..{semantic_ids.n_items} (min {int(h.min())}, "
                         f"max {int(h.max())})")
    return [semantic_ids.codes[row[row != 0]] for row in h]


def first_code_log_probs(policy: SemanticPolicy, history_tokens: torch.Tensor,
                         exclude: Sequence | None = None) -> torch.Tensor:
    """[N, V0] level-0 code log-probs after each token history [N, S], masked as the sampler masks them.

    One forward in the policy's current mode (grad flows unless the caller disables it). A level-0
    code is masked only when every tuple under it is excluded (see `recmodels.decoding.beam_search`).
    """
    history = policy.clip_history(history_tokens)
    logits = policy.next_token_logits(history)  # [N, V]
    layout, N = policy.layout, history.shape[0]
    exclusion = build_exclusion(exclude, N, layout.level_sizes, None, logits.device)
    prefixes = torch.zeros(N, 1, 0, dtype=torch.long, device=logits.device)
    allowed = admissible_codes(0, layout.level_sizes, prefixes, None, None, exclusion)  # [N, 1, V0] or None
    return level_log_probs(logits[:, None], layout.offsets[0], layout.level_sizes[0], allowed)[:, 0]


def tuple_rollouts(tuples: torch.Tensor, token_logp: torch.Tensor, first: torch.Tensor,
                   semantic_ids: SemanticIds) -> Rollouts:
    """Rollouts of generated code tuples [N, G, L+1] and their per-code log-probs [N, G, L+1]."""
    items = torch.as_tensor(semantic_ids.lookup(tuples), device=tuples.device)  # [N, G], 0 = no item
    return Rollouts(items=items, logp=token_logp.sum(dim=-1), valid=items > 0, first_token_log_probs=first,
                    token_logp=token_logp, tuples=tuples)


def _check_tuple_space(level_sizes: tuple[int, ...], exclude: Sequence | None, n: int) -> None:
    """Every context must leave at least n tuples once its history's tuples are excluded."""
    space = math.prod(level_sizes)
    for row, tuples in enumerate(exclude if exclude is not None else []):
        t = np.asarray(tuples).reshape(-1, len(level_sizes))
        if space - len(t) < n and space - len(np.unique(t, axis=0)) < n:
            raise ValueError(f"context row {row} leaves only {space - len(np.unique(t, axis=0))} code tuples, "
                             f"fewer than group_size={n}")


def _cached_tuple_log_probs(policy: SemanticPolicy, history_tokens: torch.Tensor, tuples: torch.Tensor,
                            exclude: Sequence | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached scoring: the history is encoded once (prefill), the G tuples' first L codes are stepped."""
    layout = policy.layout
    N, G, n = tuples.shape
    cache = policy.prefill(history_tokens)
    exclusion = build_exclusion(exclude, N, layout.level_sizes, None, cache.logits.device)
    cache = cache.expand(G)  # rows n*G + g: the G tuples of history n
    logits = cache.logits  # [N*G, V]
    out = []
    for level in range(n):
        allowed = admissible_codes(level, layout.level_sizes, tuples[..., :level], None, None, exclusion)
        lp = level_log_probs(logits.view(N, G, -1), layout.offsets[level], layout.level_sizes[level], allowed)
        if level == 0:
            first = lp[:, 0]  # [N, V0]: the G rows of a context share the level-0 distribution
        out.append(lp.gather(2, tuples[..., level:level + 1]).squeeze(-1))
        if level < n - 1:
            logits, cache = policy.step((tuples[..., level] + layout.offsets[level]).reshape(-1), cache)
    return torch.stack(out, dim=-1), first


def tuple_token_log_probs(policy: SemanticPolicy, history_tokens: torch.Tensor, tuples: torch.Tensor,
                          exclude: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code log-probs [N, G, L+1] of tuples [N, G, L+1] after token histories [N, S] (grad flows), and the
    level-0 code distribution [N, V0]; unconstrained, `exclude`d tuples masked (as the sampler masks them).

    The history is encoded ONCE and the tuples' codes are stepped through the policy's decoding cache
    (`prefill` / `step`): N*S + N*G*L tokens instead of the N*G*(S+L) of `beam_search.tuple_log_probs` (in eval mode the values are
    the same). In training mode dropout acts on the history encoding and inside each cached step; the full teacher-forced forward per rollout would
    cost ~10x more time per GRPO step on MovieLens-sized histories.
    """
    if tuples.dim() != 3 or tuples.shape[0] != history_tokens.shape[0] or tuples.shape[2] != policy.layout.n_levels:
        raise ValueError(f"tuples must be [{history_tokens.shape[0]}, G, {policy.layout.n_levels}], "
                         f"got {tuple(tuples.shape)}")
    return _cached_tuple_log_probs(policy, history_tokens, tuples, exclude)


def sample_tuple_rollouts(policy: SemanticPolicy, history_tokens: torch.Tensor, group_size: int,
                          generator: torch.Generator, semantic_ids: SemanticIds, exclude: Sequence | None = None,
                          grad: bool = False, distinct: bool = True) -> Rollouts:
    """G code tuples per token history [N, S], sampled (distinct: without replacement; else independent
    draws, see `sample_from_log_probs`), then scored.

    Sampling runs in eval mode without grad (stochastic beam search, `beam_search.sample_tuples`),
    unconstrained (no trie): `items` is 0 and `valid` False where a tuple is no item. `exclude`:
    per row, code tuples never generated (`history_exclusions`). The tuples are then scored by
    `tuple_token_log_probs` in the policy's current mode: `token_logp` [N, G, L+1], `logp` (their
    sum) and `first_token_log_probs` [N, V0] carry the grad when `grad` is True, like the atomic
    sampler's log-probs (pi_old is their detached value).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    _check_tuple_space(policy.layout.level_sizes, exclude, group_size if distinct else 1)
    tuples, _ = sample_tuples(policy, history_tokens, group_size, generator, exclude=exclude, distinct=distinct)
    with torch.set_grad_enabled(grad):
        token_logp, first = tuple_token_log_probs(policy, history_tokens, tuples, exclude)
    return tuple_rollouts(tuples, token_logp, first, semantic_ids)


def top_k_tuple_rollouts(policy: SemanticPolicy, history_tokens: torch.Tensor, k: int, semantic_ids: SemanticIds,
                         exclude: Sequence | None = None) -> Rollouts:
    """The k most likely code tuples per token history [N, S] (unconstrained beam search, `exclude`d tuples
    never generated), scored like the sampler's: most likely first."""
    tuples, _ = beam_search(policy, history_tokens, k, exclude=exclude)
    return tuple_rollouts(tuples, *tuple_token_log_probs(policy, history_tokens, tuples, exclude), semantic_ids)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """[N] entropy of each row of log-probs [N, V] (masked -inf entries contribute 0).

    Not `Categorical(logits=...).entropy()`: it renormalizes the already normalized log-probs, which moves
    the result in the last bits (the AdaGRPO gate compares it with a threshold)."""
    p = log_probs.exp()
    return -torch.where(p > 0, p * log_probs, torch.zeros_like(p)).sum(dim=1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """[N] KL(p || q) of rows of log-probs [N, V] sharing the same support (-inf entries skipped).

    Not `F.kl_div(log_target=True)`: masked entries are -inf in both rows, where it gives 0 * nan = nan."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)
