"""Semantic-ID item tokens: an item is a tuple of L+1 codes (docs/design.md §3-5).

A `SemanticPolicy` reads and generates the L+1 code tokens of each item (`semantic_ids.TokenLayout`),
so generated tuples may be no item at all (hallucination):

- NLL: one forward over `semantic_ids.window_tokens`; an item's NLL is the sum of its L+1 code NLLs
  (= -log pi(item), the policy's level-aware logits make codes conditionals).
- Rollouts: `recmodels.decoding.rollouts.sample_tuple_rollouts`, unconstrained (no trie) with the
  context's history items excluded. Per-code log-probs of pi (with grad) and of pi_ref (no grad)
  come from the same scorer, `rollouts.tuple_token_log_probs`: the values of
  `beam_search.tuple_log_probs`, computed with the policy's decoding cache.
- First token and KL telemetry: the level-0 code distribution. `kl_to_reference` is the KL of pi's
  and pi_ref's level-0 code distributions (not the KL over whole tuples, which would need a sum over
  every tuple); the entropy diagnostic is normalized by log V0.
- Model selection: constrained beam search (`VALID_BEAM_SIZE`, the trie of real items) ranks the
  valid targets; post-training's `valid_hallucination_rate` is the share of no-item tuples among the
  top 10 of an unconstrained beam search on ALL the valid examples: it costs about what the
  constrained one costs (943 users, 1682 items, codes (32, 32, 32, 4), d_model 64, 50-item
  histories: 2.3 s vs 2.6 s on one CPU thread).
- Evaluation and promotion: ranks, top 10 and the unmasked protocol from CONSTRAINED beam search
  (`BEAM_SIZE` beams, a target outside them a miss), the hallucination rate from UNCONSTRAINED beam
  search (its top `HALLUCINATION_K` tuples).
- Serving: constrained beam search, the history excluded; the scores are the policy's own probabilities of
  the generated items (`beam_search`: ranked as the policy ranks them, nothing renormalized).
"""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from recmodels.data.sequences import EvalExamples, TrainingWindows
from recmodels.decoding.beam_search import beam_search
from recmodels.decoding.rollouts import (Rollouts, first_code_log_probs, history_exclusions, sample_tuple_rollouts,
                                         top_k_tuple_rollouts, tuple_token_log_probs)
from recmodels.evaluation.hallucination import (BEAM_SIZE, HALLUCINATION_K, VALID_BEAM_SIZE, beam_ranks,
                                                evaluate_beams, history_items_in_beams)
from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig
from recmodels.runtime import eval_mode
from recmodels.tokenization.interface import (ItemTokenization, Ranking, TokenLogProbs, decoding_record,
                                              window_cross_entropy)
from recmodels.tokenization.semantic_ids import SemanticIds
from recmodels.tokenization.trie import ItemTrie

if TYPE_CHECKING:  # post_training builds on this package: its types are hints only here
    from recmodels.post_training.contexts import RLContexts


