"""Start a semantic-ID policy from a trained atomic policy of the same size (a warm start).

The item trunk (`ItemTrunkSemanticPolicy`) reads one position per item, as the atomic policy does, so the
atomic policy's transformer carries over as it is: its blocks, final layer norm and positions. With
`item_prefixes` the semantic policy also has one prefix row per item (the prefix of all its codes), added to
the item's input and, with `prefix_logits`, scoring it at the last code level: that row starts as the item's
atomic embedding (tied input and output there as well). The seen bias of the last level, which counts an
item's own earlier occurrences, starts as the atomic one. Everything else (code embeddings, the other
prefix rows, the code head) keeps its fresh initialization and is learned.

The semantic policy then trains as usual (`pretrain_policy(..., start_from=atomic)`); measured in
docs/results-semantic-ids.md ("Warm start from the atomic policy").

Positions: the atomic policy right-aligns a window (its last item at position max_len - 1), the semantic one
counts items from the left; the two agree on full windows, the common case, and the rest is learned.
"""
from __future__ import annotations

import torch

from recmodels.models.policy import GenerativePolicy
from recmodels.models.semantic_policy import ItemTrunkSemanticPolicy

SHARED_SIZES = ("d_model", "n_layers", "n_heads", "max_len")  # what the two configs must agree on


@torch.no_grad()
def start_from_atomic(semantic: torch.nn.Module, atomic: torch.nn.Module) -> None:
    """Copy `atomic`'s trunk, item embeddings and seen bias into the fresh `semantic` policy (module doc).
    Raises ValueError, copying nothing, unless `semantic` is an item-trunk policy with item prefixes whose
    items are `atomic`'s catalog and whose sizes match."""
    if not isinstance(atomic, GenerativePolicy):
        raise ValueError(f"a warm start needs an atomic GenerativePolicy to start from, got {type(atomic).__name__}")
    item_prefixes = getattr(getattr(semantic, "cfg", None), "item_prefixes", None)
    if not isinstance(semantic, ItemTrunkSemanticPolicy) or not item_prefixes:
        raise ValueError("a warm start needs a semantic policy with trunk='items' and item_prefixes=True "
                         f"(one row per item to take the atomic embedding), got {type(semantic).__name__} "
                         f"with item_prefixes={item_prefixes}")
    if (atomic.cfg.positions, atomic.cfg.block) != ("learned", "transformer"):
        raise ValueError("a warm start copies learned positions and transformer blocks; the atomic policy has "
                         f"positions={atomic.cfg.positions!r}, block={atomic.cfg.block!r}")
    differ = {k: (getattr(semantic.cfg, k), getattr(atomic.cfg, k)) for k in SHARED_SIZES
              if getattr(semantic.cfg, k) != getattr(atomic.cfg, k)}
    if differ:
        raise ValueError("a warm start needs policies of one size; semantic vs atomic differ in "
                         + ", ".join(f"{k} {s} vs {a}" for k, (s, a) in differ.items()))
    if semantic.cfg.n_items + 1 != atomic.cfg.vocab_size:
        raise ValueError(f"the semantic policy holds {semantic.cfg.n_items} items, the atomic one "
                         f"{atomic.cfg.vocab_size - 1}: they must cover one catalog")
    last = semantic.layout.n_levels - 1
    keys = semantic.layout.prefix_keys(semantic.item_codes)[:, last + 1]  # [n_items] each item's whole tuple
    rows, found = semantic.prefix_rows(last, keys.contiguous())
    if not found.all() or len(torch.unique(rows)) != len(rows):
        raise ValueError("the semantic policy's item tuples are not distinct (set_items with the semantic IDs "
                         "first): a warm start gives each item a row of its own")
    for name in ("blocks", "ln_f", "pos_emb"):
        getattr(semantic, name).load_state_dict(getattr(atomic, name).state_dict())
    semantic.prefix_emb.weight[rows] = atomic.tok_emb.weight[1:]  # item_idx 1..n_items, in order
    if semantic.cfg.seen_bias and atomic.cfg.seen_bias:
        semantic.seen_logit[last] = atomic.seen_logit
