"""The item tokenizations a policy may speak, and the one lookup every caller uses (docs/design.md §3).

    TOKENIZATIONS                          name -> class: a new tokenization is one class and one entry here
    tokenization_class(of)                 the class of a name, a policy or a policy config (or checkpoint config)
    tokenization_for(policy, semantic_ids) the tokenization a policy speaks, over the item codes it reads
    load_item_codes(record, of=None)       the item codes an asset record (or a model bundle's artifacts) names
    tokenization_of(ctx)                   the tokenization of a post-training method context

See `interface.py` for what a tokenization does; callers never ask which one they hold.
"""
from __future__ import annotations

from typing import Any, Mapping

from recmodels.tokenization.atomic_items import AtomicItems, kl_to_reference
from recmodels.tokenization.interface import ItemTokenization, Ranking, TokenLogProbs
from recmodels.tokenization.semantic_items import SemanticItems

TOKENIZATIONS: dict[str, type[ItemTokenization]] = {kind.name: kind for kind in (AtomicItems, SemanticItems)}
DEFAULT_TOKENIZATION = AtomicItems.name  # of run configs, and of records that name none

__all__ = ["DEFAULT_TOKENIZATION", "TOKENIZATIONS", "AtomicItems", "ItemTokenization", "Ranking", "SemanticItems",
           "TokenLogProbs", "kl_to_reference", "load_item_codes", "tokenization_class", "tokenization_for",
           "tokenization_of"]


def tokenization_class(of) -> type[ItemTokenization]:
    """The registered tokenization of `of`: its name, a policy, or a policy config (the dataclass or the
    config dict of a checkpoint)."""
    if isinstance(of, str):
        if of not in TOKENIZATIONS:
            raise ValueError(f"unknown tokenization {of!r}: use one of {list(TOKENIZATIONS)}")
        return TOKENIZATIONS[of]
    for kind in TOKENIZATIONS.values():
        if kind.speaks(of):
            return kind
    what = f"a config with fields {sorted(of)}" if isinstance(of, dict) else f"a {type(of).__name__}"
    raise ValueError(f"no tokenization ({', '.join(TOKENIZATIONS)}) speaks {what}")


def tokenization_for(policy, semantic_ids: Any = None, *, strict: bool = True) -> ItemTokenization:
    """The tokenization `policy` speaks, over the item codes it reads (`semantic_ids` for a semantic-ID policy).

    strict: codes the policy's tokenization does not read are an error; else they are ignored (policies
    of several tokenizations evaluated with the same arguments).
    """
    tokenization = tokenization_class(policy).with_codes(semantic_ids, strict)
    tokenization.check(policy)
    return tokenization


def load_item_codes(record: Mapping[str, Any], of=None) -> Any:
    """The item codes of a tokenization, loaded from the file `record` names under its `codes_key`; None for
    a tokenization that reads none. `record`: an asset record (its "tokenization" names the tokenization
    unless `of` does) or a model bundle's artifacts (`of` is then the loaded policy)."""
    kind = tokenization_class(of if of is not None else record.get("tokenization", DEFAULT_TOKENIZATION))
    return kind.load_codes(record.get(kind.codes_key)) if kind.codes_key else None


def tokenization_of(ctx) -> ItemTokenization:
    """The tokenization of a method context (atomic when there is no context)."""
    return getattr(ctx, "tokenization", None) or AtomicItems()