class SemanticItems(ItemTokenization):
    """An item is L+1 code tokens; rollouts are whole code tuples, some of which are no item."""

    name = "semantic"
    policy_class = SemanticPolicy
    config_class = SemanticPolicyConfig
    codes_key = "semantic_ids"

    def __init__(self, semantic_ids: SemanticIds):
        if not isinstance(semantic_ids, SemanticIds):
            raise ValueError(f"semantic_ids must be a SemanticIds, got {type(semantic_ids).__name__}")
        self.semantic_ids = semantic_ids

    @cached_property
    def trie(self) -> ItemTrie:
        """The prefix trie of real items that constrained decoding walks."""
        return ItemTrie.from_semantic_ids(self.semantic_ids)

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def with_codes(cls, codes: SemanticIds | None = None, strict: bool = True) -> "SemanticItems":
        if codes is None:
            raise ValueError("a semantic-ID policy needs the semantic_ids it was trained with: pass semantic_ids= "
                             "(the SemanticIds its code tokens were built from)")
        return cls(codes)

    @classmethod
    def load_codes(cls, path) -> SemanticIds:
        if not path:
            raise ValueError(f"the {cls.name} tokenization reads its item codes from a {cls.codes_key!r} file, "
                             "and none is named")
        return SemanticIds.load(path)

    def vocabulary(self, n_items: int) -> dict:
        return {"level_sizes": self.semantic_ids.level_sizes, "n_items": n_items}

    def check_config(self, config: SemanticPolicyConfig, n_items: int) -> None:
        if n_items != self.semantic_ids.n_items:
            raise ValueError(f"semantic_ids cover {self.semantic_ids.n_items} items but n_items={n_items}")
        if config.n_items not in (0, n_items):
            raise ValueError(f"SemanticPolicyConfig.n_items={config.n_items} differs from the semantic IDs' "
                             f"{n_items} items")
        if tuple(config.level_sizes) != tuple(self.semantic_ids.level_sizes):
            raise ValueError(f"SemanticPolicyConfig.level_sizes={config.level_sizes} differ from the semantic "
                             f"IDs' level sizes {self.semantic_ids.level_sizes}")

    def build_policy(self, config: SemanticPolicyConfig) -> SemanticPolicy:
        policy = SemanticPolicy(config)
        if getattr(policy, "item_codes", None) is not None:  # item_prefixes: rows for these items' prefixes
            policy.set_items(torch.from_numpy(self.semantic_ids.codes[1:]))
        return policy

    def check(self, policy, interactions=None) -> None:
        """The policy speaks these codes and the interactions only name items that have a tuple."""
        super().check(policy)
        if tuple(policy.layout.level_sizes) != tuple(self.semantic_ids.level_sizes):
            raise ValueError(f"semantic_ids level sizes {tuple(self.semantic_ids.level_sizes)} differ from the "
                             f"policy's {tuple(policy.layout.level_sizes)}")
        held = getattr(policy, "item_codes", None)
        if held is not None and not torch.equal(held.cpu(), torch.from_numpy(self.semantic_ids.codes[1:])):
            raise ValueError("the policy holds other item code tuples (item_prefixes) than these semantic_ids: "
                             "it was trained on another codebook")
        if interactions is not None and len(interactions):
            top = int(interactions["item_idx"].max())
            if top > self.semantic_ids.n_items:
                raise ValueError(f"interactions column 'item_idx' holds item {top}, but semantic_ids only cover "
                                 f"items 1..{self.semantic_ids.n_items}")

    def n_items(self, policy) -> int:
        return self.semantic_ids.n_items

    # --- training and model selection ---------------------------------------------------------------------------

    def window_tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item of the windows [N, T] becomes its L+1 codes: [N, (T+1)(L+1) - 1] tokens and targets."""
        return self.semantic_ids.window_tokens(inputs, targets)

    def distillation_targets(self, item_probs: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """At code level l of each target item, the teacher's probability of each code among the items that share
        the target's codes 0..l-1 (the true prefix the policy reads there), renormalized: [n * (L+1), V]."""
        layout = self.semantic_ids.layout
        codes = torch.as_tensor(self.semantic_ids.codes, device=item_probs.device)  # [n_items + 1, L+1]
        keys = layout.prefix_keys(codes)  # [n_items + 1, L+2]: at l, codes 0..l-1
        item_probs = item_probs.clone()
        item_probs[:, 0] = 0.0  # the padding row is no item
        n = len(target_items)
        out = item_probs.new_zeros(n, layout.n_levels, layout.vocab_size)
        for level, offset in enumerate(layout.offsets):
            same_prefix = keys[None, :, level] == keys[target_items, level][:, None]  # [n, n_items + 1]
            out[:, level].scatter_add_(1, (codes[:, level] + offset).expand(n, -1), item_probs * same_prefix)
        return (out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)).view(n * layout.n_levels, -1)

    def window_nll(self, policy, batch: TrainingWindows):
        """Per-item NLL [B, T] = sum of the item's L+1 code NLLs, from ONE forward over the window's tokens."""
        tokens, targets = self.window_tokens(batch.inputs, batch.targets)  # [B, (T+1)(L+1) - 1]
        logits, _ = policy(tokens)  # [B, S, V]
        code_nll = window_cross_entropy(logits, targets)  # [B, S]
        B, T = batch.inputs.shape
        n = policy.layout.n_levels
        # the item that is the target at window position t has its codes predicted at (t+1)(L+1) - 1 + l
        nll = code_nll[:, n - 1:].reshape(B, T, n).sum(dim=-1)
        return nll, batch.targets != 0, None

    def valid_ranks(self, policy, examples: EvalExamples, device=None) -> np.ndarray:
        """Ranks of the valid targets among the constrained beams (beyond them: VALID_BEAM_SIZE + 1)."""
        return evaluate_beams(policy, examples, self.semantic_ids, beam_size=VALID_BEAM_SIZE, trie=self.trie,
                              device=device).ranks

    def evaluate(self, policy, examples: EvalExamples, device) -> dict[str, float]:
        """Constrained beam search ranks the valid targets; an unconstrained one measures hallucination."""
        accuracy = super().evaluate(policy, examples, device)
        free = evaluate_beams(policy, examples, self.semantic_ids, beam_size=VALID_BEAM_SIZE, device=device)
        return {**accuracy, "valid_hallucination_rate": free.hallucination_rate}

    # --- evaluation ---------------------------------------------------------------------------------------------

    def rank(self, policy, examples: EvalExamples, beam_size: int = BEAM_SIZE, unmasked: bool = True) -> Ranking:
        """Constrained ranks (misses at MISS_RANK) and top 10, the hallucination rate of the unconstrained top
        10; with `unmasked`, one more constrained beam search that does not exclude the history."""
        if beam_size < HALLUCINATION_K:
            raise ValueError(f"beam_size must be >= {HALLUCINATION_K}, got {beam_size}")
        constrained = evaluate_beams(policy, examples, self.semantic_ids, beam_size=beam_size, trie=self.trie)
        free = evaluate_beams(policy, examples, self.semantic_ids, beam_size=beam_size, trie=None).top(HALLUCINATION_K)
        ranks = beam_ranks(constrained)
        ranking = Ranking(ranks=ranks, decoding=decoding_record(self.name, beam_size, free.hallucination_rate, ranks,
                                                                free.ranks),
                          top10=constrained.items[:, :10])
        if unmasked:
            beams = evaluate_beams(policy, examples, self.semantic_ids, beam_size=beam_size, trie=self.trie,
                                   exclude_history=False)
            ranking.ranks_unmasked = beam_ranks(beams)
            ranking.seen_in_top10_unmasked = history_items_in_beams(beams.items, beams.real_beams(), examples)
        return ranking

    # --- rollouts over item histories ---------------------------------------------------------------------------

    def history_prompt(self, histories: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list]:
        """Token histories [N, T*(L+1)] of item histories [N, T] and their items' code tuples (never generated)."""
        if mask is not None:
            raise ValueError("mask is an atomic-token [N, V] mask; a SemanticPolicy excludes the history's items "
                             "itself")
        return self.semantic_ids.items_to_tokens(histories), history_exclusions(self.semantic_ids, histories)

    @torch.no_grad()
    def sample_rollouts(self, policy, histories: torch.Tensor, group_size: int, generator: torch.Generator,
                        mask: torch.Tensor | None = None) -> Rollouts:
        tokens, exclude = self.history_prompt(histories, mask)
        return sample_tuple_rollouts(policy, tokens, group_size, generator, self.semantic_ids, exclude)

    @torch.no_grad()
    def top_k_rollouts(self, policy, histories: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> Rollouts:
        tokens, exclude = self.history_prompt(histories, mask)
        return top_k_tuple_rollouts(policy, tokens, k, self.semantic_ids, exclude)

    def sequence_logprob(self, policy, histories: torch.Tensor, items: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        """The sum of each item's L+1 code log-probs."""
        n_items = self.semantic_ids.n_items
        if items.numel() and (int(items.min()) < 1 or int(items.max()) > n_items):
            raise ValueError(f"items must be item ids 1..{n_items}, got min {int(items.min())}, "
                             f"max {int(items.max())}")
        tokens, exclude = self.history_prompt(histories, mask)
        tuples = torch.as_tensor(self.semantic_ids.codes, device=items.device)[items]  # [N, G, L+1]
        token_logp, _ = tuple_token_log_probs(policy, tokens, tuples, exclude)
        return token_logp.sum(dim=-1)

    # --- rollouts over RL contexts ------------------------------------------------------------------------------

    def prompt(self, contexts: RLContexts) -> tuple[torch.Tensor, list]:
        """History tokens [N, T*(L+1)] and excluded code tuples (the history's items) of the contexts, memoized."""
        if "semantic" not in contexts.encodings:
            contexts.encodings["semantic"] = self.history_prompt(contexts.history)
        return contexts.encodings["semantic"]

    def sample(self, policy, contexts: RLContexts, n: int, generator: torch.Generator,
               window_logits: torch.Tensor | None = None, distinct: bool = True) -> Rollouts:
        """n tuples per context (sampled in eval mode; distinct or independent draws), scored with grad in the
        policy's current mode."""
        tokens, exclude = self.prompt(contexts)
        return sample_tuple_rollouts(policy, tokens, n, generator, self.semantic_ids, exclude, grad=True,
                                     distinct=distinct)

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

    def first_token_choices(self, policy) -> int:
        return policy.layout.level_sizes[0]

    @torch.no_grad()
    def kl_to_reference(self, policy, reference, history: torch.Tensor, device: torch.device,
                        batch_size: int = 256) -> float:
        """Mean KL(pi || pi_ref) of the level-0 code distributions after each item history [N, T]."""
        offset, size = policy.layout.offsets[0], policy.layout.level_sizes[0]
        total = 0.0
        with eval_mode(policy):
            for s in range(0, history.shape[0], batch_size):
                tokens = self.semantic_ids.items_to_tokens(history[s:s + batch_size].to(device))
                logp = F.log_softmax(policy.next_token_logits(tokens)[:, offset:offset + size].float(), dim=-1)
                logq = F.log_softmax(reference.next_token_logits(tokens)[:, offset:offset + size].float(), dim=-1)
                total += F.kl_div(logq, logp, log_target=True, reduction="sum").item()  # sum of KL(p || q) over rows
        return total / history.shape[0]

    # --- serving ------------------------------------------------------------------------------------------------

    def recommend(self, policy, history: torch.Tensor, seen: list[np.ndarray],
                  ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each row's constrained beams, its `seen` items excluded (one beam search per row)."""
        return [self._beam_top_k(policy, history[row:row + 1], seen[row], k) for row, k in enumerate(ks)]

    def _beam_top_k(self, policy, history: torch.Tensor, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most probable unseen items of one history [1, T] by constrained beam search, and the policy's
        probabilities of them (k capped at the unseen catalog)."""
        k = min(k, self.semantic_ids.n_items - len(seen))
        if k < 1:
            return np.zeros(0, np.int64), np.zeros(0)
        device = next(policy.parameters()).device
        tokens = self.semantic_ids.items_to_tokens(history).to(device)
        exclude = [self.semantic_ids.codes[np.asarray(seen, np.int64)]]
        tuples, logp = beam_search(policy, tokens, k, trie=self.trie, exclude=exclude)
        return self.semantic_ids.lookup(tuples[0].cpu()), torch.exp(logp[0]).cpu().numpy()
