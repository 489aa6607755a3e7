"""Validity and accuracy of generated code tuples (docs/design.md §5, semantic IDs).

A generated tuple that is no item is a hallucination. `hallucination_rate` is the share of the
generated top-K tuples that are no item (meaningful for unconstrained decoding; constrained decoding
gives 0 by construction). For ranking metrics the K beams are a recommendation list: the target's
rank is its position among the beams, a hallucinated beam still taking its slot. A target outside
the K beams gets rank K + 1, so HR@k, NDCG@k and MRR@k are exact for k <= K (use beam_size >= 20
for the report's K = 20), while the untruncated MRR is not.

History masking: the user's already-seen items (except the target, as in `ranking.py`) are passed
to the decoder as excluded tuples, which it never generates (see `recmodels.decoding.beam_search`), so the
K beams are K unseen candidates rather than K beams from which seen items are dropped afterwards.
With `exclude_history=False` nothing is excluded: the unmasked protocol (RecBole's), where seen
items compete like any other (`recmodels.tokenization.semantic_items.SemanticItems.rank`).

Beam sizes: model selection (pretraining, post-training) ranks the valid targets among
`VALID_BEAM_SIZE` beams, the test evaluation and the promotion gates among `BEAM_SIZE`, with a
target outside the beams at `MISS_RANK` (`beam_ranks`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recmodels.decoding.beam_search import beam_search
from recmodels.data.sequences import EvalExamples
from recmodels.evaluation.metrics import MISS_RANK
from recmodels.evaluation.ranking import SEEN_TOP_K
from recmodels.tokenization.semantic_ids import SemanticIds
from recmodels.tokenization.trie import ItemTrie

VALID_BEAM_SIZE = 10  # enough for the valid NDCG@10 / HR@10 of model selection
BEAM_SIZE = 20  # beams per user at test time: exact metrics @5/@10/@20
HALLUCINATION_K = 10  # the hallucination rate is measured over the top-10 unconstrained tuples


def beam_items(tuples, semantic_ids: SemanticIds) -> np.ndarray:
    """[B, K] item_idx named by each generated tuple [B, K, L+1]; 0 where it is no item."""
    t = np.asarray(tuples.detach().cpu() if isinstance(tuples, torch.Tensor) else tuples)
    if t.ndim != 3 or t.shape[2] != len(semantic_ids.level_sizes):
        raise ValueError(f"tuples must be [B, K, {len(semantic_ids.level_sizes)}], got shape {t.shape}")
    return semantic_ids.lookup(t)


def hallucination_rate(tuples, semantic_ids: SemanticIds) -> float:
    """Share of the generated tuples [B, K, L+1] that are no item."""
    items = beam_items(tuples, semantic_ids)
    if items.size == 0:
        raise ValueError("no generated tuples: cannot compute a hallucination rate")
    return float((items == 0).mean())


def beam_target_ranks(items: np.ndarray, targets) -> np.ndarray:
    """[B] 1-based position of each target among its row's beam items [B, K]; K + 1 when absent.

    Beams are a strict order (best first), so there are no ties to break, unlike full-catalog ranks.
    """
    items = np.asarray(items)
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    if items.ndim != 2 or t.shape != (items.shape[0],):
        raise ValueError(f"need items [B, K] and targets [B]; got {items.shape} and {t.shape}")
    if t.size and t.min() < 1:
        raise ValueError(f"targets must be item ids >= 1; row {int(np.argmin(t))} has {int(t.min())}")
    hit = items == t[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, items.shape[1] + 1).astype(np.int64)


@dataclass
class BeamEvaluation:
    ranks: np.ndarray  # [N] target rank among the beams (K + 1 = not in them)
    items: np.ndarray  # [N, K] decoded item_idx per beam (0 = hallucinated tuple)
    scores: np.ndarray  # [N, K] beam log-probs (-inf on filler slots, see `n_beams`)
    hallucination_rate: float
    beam_size: int
    constrained: bool
    n_beams: np.ndarray | None = None  # [N] real beams per row (< K only when constrained decoding ran out of items)

    def top(self, k: int) -> "BeamEvaluation":
        """The first k beams of every row, with ranks and hallucination rate over them."""
        if not 1 <= k <= self.beam_size:
            raise ValueError(f"k must lie in 1..beam_size={self.beam_size}, got {k}")
        n_beams = np.minimum(self.real_beams(), k)
        items = self.items[:, :k]
        real = np.arange(k)[None, :] < n_beams[:, None]
        return BeamEvaluation(ranks=np.where(self.ranks <= k, self.ranks, k + 1), items=items,
                              scores=self.scores[:, :k], hallucination_rate=float((items[real] == 0).mean()),
                              beam_size=k, constrained=self.constrained, n_beams=n_beams)

    def real_beams(self) -> np.ndarray:
        return self.n_beams if self.n_beams is not None else np.full(len(self.ranks), self.beam_size)


def _admissible_items(semantic_ids: SemanticIds, exclude: list[np.ndarray]) -> np.ndarray:
    """[B] items left to constrained decoding per row once its excluded tuples are removed (one lookup)."""
    rows = np.repeat(np.arange(len(exclude)), [len(t) for t in exclude])
    items = semantic_ids.lookup(np.concatenate(exclude).reshape(-1, len(semantic_ids.level_sizes)))
    distinct = np.unique((rows * (semantic_ids.n_items + 1) + items)[items > 0])  # one key per (row, item)
    return semantic_ids.n_items - np.bincount(distinct // (semantic_ids.n_items + 1), minlength=len(exclude))


def evaluate_beams(policy, examples: EvalExamples, semantic_ids: SemanticIds, beam_size: int = 20,
                   trie: ItemTrie | None = None, batch_size: int = 256, device=None,
                   use_cache: bool = True, exclude_history: bool = True, renormalize: bool = False) -> BeamEvaluation:
    """Beam-search every example's history (constrained when `trie` is given) and rank its target.

    The user's seen items (except the target) are excluded from the beams unless `exclude_history`
    is False (the unmasked protocol). Beams rank by the policy's own tuple log-probs (`renormalize=True`: by
    each level renormalized over the codes left, the ranking used before; see `beam_search`).

    Under constrained decoding a user whose history leaves fewer than `beam_size` unseen items gets
    as many beams as there are such items; the remaining slots repeat the row's last beam (score
    -inf, left out of the hallucination rate; `n_beams` says how many beams are real).
    """
    if len(examples) == 0:
        raise ValueError("no examples to evaluate")
    if device is not None:
        policy.to(device)
    dev = next(policy.parameters()).device
    codes = semantic_ids.codes
    items, scores, n_beams = [], [], []
    for start in range(0, len(examples), batch_size):
        rows = slice(start, min(start + batch_size, len(examples)))
        history = semantic_ids.items_to_tokens(examples.history[rows]).to(dev)
        targets = examples.targets[rows].numpy()
        exclude = [codes[seen[seen != target]] if exclude_history else codes[:0]
                   for seen, target in zip(examples.seen[rows], targets)]
        width = np.full(len(exclude), beam_size)
        if trie is not None:
            width = np.minimum(width, _admissible_items(semantic_ids, exclude))
        batch_items = np.zeros((len(exclude), beam_size), np.int64)
        batch_scores = np.full((len(exclude), beam_size), float("-inf"), np.float32)
        for k in np.unique(width):  # rows of one beam width decode together (almost always one group)
            group = np.flatnonzero(width == k)
            tuples, s = beam_search(policy, history[torch.as_tensor(group, device=dev)], int(k), trie=trie,
                                    use_cache=use_cache, exclude=[exclude[i] for i in group],
                                    renormalize=renormalize)
            found = beam_items(tuples, semantic_ids)
            batch_items[group, :k] = found
            batch_items[group, k:] = found[:, -1:]  # filler slots repeat the last real beam
            batch_scores[group, :k] = s.cpu().numpy()
        items.append(batch_items)
        scores.append(batch_scores)
        n_beams.append(width)
    items_all, n_all = np.concatenate(items), np.concatenate(n_beams)
    real = np.arange(beam_size)[None, :] < n_all[:, None]
    return BeamEvaluation(ranks=beam_target_ranks(items_all, examples.targets), items=items_all,
                          scores=np.concatenate(scores), hallucination_rate=float((items_all[real] == 0).mean()),
                          beam_size=beam_size, constrained=trie is not None, n_beams=n_all)


def beam_ranks(beams: BeamEvaluation) -> np.ndarray:
    """[N] the target ranks of `beams`, a target outside the beams at MISS_RANK (a miss at every cutoff)."""
    return np.where(beams.ranks <= beams.beam_size, beams.ranks, MISS_RANK)


def history_items_in_beams(items: np.ndarray, n_beams: np.ndarray, examples: EvalExamples,
                           k: int = SEEN_TOP_K) -> np.ndarray:
    """[N] history items (other than the target) among each row's first k real beams [N, K]."""
    counts = np.empty(len(examples), dtype=np.int64)
    for row, (seen, target) in enumerate(zip(examples.seen, examples.targets.tolist())):
        top = items[row, :min(k, int(n_beams[row]))]
        counts[row] = int(np.isin(top, seen[seen != target]).sum())
    return counts
