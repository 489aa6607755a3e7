"""How post-training sees an item: one atomic token, or a tuple of L+1 semantic-ID codes (docs/design.md §3-4).

Every method is written once against this interface; `AtomicItems` (GenerativePolicy) and
`SemanticItems(semantic_ids)` (SemanticPolicy) implement it:

    window_nll(policy, batch)            -> (nll [B, T], mask [B, T], window_logits [B, T, V] or None)
    sample(policy, contexts, n, gen)     -> Rollouts from pi (pi_old = its detached values), token_logp with grad
    sample_reference(ctx, contexts, n, gen) -> Rollouts from pi_ref, token_logp of pi_ref (no grad)
    score(policy, contexts, rollouts)    -> TokenLogProbs of pi (grad flows)
    reference(ctx, contexts, rollouts)   -> TokenLogProbs of pi_ref (no grad); rollouts=None: first token only
    first_token_choices(policy)          -> V of the first-token distribution (entropy normalizer log V)
    kl_to_reference(policy, reference, history, device) -> float, the loop's telemetry
    evaluate(policy, examples, device)   -> valid metrics of one evaluation row
    reference_telemetry(ctx)             -> extra telemetry of the reference's log-probs

Per-token log-probs are [N, G, n_tokens]: n_tokens = 1 for atomic items, L+1 codes for semantic
IDs, and log pi(item | x) is their sum. The first token is the item itself (atomic, [N, V] with
padding at -inf) or the level-0 code ([N, V0], semantic).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recmodels.evaluation.metrics import hit_rate, ndcg
from recmodels.post_training.contexts import RLContexts, context_log_probs
from recmodels.decoding.rollouts import (Rollouts, first_code_log_probs, history_exclusions, history_mask, masked_log_probs,
                                sample_from_log_probs, sample_tuple_rollouts, tuple_token_log_probs)
from recmodels.models.semantic_policy import SemanticPolicy
from recmodels.data.sequences import EvalExamples, TrainingWindows
from recmodels.tokenization.semantic_ids import SemanticIds
from recmodels.tokenization.trie import ItemTrie

EVAL_BEAM_SIZE = 10  # enough for the valid NDCG@10 / HR@10 of model selection


@dataclass
class TokenLogProbs:
    tokens: torch.Tensor | None  # [N, G, n_tokens] log-prob of each token of each rollout (None: not asked)
    first_token: torch.Tensor  # [N, V] or [N, V0] masked first-token distribution


def window_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, S] -log p(target) per position of logits [B, S, V]; 0 where the target is padding 0."""
    B, S, V = logits.shape
    # flat [B*S, V] rows: faster than cross_entropy on the transposed [B, V, S] layout
    return F.cross_entropy(logits.reshape(B * S, V), targets.reshape(B * S), ignore_index=0,
                           reduction="none").view(B, S)


@torch.no_grad()
def kl_to_reference(policy, reference, history: torch.Tensor, device: torch.device, batch_size: int = 256) -> float:
    """Mean KL(pi || pi_ref) of the next-item distributions over the catalog (padding excluded)."""
    was_training = policy.training
    policy.eval()
    total = 0.0
    for s in range(0, history.shape[0], batch_size):
        h = history[s:s + batch_size].to(device)
        logp = F.log_softmax(policy.next_item_logits(h)[:, 1:].float(), dim=-1)  # [b, V-1]
        logq = F.log_softmax(reference.next_item_logits(h)[:, 1:].float(), dim=-1)
        total += (logp.exp() * (logp - logq)).sum().item()
    policy.train(was_training)
    return total / history.shape[0]


