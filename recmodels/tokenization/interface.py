"""The tokenization interface: how a policy sees an item (docs/design.md §3-5).

A tokenization says how items become the tokens a policy reads and generates. Pretraining,
post-training, evaluation, promotion and serving reach a policy's items only through one, so
none of them asks which tokenization it holds:

    building     name, policy_class, config_class, codes_key; with_codes(codes), load_codes(path),
                 vocabulary(n_items), check_config(config, n_items), build_policy(config), check(policy, interactions),
                 n_items(policy)
    training     window_tokens(inputs, targets) -> the token windows of the next-token NLL (pretraining);
                 distillation_targets(item_probs, target_items) -> a teacher's distributions over these tokens;
                 window_nll(policy, batch) -> per-item NLL [B, T] (post-training)
    selection    valid_ranks(policy, examples, device); evaluate(...) -> a post-training evaluation row
    evaluation   rank(policy, examples, beam_size, unmasked) -> Ranking: both protocols, top 10, decoding record
    rollouts     sample_rollouts / top_k_rollouts / sequence_logprob over item histories, and over RL contexts
                 sample, sample_reference, score, reference, reference_telemetry, first_token_choices,
                 kl_to_reference (see the methods of `recmodels.post_training`)
    serving      recommend(policy, history, seen, ks) -> per row, the top-k items and their probabilities

`AtomicItems` (atomic_items.py: one token per item) and `SemanticItems` (semantic_items.py: L+1
semantic-ID codes per item) implement it; `items.py` registers them and finds the one that a
policy, a policy config or an asset record speaks. A tokenization may read item codes (its
`codes_key` names their file in asset records and model bundles): the semantic IDs, for `SemanticItems`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from recmodels.data.sequences import EvalExamples, TrainingWindows
from recmodels.decoding.rollouts import Rollouts
from recmodels.evaluation.hallucination import BEAM_SIZE, HALLUCINATION_K
from recmodels.evaluation.metrics import hit_rate, ndcg

if TYPE_CHECKING:  # post_training builds on this package: its types are hints only here
    from recmodels.post_training.contexts import RLContexts


@dataclass
class TokenLogProbs:
    tokens: torch.Tensor | None  # [N, G, n_tokens] log-prob of each token of each rollout (None: not asked)
    first_token: torch.Tensor  # [N, V] or [N, V0] masked first-token distribution


@dataclass
class Ranking:
    """A policy's ranking of each example's held-out target (docs/design.md §5)."""

    ranks: np.ndarray  # [N] masked protocol (history excluded); MISS_RANK where the policy cannot produce it
    decoding: dict  # tokenization, beam size, hallucination rate, HR@10 / NDCG@10 per decoding mode
    top10: np.ndarray | None = None  # [N, 10] item_idx of the masked top 10
    ranks_unmasked: np.ndarray | None = None  # [N] unmasked protocol (None: not asked)
    seen_in_top10_unmasked: np.ndarray | None = None  # [N] history items in the unmasked top 10


def accuracy_at_10(ranks: np.ndarray) -> dict[str, float]:
    return {"hr@10": float(hit_rate(ranks, 10).mean()), "ndcg@10": float(ndcg(ranks, 10).mean())}


def valid_metrics(ranks: np.ndarray) -> dict[str, float]:
    """The valid columns of a post-training evaluation row from the valid targets' ranks."""
    accuracy = accuracy_at_10(ranks)
    return {"valid_ndcg@10": accuracy["ndcg@10"], "valid_hr@10": accuracy["hr@10"]}


def decoding_record(tokenization: str, beam_size: int | None, hallucination_rate: float, ranks: np.ndarray,
                    free_ranks: np.ndarray) -> dict:
    """How a policy's items were decoded: constrained (the ranks) and unconstrained (free_ranks) accuracy,
    and the share of unconstrained top-10 generations that are no item."""
    return {"tokenization": tokenization, "beam_size": beam_size, "hallucination_rate": hallucination_rate,
            "hallucination_k": HALLUCINATION_K, "constrained": accuracy_at_10(ranks),
            "unconstrained": accuracy_at_10(free_ranks)}


