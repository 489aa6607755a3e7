"""Reward distribution checks on the interactions table, as Great Expectations 1.x expectations.

docs/design.md §2: five blocking checks (schema, reward not null and finite, reward in the declared
range, reward std above a floor, no duplicate (user, item, timestamp) events) and two warnings
(reward histogram drift against a reference, share of positive rewards inside a band). Every
outcome carries its observed values. All expectations run as one suite on one in-memory batch.
Great Expectations is imported inside `reward_checks` only: importing it takes seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recmodels.data.expectations import gx_context, plain
from recmodels.data.rewards import RewardSpec
from recmodels.data.splitting import SPLITS

INTEGER_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOAT_TYPES = ["float16", "float32", "float64"]
SCHEMA = {"user_idx": INTEGER_TYPES, "item_idx": INTEGER_TYPES, "timestamp": INTEGER_TYPES,
          "reward": FLOAT_TYPES, "split": None}
EVENT_KEY = ["user_idx", "item_idx", "timestamp"]
BLOCKING_CHECKS = ("schema", "reward_not_null_and_finite", "reward_in_range", "reward_std_above_floor",
                   "no_duplicate_events")
WARNING_CHECKS = ("reward_histogram_drift", "positive_share_in_band")
FINITE = "__reward_finite"  # reward with +-inf turned into NaN
POSITIVE = "__reward_positive"  # 1.0 / 0.0 for finite rewards > 0 / <= 0, NaN otherwise
HOLDOUT = 1e-4  # probability mass given to empty reference bins / tails so KL stays finite


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    description: str
    observed: dict[str, Any] = field(default_factory=dict)


def reward_histogram(rewards, low: float, high: float, bins: int = 10) -> dict:
    """Histogram of the finite rewards on `bins` equal bins over [low, high], weights summing to 1.

    Values outside [low, high] are not counted. Usable as `reference_hist` of `reward_checks`.
    """
    values = np.asarray(rewards, dtype=np.float64)
    values = values[np.isfinite(values)]
    edges = np.linspace(low, high, bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    total = counts.sum()
    weights = counts / total if total else np.full(bins, 1.0 / bins)
    return {"bins": [round(float(e), 12) for e in edges], "weights": [float(w) for w in weights]}


def _validate(gx, ctx, frame: pd.DataFrame, expectations: list) -> dict[tuple, Any]:
    """Run all expectations as one suite; results keyed by each expectation's meta (check, part)."""
    batch = (ctx.data_sources.add_pandas("interactions").add_dataframe_asset("interactions")
             .add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame}))
    suite = gx.ExpectationSuite(name="reward_checks", expectations=expectations)
    out = {}
    for res in batch.validate(suite).results:
        meta = res.expectation_config.meta
        out[(meta["check"], meta["part"])] = res
    return out


def _error(res) -> str | None:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return info.get("exception_message") or "expectation raised an exception"
    return None


def _reference_problem(ref: dict) -> str | None:
    try:
        bins, weights = np.asarray(ref["bins"], float), np.asarray(ref["weights"], float)
    except (KeyError, TypeError, ValueError):
        return "reference histogram needs numeric 'bins' and 'weights' lists"
    if len(bins) != len(weights) + 1 or len(weights) == 0 or np.any(np.diff(bins) <= 0):
        return "reference histogram needs increasing bins, one more edge than weights"
    if np.any(weights < 0) or not np.isclose(weights.sum() + sum(ref.get("tail_weights", [])), 1.0):
        return "reference histogram weights must be non-negative and sum to 1"
    return None