class AtomicItems:
    """One token per item: a context's next-item distribution is one forward pass."""

    name = "atomic"

    def check(self, policy, interactions=None) -> None:
        if isinstance(policy, SemanticPolicy):
            raise ValueError("a SemanticPolicy generates code tuples: use SemanticItems(semantic_ids)")

    def window_nll(self, policy, batch: TrainingWindows):
        """-log pi(a_t | x_<=t) [B, T], real-target mask [B, T] and the window logits [B, T, V]."""
        logits, _ = policy(batch.inputs)  # [B, T, V]
        return window_cross_entropy(logits, batch.targets), batch.targets != 0, logits

    def sample(self, policy, contexts: RLContexts, n: int, generator: torch.Generator,
               window_logits: torch.Tensor | None = None) -> Rollouts:
        """n distinct items per context by Gumbel-top-k on the forward whose log-probs carry the grad."""
        mask = history_mask(contexts.history, policy.cfg.vocab_size)
        return sample_from_log_probs(context_log_probs(policy, contexts, mask, window_logits), n, generator)

    def sample_reference(self, ctx, contexts: RLContexts, n: int, generator: torch.Generator) -> Rollouts:
        return sample_from_log_probs(self._reference_log_probs(ctx, contexts), n, generator)

    def score(self, policy, contexts: RLContexts, rollouts: Rollouts) -> TokenLogProbs:
        logp_all = context_log_probs(policy, contexts, history_mask(contexts.history, policy.cfg.vocab_size))
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

    def evaluate(self, policy, examples: EvalExamples, device) -> dict[str, float]:
        """Full-catalog ranking of the valid targets, history masked (the evaluation protocol)."""
        from recmodels.evaluation.ranking import target_ranks

        ranks = target_ranks(policy, examples, device=device)
        return {"valid_ndcg@10": float(ndcg(ranks, 10).mean()), "valid_hr@10": float(hit_rate(ranks, 10).mean())}