def window_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, S] -log p(target) per position of logits [B, S, V]; 0 where the target is padding 0."""
    B, S, V = logits.shape
    # flat [B*S, V] rows: faster than cross_entropy on the transposed [B, V, S] layout
    return F.cross_entropy(logits.reshape(B * S, V), targets.reshape(B * S), ignore_index=0,
                           reduction="none").view(B, S)


class ItemTokenization:
    """How a policy sees an item. A subclass implements the methods that raise NotImplementedError."""

    name: ClassVar[str]  # the run configs' and records' word for it: "atomic", "semantic"
    policy_class: ClassVar[type[torch.nn.Module]]  # the policy that speaks it
    config_class: ClassVar[type]  # that policy's config dataclass
    codes_key: ClassVar[str | None] = None  # the records' / model bundles' key of its item-codes file (None: none)

    # --- building -----------------------------------------------------------------------------------------------

    @classmethod
    def speaks(cls, of) -> bool:
        """`of` is this tokenization's policy or policy config (the dataclass, or a checkpoint's config dict)."""
        if isinstance(of, dict):
            required = {f.name for f in dataclasses.fields(cls.config_class)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            return required <= of.keys()
        return isinstance(of, (cls.policy_class, cls.config_class))

    @classmethod
    def with_codes(cls, codes: Any = None, strict: bool = True) -> "ItemTokenization":
        """This tokenization over its item codes (`semantic_ids=` in the library's signatures). strict: codes
        it does not read are an error; else they are ignored (a mix of policies evaluated together)."""
        raise NotImplementedError

    @classmethod
    def load_codes(cls, path) -> Any:
        """The item codes stored at `path` (the file a record names under `codes_key`); None if it reads none."""
        return None

    def vocabulary(self, n_items: int) -> dict[str, Any]:
        """The policy-config fields that a catalog of n_items fixes (the token vocabulary)."""
        raise NotImplementedError

    def check_config(self, config, n_items: int) -> None:
        """Raise ValueError naming the field when a policy config does not fit these tokens and n_items."""
        raise NotImplementedError

    def build_policy(self, config) -> torch.nn.Module:
        """A fresh policy of `config` (its initial weights), holding what it keeps of these item codes."""
        return self.policy_class(config)

    def check(self, policy, interactions=None) -> None:
        """Raise ValueError unless `policy` speaks these tokens (and `interactions` only name known items)."""
        if not self.speaks(policy):
            raise ValueError(f"the {self.name} tokenization is for a {self.policy_class.__name__}, "
                             f"got a {type(policy).__name__}")

    def n_items(self, policy) -> int:
        """The catalog size: item_idx 1..n_items have tokens."""
        raise NotImplementedError

    # --- training -----------------------------------------------------------------------------------------------

    def window_tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item windows [N, T] -> (token windows, next-token targets), the policy's next-token NLL input."""
        raise NotImplementedError

    def window_nll(self, policy, batch: TrainingWindows):
        """-log pi(a_t | x_<=t) [B, T], real-target mask [B, T] and the window logits [B, T, V] (or None)."""
        raise NotImplementedError

    def distillation_targets(self, item_probs: torch.Tensor, target_items: torch.Tensor) -> torch.Tensor:
        """A teacher's next-item distributions [n, n_items + 1] at n target items [n] -> what the policy's
        next-token distributions at those items' target tokens learn (`recmodels.training.distillation`):
        [n * tokens per item, V], in the order of `window_tokens`' non-zero targets."""
        raise NotImplementedError

    # --- model selection ----------------------------------------------------------------------------------------

    def valid_ranks(self, policy, examples: EvalExamples, device=None) -> np.ndarray:
        """[N] rank of each valid target, history masked: the model selection of pretraining and post-training."""
        raise NotImplementedError

    def evaluate(self, policy, examples: EvalExamples, device) -> dict[str, float]:
        """The valid metrics of one post-training evaluation row."""
        ranks = self.valid_ranks(policy, examples, device)
        return valid_metrics(ranks)

    def valid_check(self, reference, examples: EvalExamples, device) -> Callable[[Any], dict[str, float]]:
        """policy -> the measurements of one post-training valid check: `kl_to_reference` on the examples'
        histories, then `evaluate`'s metrics. Built once per run against the frozen `reference`, so that a
        tokenization can compute what stays fixed (the reference's distributions) once."""
        def check(policy) -> dict[str, float]:
            return {"kl_to_reference": self.kl_to_reference(policy, reference, examples.history, device),
                    **self.evaluate(policy, examples, device)}
        return check

    # --- evaluation ---------------------------------------------------------------------------------------------

    def rank(self, policy, examples: EvalExamples, beam_size: int = BEAM_SIZE, unmasked: bool = True) -> Ranking:
        """Each example's target rank under the masked protocol, its top 10 and decoding record; with
        `unmasked`, also the unmasked protocol (docs/design.md §5)."""
        raise NotImplementedError

    # --- rollouts over item histories [N, T] --------------------------------------------------------------------

    def sample_rollouts(self, policy, histories: torch.Tensor, group_size: int, generator: torch.Generator,
                        mask: torch.Tensor | None = None) -> Rollouts:
        raise NotImplementedError

    def top_k_rollouts(self, policy, histories: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> Rollouts:
        raise NotImplementedError

    def sequence_logprob(self, policy, histories: torch.Tensor, items: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # --- rollouts over RL contexts (post-training) --------------------------------------------------------------

    def sample(self, policy, contexts: RLContexts, n: int, generator: torch.Generator,
               window_logits: torch.Tensor | None = None, distinct: bool = True) -> Rollouts:
        """n items per context from pi (distinct, or independent draws), token log-probs with grad (pi_old =
        their detached values)."""
        raise NotImplementedError

    def sample_reference(self, ctx, contexts: RLContexts, n: int, generator: torch.Generator) -> Rollouts:
        """n distinct items per context from pi_ref, its token log-probs (no grad)."""
        raise NotImplementedError

    def score(self, policy, contexts: RLContexts, rollouts: Rollouts) -> TokenLogProbs:
        """Token log-probs of pi for the rollouts (grad flows)."""
        raise NotImplementedError

    def reference(self, ctx, contexts: RLContexts, rollouts: Rollouts | None = None) -> TokenLogProbs:
        """Token log-probs of pi_ref (no grad); rollouts=None: the first-token distribution only."""
        raise NotImplementedError

    def reference_telemetry(self, ctx) -> dict[str, float]:
        return {}

    def first_token_choices(self, policy) -> int:
        """V of the first-token distribution (the entropy normalizer log V)."""
        raise NotImplementedError

    def kl_to_reference(self, policy, reference, history: torch.Tensor, device: torch.device) -> float:
        """Mean KL(pi || pi_ref) of the first-token distributions after each history [N, T] (telemetry)."""
        raise NotImplementedError

    # --- serving ------------------------------------------------------------------------------------------------

    def recommend(self, policy, history: torch.Tensor, seen: list[np.ndarray],
                  ks: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per history row [B, T]: its k most probable items outside `seen` (item_idx, best first) and their
        probabilities under the policy, k capped at the items left."""
        raise NotImplementedError