def reward_checks(table: pd.DataFrame, spec: RewardSpec, *, reference_hist: dict | None = None,
                  std_floor: float = 0.05, kl_threshold: float = 0.1,
                  positive_band: tuple[float, float] = (0.2, 0.95)) -> list[CheckOutcome]:
    """The seven reward checks on an interactions table (never raises on bad data).

    Blocking: schema, reward_not_null_and_finite, reward_in_range, reward_std_above_floor,
    no_duplicate_events. Warning only: reward_histogram_drift, positive_share_in_band.
    A check whose columns are missing or mistyped fails with "could not run: ...".
    """
    gx, ctx = gx_context()
    E = gx.expectations
    present = [c for c in SCHEMA if c in table.columns]
    missing = [c for c in SCHEMA if c not in table.columns]
    frame = table[present].copy()
    reward_ok = "reward" in frame.columns and pd.api.types.is_numeric_dtype(frame["reward"]) \
        and not pd.api.types.is_bool_dtype(frame["reward"])
    ref_problem = _reference_problem(reference_hist) if reference_hist is not None else None
    exps = []

    def add(expectation_cls, check: str, part: str, **kwargs) -> None:
        exps.append(expectation_cls(meta={"check": check, "part": part}, **kwargs))

    add(E.ExpectTableColumnsToMatchSet, "schema", "columns", column_set=list(SCHEMA), exact_match=False)
    for name in present:
        if SCHEMA[name] is not None:
            add(E.ExpectColumnValuesToBeInTypeList, "schema", name, column=name, type_list=SCHEMA[name])
    if "split" in present:
        add(E.ExpectColumnValuesToBeInSet, "schema", "split", column="split", value_set=list(SPLITS))
        add(E.ExpectColumnValuesToNotBeNull, "schema", "split_not_null", column="split")
    if reward_ok:
        reward = frame["reward"].to_numpy(np.float64)
        finite = np.isfinite(reward)
        frame[FINITE] = np.where(finite, reward, np.nan)
        frame[POSITIVE] = np.where(finite, (reward > 0).astype(np.float64), np.nan)
        add(E.ExpectColumnValuesToNotBeNull, "finite", "", column=FINITE)
        add(E.ExpectColumnValuesToBeBetween, "range", "", column="reward", min_value=spec.low,
            max_value=spec.high)
        add(E.ExpectColumnStdevToBeBetween, "std", "", column=FINITE, min_value=std_floor)
        add(E.ExpectColumnMeanToBeBetween, "positive", "", column=POSITIVE, min_value=positive_band[0],
            max_value=positive_band[1])
        if reference_hist is not None and ref_problem is None:
            has_tails = "tail_weights" in reference_hist
            add(E.ExpectColumnKLDivergenceToBeLessThan, "drift", "", column=FINITE,
                partition_object=reference_hist, threshold=kl_threshold,
                internal_weight_holdout=HOLDOUT if min(reference_hist["weights"]) == 0 else 0.0,
                tail_weight_holdout=0.0 if has_tails else HOLDOUT)
    if not [c for c in EVENT_KEY if c in missing]:
        add(E.ExpectCompoundColumnsToBeUnique, "duplicates", "", column_list=EVENT_KEY)
    results = _validate(gx, ctx, frame, exps)

    outcomes = [_schema_outcome(results, table, missing)]
    if not reward_ok:
        why = ("column 'reward' is missing" if "reward" in missing
               else f"column 'reward' is not numeric (dtype {table['reward'].dtype})")
        for name in BLOCKING_CHECKS[1:4]:
            outcomes.append(CheckOutcome(name, False, True, f"could not run: {why}", {}))
    else:
        outcomes += _reward_outcomes(results, reward, spec, std_floor)
    if "duplicates" in {k[0] for k in results}:
        outcomes.append(_duplicates_outcome(results[("duplicates", "")], table))
    else:
        lacking = [c for c in EVENT_KEY if c in missing]
        outcomes.append(CheckOutcome("no_duplicate_events", False, True,
                                     f"could not run: columns {lacking} are missing", {}))
    if not reward_ok:
        for name in WARNING_CHECKS:
            outcomes.append(CheckOutcome(name, False, False, f"could not run: {why}", {}))
    else:
        outcomes.append(_drift_outcome(results.get(("drift", "")), reward, spec, reference_hist,
                                       ref_problem, kl_threshold))
        outcomes.append(_positive_outcome(results[("positive", "")], positive_band))
    return outcomes


def _schema_outcome(results: dict, table: pd.DataFrame, missing: list[str]) -> CheckOutcome:
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    for (check, part), res in sorted(results.items()):
        if check != "schema" or part == "columns" or res.success:
            continue
        err = _error(res)
        if err:
            problems.append(f"column {part!r}: check raised {err}")
        elif part in ("split", "split_not_null"):
            bad = res.result.get("unexpected_count", 0)
            if part == "split":
                sample = res.result.get("partial_unexpected_list", [])[:3]
                problems.append(f"column 'split': {bad} values outside {list(SPLITS)} (e.g. {sample})")
            else:
                problems.append(f"column 'split': {bad} values are missing")
        else:
            expected = "integer" if SCHEMA[part] is INTEGER_TYPES else "float"
            problems.append(f"column {part!r}: dtype {table[part].dtype} is not {expected}")
    observed = {"columns": [str(c) for c in table.columns], "missing": missing,
                "dtypes": {c: str(table[c].dtype) for c in SCHEMA if c in table.columns}}
    description = "; ".join(problems) if problems else (
        "columns user_idx, item_idx, timestamp (integer), reward (float), split (train/valid/test) are valid")
    return CheckOutcome("schema", not problems, True, description, observed)


