"""Atomic item tokens: one token per item (docs/design.md §3).

Item i is token i (0 = padding), so a history's next-item distribution over the whole catalog is one
forward pass of a `GenerativePolicy`, ranking is full-catalog (`recmodels.evaluation.ranking`), a
rollout is one token and no generated id can be a non-item (the hallucination rate is 0).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from recmodels.data.sequences import EvalExamples, TrainingWindows
from recmodels.decoding.rollouts import (Rollouts, history_mask, masked_log_probs, next_item_log_probs,
                                         sample_from_log_probs, top_k_from_log_probs)
from recmodels.evaluation.hallucination import BEAM_SIZE
from recmodels.evaluation.ranking import (masked_logits, rank_catalog, ranks_from_scores, score_catalog,
                                         scored_batches, target_ranks, tie_draws)
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.runtime import eval_mode
from recmodels.tokenization.interface import (ItemTokenization, Ranking, TokenLogProbs, decoding_record,
                                              valid_metrics, window_cross_entropy)

if TYPE_CHECKING:  # post_training builds on this package: its types are hints only here
    from recmodels.post_training.contexts import RLContexts


@torch.no_grad()
def catalog_log_probs(policy, history: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """[N, V-1] next-item log-probs over the catalog (padding excluded) after each history [N, T], on the CPU."""
    with eval_mode(policy):
        return torch.cat([F.log_softmax(policy.next_item_logits(history[s:s + batch_size].to(device))[:, 1:].float(),
                                        dim=-1).cpu() for s in range(0, history.shape[0], batch_size)])


def summed_kl(logp: torch.Tensor, logq: torch.Tensor) -> float:
    """Sum over rows of KL(p || q), both given as log-probs [b, V-1]."""
    return F.kl_div(logq, logp, log_target=True, reduction="sum").item()


def kl_to_reference(policy, reference, history: torch.Tensor, device: torch.device, batch_size: int = 256) -> float:
    """Mean KL(pi || pi_ref) of the next-item distributions over the catalog (padding excluded)."""
    logp = catalog_log_probs(policy, history, device, batch_size)  # [N, V-1]
    logq = catalog_log_probs(reference, history, device, batch_size)
    return sum(summed_kl(logp[s:s + batch_size], logq[s:s + batch_size])
               for s in range(0, history.shape[0], batch_size)) / history.shape[0]


@torch.no_grad()
def valid_check_from_one_pass(reference, examples: EvalExamples, device: torch.device,
                              batch_size: int = 256) -> Callable[[GenerativePolicy], dict[str, float]]:
    """`ItemTokenization.valid_check` in one forward pass per check: the policy's logits serve both the KL and
    the ranks, and the frozen reference's log-probs are computed here, once. The same numbers as
    `kl_to_reference` and `target_ranks` (the same batches, the same tie draws)."""
    reference_logp = catalog_log_probs(reference, examples.history, device, batch_size)  # [N, V-1]

    @torch.no_grad()
    def check(policy: GenerativePolicy) -> dict[str, float]:
        ranks = np.empty(len(examples), dtype=np.int64)
        draws = tie_draws(len(examples))
        kl = 0.0
        for rows, logits, mask in scored_batches(policy, examples.history, examples.seen, examples.targets,
                                                 batch_size, device):  # logits [b, V], padding at -inf
            kl += summed_kl(F.log_softmax(logits[:, 1:], dim=-1), reference_logp[rows])
            ranks[rows] = ranks_from_scores(masked_logits(logits, mask), examples.targets[rows].cpu(),
                                            draws[rows]).numpy()
        return {"kl_to_reference": kl / len(examples), **valid_metrics(ranks)}

    return check


def _context_log_probs(policy, contexts: RLContexts, mask: torch.Tensor, window_logits=None) -> torch.Tensor:
    from recmodels.post_training.contexts import context_log_probs  # post_training builds on this package

    return context_log_probs(policy, contexts, mask, window_logits)


class AtomicItems(ItemTokenization):
    """One token per item: a context's next-item distribution is one forward pass."""

    name = "atomic"
    policy_class = GenerativePolicy
    config_class = PolicyConfig

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def speaks(cls, of) -> bool:
        """Also any policy that scores the next item over the catalog (`next_item_logits`, see ranking.py)."""
        return super().speaks(of) or callable(getattr(of, "next_item_logits", None))

    @classmethod
    def with_codes(cls, codes=None, strict: bool = True) -> "AtomicItems":
        if codes is not None and strict:
            raise ValueError(f"semantic_ids were given but the pretrained policy is a {cls.policy_class.__name__} "
                             "over atomic item tokens, which read no item codes")
        return cls()

    def vocabulary(self, n_items: int) -> dict:
        return {"vocab_size": n_items + 1}

    def check_config(self, config: PolicyConfig, n_items: int) -> None:
        if config.vocab_size != n_items + 1:
            raise ValueError(f"policy_config.vocab_size={config.vocab_size} but n_items={n_items} "
                             f"needs {n_items + 1} (token 0 is padding)")

    def n_items(self, policy) -> int:
        return policy.cfg.vocab_size - 1

    # --- training and model selection ---------------------------------------------------------------------------

    def window_tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs, targets

    def distillation_targets(self, item_probs: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """One token per item: the teacher's item distributions themselves."""
        return item_probs

    def window_nll(self, policy, batch: TrainingWindows):
        """-log pi(a_t | x_<=t) [B, T], real-target mask [B, T] and the window logits [B, T, V]."""
        logits, _ = policy(batch.inputs)  # [B, T, V]
        return window_cross_entropy(logits, batch.targets), batch.targets != 0, logits

    def valid_ranks(self, policy, examples: EvalExamples, device=None) -> np.ndarray:
        """Full-catalog ranks of the valid targets, history masked (the evaluation protocol)."""
        return target_ranks(policy, examples, device=device)

    # --- evaluation ---------------------------------------------------------------------------------------------

    def rank(self, policy, examples: EvalExamples, beam_size: int = BEAM_SIZE, unmasked: bool = True) -> Ranking:
        """Full-catalog ranks (no beams: `beam_size` is unused); with `unmasked`, both protocols and the top 10
        from one scoring pass. An atomic policy cannot hallucinate."""
        if not unmasked:
            ranks = target_ranks(policy, examples)
            return Ranking(ranks=ranks, decoding=decoding_record(self.name, None, 0.0, ranks, ranks))
        both = rank_catalog(policy, examples, k=10)
        return Ranking(ranks=both.ranks, decoding=decoding_record(self.name, None, 0.0, both.ranks, both.ranks),
                       top10=both.top_items, ranks_unmasked=both.ranks_unmasked,
                       seen_in_top10_unmasked=both.seen_in_top10_unmasked)

    # --- rollouts over item histories ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_rollouts(self, policy, histories: torch.Tensor, group_size: int, generator: torch.Generator,
                        mask: torch.Tensor | None = None) -> Rollouts:
        return sample_from_log_probs(next_item_log_probs(policy, histories, mask), group_size, generator)

    @torch.no_grad()
    def top_k_rollouts(self, policy, histories: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> Rollouts:
        return top_k_from_log_probs(next_item_log_probs(policy, histories, mask), k)

    def sequence_logprob(self, policy, histories: torch.Tensor, items: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        return next_item_log_probs(policy, histories, mask).gather(1, items)

    # --- rollouts over RL contexts ------------------------------------------------------------------------------

    def sample(self, policy, contexts: RLContexts, n: int, generator: torch.Generator,
               window_logits: torch.Tensor | None = None, distinct: bool = True) -> Rollouts:
        """n items per context (distinct: Gumbel-top-k) from the forward whose log-probs carry the grad."""
        mask = history_mask(contexts.history, policy.cfg.vocab_size)
        return sample_from_log_probs(_context_log_probs(policy, contexts, mask, window_logits), n, generator,
                                     distinct)

    def sample_reference(self, ctx, contexts: RLContexts, n: int, generator: torch.Generator) -> Rollouts:
        return sample_from_log_probs(self._reference_log_probs(ctx, contexts), n, generator)

    def score(self, policy, contexts: RLContexts, rollouts: Rollouts) -> TokenLogProbs:
        logp_all = _context_log_probs(policy, contexts, history_mask(contexts.history, policy.cfg.vocab_size))
        return TokenLogProbs(tokens=logp_all.gather(1, rollouts.items)[..., None], first_token=logp_all)

    def reference(self, ctx, contexts: RLContexts, rollouts: Rollouts | None = None) -> TokenLogProbs:
        ref_all = self._reference_log_probs(ctx, contexts)
        tokens = None if rollouts is None else ref_all.gather(1, rollouts.items)[..., None]
        return TokenLogProbs(tokens=tokens, first_token=ref_all)

    def _reference_log_probs(self, ctx, contexts: RLContexts) -> torch.Tensor:
        """[N, V] masked next-item log-probs of pi_ref, from the memoized reference cache."""
        mask = history_mask(contexts.history, ctx.reference.cfg.vocab_size)
        return masked_log_probs(ctx.reference_cache.log_probs(contexts.history), mask)

    def reference_telemetry(self, ctx) -> dict[str, float]:
        return {"ref_cache_hit_rate": ctx.reference_cache.last_hit_rate}

    def first_token_choices(self, policy) -> int:
        return policy.cfg.vocab_size - 1  # the catalog, padding excluded

    def kl_to_reference(self, policy, reference, history: torch.Tensor, device: torch.device) -> float:
        return kl_to_reference(policy, reference, history, device)

    def valid_check(self, reference, examples: EvalExamples, device):
        return valid_check_from_one_pass(reference, examples, device)

    # --- serving ------------------------------------------------------------------------------------------------

    def recommend(self, policy, history: torch.Tensor, seen: list[np.ndarray],
                  ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The top k of each row's softmax over the catalog minus its `seen` items (one scoring pass)."""
        logits = score_catalog(policy, history, seen)  # [B, V], seen and padding at -inf
        probs = torch.softmax(logits, dim=1)
        out = []
        for row, k in enumerate(ks):
            top = probs[row].topk(min(k, int(torch.isfinite(logits[row]).sum())))
            out.append((top.indices.numpy(), top.values.numpy()))
        return out