class SemanticItems:
    """An item is L+1 code tokens; rollouts are whole code tuples, some of which are no item.

    - NLL: one forward over `semantic_ids.window_tokens`; an item's NLL is the sum of its L+1
      code NLLs (= -log pi(item), the policy's level-aware logits make codes conditionals).
    - Rollouts: `recmodels.decoding.rollouts.sample_tuple_rollouts`, unconstrained (no trie) with the
      context's history items excluded. Per-code log-probs of pi (with grad) and of pi_ref (no
      grad) come from the same scorer, `rollouts.tuple_token_log_probs`: the values of
      `beam_search.tuple_log_probs`, computed with the KV cache when dropout is off.
    - First token and KL telemetry: the level-0 code distribution. `kl_to_reference` is the KL of
      pi's and pi_ref's level-0 code distributions (not the KL over whole tuples, which would need
      a sum over every tuple); the entropy diagnostic is normalized by log V0.
    - Valid evaluation: constrained beam search (beam 10, the trie of real items) ranks the valid
      targets; `valid_hallucination_rate` is the share of no-item tuples among the top 10 of an
      unconstrained beam search (beam 10) on ALL the valid examples: it costs about what the
      constrained one costs (943 users, 1682 items, codes (32, 32, 32, 4), d_model 64, 50-item
      histories: 2.3 s vs 2.6 s on one CPU thread).
    """

    name = "semantic"

    def __init__(self, semantic_ids: SemanticIds):
        if not isinstance(semantic_ids, SemanticIds):
            raise ValueError(f"semantic_ids must be a SemanticIds, got {type(semantic_ids).__name__}")
        self.semantic_ids = semantic_ids
        self.trie = ItemTrie.from_semantic_ids(semantic_ids)

    def check(self, policy, interactions=None) -> None:
        """The policy speaks these codes and the interactions only name items that have a tuple."""
        if not isinstance(policy, SemanticPolicy):
            raise ValueError(f"semantic_ids are for a SemanticPolicy, got a {type(policy).__name__}")
        if tuple(policy.layout.level_sizes) != tuple(self.semantic_ids.level_sizes):
            raise ValueError(f"semantic_ids level sizes {tuple(self.semantic_ids.level_sizes)} differ from the "
                             f"policy's {tuple(policy.layout.level_sizes)}")
        if interactions is not None and len(interactions):
            top = int(interactions["item_idx"].max())
            if top > self.semantic_ids.n_items:
                raise ValueError(f"interactions column 'item_idx' holds item {top}, but semantic_ids only cover "
                                 f"items 1..{self.semantic_ids.n_items}")

    def prompt(self, contexts: RLContexts) -> tuple[torch.Tensor, list]:
        """History tokens [N, T*(L+1)] and excluded code tuples (the history's items) of the contexts, memoized."""
        if "semantic" not in contexts.encodings:
            contexts.encodings["semantic"] = (self.semantic_ids.items_to_tokens(contexts.history),
                                              history_exclusions(self.semantic_ids, contexts.history))
        return contexts.encodings["semantic"]

    def window_nll(self, policy, batch: TrainingWindows):
        """Per-item NLL [B, T] = sum of the item's L+1 code NLLs, from ONE forward over the window's tokens."""
        tokens, targets = self.semantic_ids.window_tokens(batch.inputs, batch.targets)  # [B, (T+1)(L+1) - 1]
        logits, _ = policy(tokens)  # [B, S, V]
        code_nll = window_cross_entropy(logits, targets)  # [B, S]
        B, T = batch.inputs.shape
        n = policy.layout.n_levels
        # the item that is the target at window position t has its codes predicted at (t+1)(L+1) - 1 + l
        nll = code_nll[:, n - 1:].reshape(B, T, n).sum(dim=-1)
        return nll, batch.targets != 0, None

    def sample(self, policy, contexts: RLContexts, n: int, generator: torch.Generator,
               window_logits: torch.Tensor | None = None) -> Rollouts:
        """n distinct tuples per context (sampled in eval mode), scored with grad in the policy's current mode."""
        tokens, exclude = self.prompt(contexts)
        return sample_tuple_rollouts(policy, tokens, n, generator, self.semantic_ids, exclude, grad=True)

    def sample_reference(self, ctx, contexts: RLContexts, n: int, generator: torch.Generator) -> Rollouts:
        tokens, exclude = self.prompt(contexts)
        return sample_tuple_rollouts(ctx.reference, tokens, n, generator, self.semantic_ids, exclude)

    def score(self, policy, contexts: RLContexts, rollouts: Rollouts) -> TokenLogProbs:
        tokens, exclude = self.prompt(contexts)
        token_logp, first = tuple_token_log_probs(policy, tokens, rollouts.tuples, exclude)
        return TokenLogProbs(tokens=token_logp, first_token=first)

    @torch.no_grad()
    def reference(self, ctx, contexts: RLContexts, rollouts: Rollouts | None = None) -> TokenLogProbs:
        tokens, exclude = self.prompt(contexts)
        if rollouts is None:
            return TokenLogProbs(tokens=None, first_token=first_code_log_probs(ctx.reference, tokens, exclude))
        token_logp, first = tuple_token_log_probs(ctx.reference, tokens, rollouts.tuples, exclude)
        return TokenLogProbs(tokens=token_logp, first_token=first)

    def reference_telemetry(self, ctx) -> dict[str, float]:
        return {}

    def first_token_choices(self, policy) -> int:
        return policy.layout.level_sizes[0]

    @torch.no_grad()
    def kl_to_reference(self, policy, reference, history: torch.Tensor, device: torch.device,
                        batch_size: int = 256) -> float:
        """Mean KL(pi || pi_ref) of the level-0 code distributions after each item history [N, T]."""
        was_training = policy.training
        policy.eval()
        offset, size = policy.layout.offsets[0], policy.layout.level_sizes[0]
        total = 0.0
        for s in range(0, history.shape[0], batch_size):
            tokens = self.semantic_ids.items_to_tokens(history[s:s + batch_size].to(device))
            logp = F.log_softmax(policy.next_token_logits(tokens)[:, offset:offset + size].float(), dim=-1)
            logq = F.log_softmax(reference.next_token_logits(tokens)[:, offset:offset + size].float(), dim=-1)
            total += (logp.exp() * (logp - logq)).sum().item()
        policy.train(was_training)
        return total / history.shape[0]

    def evaluate(self, policy, examples: EvalExamples, device) -> dict[str, float]:
        """Constrained beam search ranks the valid targets; an unconstrained one measures hallucination."""
        from recmodels.evaluation.hallucination import evaluate_beams

        ranked = evaluate_beams(policy, examples, self.semantic_ids, beam_size=EVAL_BEAM_SIZE, trie=self.trie,
                                device=device)
        free = evaluate_beams(policy, examples, self.semantic_ids, beam_size=EVAL_BEAM_SIZE, device=device)
        return {"valid_ndcg@10": float(ndcg(ranked.ranks, 10).mean()),
                "valid_hr@10": float(hit_rate(ranked.ranks, 10).mean()),
                "valid_hallucination_rate": free.hallucination_rate}


def tokenization_for(policy, semantic_ids: SemanticIds | None = None) -> AtomicItems | SemanticItems:
    """The tokenization a policy speaks: SemanticItems for a SemanticPolicy (semantic_ids required), else atomic."""
    if isinstance(policy, SemanticPolicy):
        if semantic_ids is None:
            raise ValueError("the pretrained policy is a SemanticPolicy: pass semantic_ids= (the SemanticIds its "
                             "code tokens were built from)")
        return SemanticItems(semantic_ids)
    if semantic_ids is not None:
        raise ValueError(f"semantic_ids were given but the pretrained policy is a {type(policy).__name__} over "
                         "atomic item tokens; semantic_ids are for a SemanticPolicy")
    return AtomicItems()


def tokenization_of(ctx) -> AtomicItems | SemanticItems:
    """The tokenization of a method context (atomic when there is no context)."""
    return getattr(ctx, "tokenization", None) or AtomicItems()