def _reward_outcomes(results: dict, reward: np.ndarray, spec: RewardSpec,
                     std_floor: float) -> list[CheckOutcome]:
    n_nan, n_inf = int(np.isnan(reward).sum()), int(np.isinf(reward).sum())
    res = results[("finite", "")]
    bad = n_nan + n_inf
    finite_outcome = CheckOutcome(
        "reward_not_null_and_finite", bool(res.success) and bad == 0, True,
        f"column 'reward': {bad} values are NaN or infinite ({n_nan} NaN, {n_inf} inf)" if bad
        else "column 'reward': every value is finite",
        {"n_rows": len(reward), "n_nan": n_nan, "n_inf": n_inf,
         "unexpected_count": plain(res.result.get("unexpected_count"))})

    res = results[("range", "")]
    finite = reward[np.isfinite(reward)]
    lo = float(finite.min()) if len(finite) else None
    hi = float(finite.max()) if len(finite) else None
    n_out = int(res.result.get("unexpected_count") or 0)
    range_outcome = CheckOutcome(
        "reward_in_range", bool(res.success), True,
        f"column 'reward': {n_out} values outside [{spec.low}, {spec.high}] (finite min {lo}, max {hi})"
        if not res.success else f"column 'reward': every value lies in [{spec.low}, {spec.high}]",
        {"min": lo, "max": hi, "low": spec.low, "high": spec.high, "n_out_of_range": n_out})

    res = results[("std", "")]
    std = plain(res.result.get("observed_value"))
    if std is None:
        described = "column 'reward': standard deviation cannot be computed (fewer than 2 finite values)"
    elif res.success:
        described = f"column 'reward': standard deviation {std:.4g} is above the floor {std_floor}"
    else:
        described = (f"column 'reward': standard deviation {std:.4g} is below the floor {std_floor} "
                     "(a near-constant reward teaches nothing)")
    std_outcome = CheckOutcome(
        "reward_std_above_floor", bool(res.success), True, described,
        {"std": std, "floor": std_floor})
    return [finite_outcome, range_outcome, std_outcome]


def _duplicates_outcome(res, table: pd.DataFrame) -> CheckOutcome:
    err = _error(res)
    n_rows = int(res.result.get("unexpected_count") or 0)
    n_extra = int(table.duplicated(subset=EVENT_KEY).sum()) if not err else None
    sample = [dict((k, plain(v)) for k, v in row.items())
              for row in res.result.get("partial_unexpected_list", [])[:3]]
    if err:
        description = f"could not run: {err}"
    elif res.success:
        description = "columns (user_idx, item_idx, timestamp): every event is unique"
    else:
        description = (f"columns (user_idx, item_idx, timestamp): {n_extra} duplicated events "
                       f"({n_rows} rows involved, e.g. {sample[:1]})")
    return CheckOutcome("no_duplicate_events", bool(res.success) and not err, True, description,
                        {"n_duplicates": n_extra, "n_rows_involved": n_rows, "examples": sample})


def _drift_outcome(res, reward: np.ndarray, spec: RewardSpec, reference: dict | None,
                   ref_problem: str | None, threshold: float) -> CheckOutcome:
    current = reward_histogram(reward, spec.low, spec.high)
    if reference is None:
        return CheckOutcome("reward_histogram_drift", True, False,
                            "column 'reward': no reference histogram, nothing to compare (recorded this one)",
                            {"kl": None, "threshold": threshold, "histogram": current})
    if ref_problem:
        return CheckOutcome("reward_histogram_drift", False, False, f"could not run: {ref_problem}",
                            {"kl": None, "threshold": threshold, "histogram": current})
    kl = plain(res.result.get("observed_value"))  # None when the divergence is infinite
    err = _error(res)
    shown = "infinite" if kl is None else f"{kl:.4g}"
    description = (f"could not run: {err}" if err else
                   f"column 'reward': KL divergence {shown} to the reference histogram "
                   f"{'exceeds' if not res.success else 'is within'} the threshold {threshold}")
    return CheckOutcome("reward_histogram_drift", bool(res.success) and not err, False, description,
                        {"kl": kl, "threshold": threshold, "histogram": current, "reference": reference})


def _positive_outcome(res, band: tuple[float, float]) -> CheckOutcome:
    share = plain(res.result.get("observed_value"))
    inside = bool(res.success)
    shown = "undefined (no finite reward)" if share is None else f"{share:.3f}"
    return CheckOutcome(
        "positive_share_in_band", inside, False,
        f"column 'reward': share of positive rewards {shown} is "
        f"{'inside' if inside else 'outside'} the band [{band[0]}, {band[1]}]",
        {"positive_share": share, "band": list(band)})
