"""The item <-> tuple bijection of semantic IDs, validated as a Great Expectations 1.x suite.

One in-memory batch of `SemanticIds.bijection_table()` (one row per item: `item_idx`, its tuple as
text) plus the item each tuple maps back to, with the expectations:
- one row per item (`ExpectTableRowCountToEqual` n_items), item_idx unique and inside 1..n_items;
- every item has a tuple (`ExpectColumnValuesToNotBeNull`) and no two items share one
  (`ExpectColumnValuesToBeUnique` on the tuple text);
- every tuple maps back to its own item (`ExpectColumnPairValuesToBeEqual`).
The outcome names what broke (e.g. the duplicated tuple and the items sharing it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recmodels.data.expectations import gx_context, plain
from recmodels.tokenization.semantic_ids import SemanticIds

CHECK_NAME = "item_tokens_bijection"


@dataclass
class BijectionOutcome:
    passed: bool
    description: str
    observed: dict[str, Any] = field(default_factory=dict)


def bijection_check(semantic_ids: SemanticIds) -> BijectionOutcome:
    """Validate that items and code tuples are in one-to-one correspondence (never raises on bad codes)."""
    gx, ctx = gx_context()
    E = gx.expectations
    n = semantic_ids.n_items
    frame = semantic_ids.bijection_table()
    frame["maps_back_to"] = semantic_ids.lookup(semantic_ids.codes[1:]).astype(np.int64)
    expectations = {
        "row_count": E.ExpectTableRowCountToEqual(value=n),
        "item_unique": E.ExpectColumnValuesToBeUnique(column="item_idx"),
        "item_range": E.ExpectColumnValuesToBeBetween(column="item_idx", min_value=1, max_value=n),
        "tuple_not_null": E.ExpectColumnValuesToNotBeNull(column="tuple"),
        "tuple_unique": E.ExpectColumnValuesToBeUnique(column="tuple"),
        "round_trip": E.ExpectColumnPairValuesToBeEqual(column_A="item_idx", column_B="maps_back_to"),
    }
    for name, exp in expectations.items():
        exp.meta = {"part": name}
    batch = (ctx.data_sources.add_pandas("item_tokens").add_dataframe_asset("bijection")
             .add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame}))
    suite = gx.ExpectationSuite(name=CHECK_NAME, expectations=list(expectations.values()))
    results = {res.expectation_config.meta["part"]: res for res in batch.validate(suite).results}

    problems = []
    if not results["row_count"].success:
        problems.append(f"{plain(results['row_count'].result.get('observed_value'))} rows for {n} items")
    for part, what in (("item_unique", "item_idx values are repeated"),
                       ("item_range", f"item_idx values lie outside 1..{n}"),
                       ("tuple_not_null", "items have no tuple")):
        if not results[part].success:
            problems.append(f"{results[part].result.get('unexpected_count')} {what}")
    duplicated = frame[frame["tuple"].duplicated(keep=False)]
    shared = {t: sorted(int(i) for i in g["item_idx"]) for t, g in duplicated.groupby("tuple", sort=True)}
    if not results["tuple_unique"].success:
        examples = "; ".join(f"tuple {t} is shared by item_idx {items}" for t, items in list(shared.items())[:3])
        problems.append(f"{len(shared)} duplicated tuple(s) ({int(results['tuple_unique'].result.get('unexpected_count') or 0)} "
                        f"items involved): {examples}")
    mismatches = int((frame["maps_back_to"] != frame["item_idx"]).sum())
    if not results["round_trip"].success:
        problems.append(f"{mismatches} tuples do not map back to their item")
    observed = {"n_items": n, "n_rows": len(frame), "n_distinct_tuples": int(frame["tuple"].nunique()),
                "n_duplicated_tuples": len(shared), "duplicated_tuples": {t: v for t, v in list(shared.items())[:10]},
                "n_round_trip_mismatches": mismatches, "tuple_length": len(semantic_ids.level_sizes),
                "expectations": {part: bool(res.success) for part, res in results.items()}}
    description = ("column 'tuple': " + "; ".join(problems)) if problems else (
        f"every one of the {n} items has a unique tuple of {len(semantic_ids.level_sizes)} codes that maps back to it")
    return BijectionOutcome(passed=not problems and all(r.success for r in results.values()),
                            description=description, observed=observed)
