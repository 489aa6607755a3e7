"""Checks of the interactions table (reward distribution, split, timestamps), as Great Expectations 1.x
expectations.

docs/design.md §2: six blocking checks (schema, reward not null and finite, reward in the declared
range, reward std above a floor, no duplicate (user, item, timestamp) events, every user has train,
valid and test events) and three warnings (reward histogram drift against a reference, share of
positive rewards inside a band, timestamps between 1990-01-01 and now). Every outcome carries its
observed values; a failed one names the column and, where there is one, the first offending row.
All expectations run as one suite on one in-memory batch. Great Expectations is imported inside
`reward_checks` only: importing it takes seconds.
"""
from __future__ import annotations

import time
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
                   "no_duplicate_events", "users_have_train_valid_test")
WARNING_CHECKS = ("reward_histogram_drift", "positive_share_in_band", "timestamps_plausible")
FINITE = "__reward_finite"  # reward with +-inf turned into NaN
POSITIVE = "__reward_positive"  # 1.0 / 0.0 for finite rewards > 0 / <= 0, NaN otherwise
HOLDOUT = 1e-4  # probability mass given to empty reference bins / tails so KL stays finite
SPLIT_KEY = ["user_idx", "split"]
EVENTS_PER_SPLIT = {"train": (1, None), "valid": (1, 1), "test": (1, 1)}  # each user's (min, max) events
SPLIT_COUNT = "__user_{}_events"  # the row's user's number of events in a split
EARLIEST_TIMESTAMP = 631_152_000  # 1990-01-01 00:00:00 UTC: earlier logs are more likely a unit mistake
EVENT_LABEL = (("user_id", "user_idx"), ("item_id", "item_idx"), ("timestamp", None))  # an event's names in messages


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


def _first_row(res) -> int | None:
    """The table's index of an expectation's first unexpected row (GX's partial unexpected index list)."""
    rows = (res.result or {}).get("partial_unexpected_index_list") or []
    return int(min(rows)) if rows else None


def _event(table: pd.DataFrame, row: int | None) -> str:
    """"row 7 (user_id 'u000', item_id 'm004', timestamp 1600000100)": a row named as an operator finds it."""
    if row is None:
        return "row ?"
    names = [next((c for c in options if c in table.columns), None) for options in EVENT_LABEL]
    names = [c for c in names if c is not None]
    values = table.loc[row, names]
    return f"row {row} (" + ", ".join(f"{c} {plain(values[c])!r}" for c in names) + ")"


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
                  positive_band: tuple[float, float] = (0.2, 0.95), now: int | None = None) -> list[CheckOutcome]:
    """The nine checks on an interactions table (never raises on bad data), in the order of
    `BLOCKING_CHECKS + WARNING_CHECKS`.

    Blocking: schema, reward_not_null_and_finite, reward_in_range, reward_std_above_floor,
    no_duplicate_events, users_have_train_valid_test (exactly one valid, exactly one test and at
    least one train event per user). Warning only: reward_histogram_drift, positive_share_in_band,
    timestamps_plausible (no timestamp before 1990-01-01 or after `now`, default the current time).
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
    if not [c for c in SPLIT_KEY if c in missing]:
        frame = frame.join(_split_counts(frame), on="user_idx")
        for split, (low, high) in EVENTS_PER_SPLIT.items():
            add(E.ExpectColumnValuesToBeBetween, "per_user_split", split, column=SPLIT_COUNT.format(split),
                min_value=low, max_value=high)
    now = int(time.time()) if now is None else int(now)
    timestamp_ok = "timestamp" in frame.columns and pd.api.types.is_numeric_dtype(frame["timestamp"]) \
        and not pd.api.types.is_bool_dtype(frame["timestamp"])
    if timestamp_ok:
        add(E.ExpectColumnValuesToBeBetween, "timestamps", "", column="timestamp", min_value=EARLIEST_TIMESTAMP,
            max_value=now)
    results = _validate(gx, ctx, frame, exps)

    outcomes = [_schema_outcome(results, table, missing)]
    if not reward_ok:
        why = ("column 'reward' is missing" if "reward" in missing
               else f"column 'reward' is not numeric (dtype {table['reward'].dtype})")
        for name in BLOCKING_CHECKS[1:4]:
            outcomes.append(CheckOutcome(name, False, True, f"could not run: {why}", {}))
    else:
        outcomes += _reward_outcomes(results, reward, spec, std_floor, table)
    if "duplicates" in {k[0] for k in results}:
        outcomes.append(_duplicates_outcome(results[("duplicates", "")], table))
    else:
        lacking = [c for c in EVENT_KEY if c in missing]
        outcomes.append(CheckOutcome("no_duplicate_events", False, True,
                                     f"could not run: columns {lacking} are missing", {}))
    if "per_user_split" in {k[0] for k in results}:
        outcomes.append(_per_user_split_outcome(results, frame, table))
    else:
        lacking = [c for c in SPLIT_KEY if c in missing]
        outcomes.append(CheckOutcome("users_have_train_valid_test", False, True,
                                     f"could not run: columns {lacking} are missing", {}))
    if not reward_ok:
        for name in WARNING_CHECKS[:2]:
            outcomes.append(CheckOutcome(name, False, False, f"could not run: {why}", {}))
    else:
        outcomes.append(_drift_outcome(results.get(("drift", "")), reward, spec, reference_hist,
                                       ref_problem, kl_threshold))
        outcomes.append(_positive_outcome(results[("positive", "")], positive_band))
    if timestamp_ok:
        outcomes.append(_timestamps_outcome(results[("timestamps", "")], table, now))
    else:
        why_ts = ("column 'timestamp' is missing" if "timestamp" in missing
                  else f"column 'timestamp' is not numeric (dtype {table['timestamp'].dtype})")
        outcomes.append(CheckOutcome("timestamps_plausible", False, False, f"could not run: {why_ts}", {}))
    return outcomes


def _split_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per user (index `user_idx`): its number of events in each split, as the `SPLIT_COUNT` columns."""
    counts = pd.crosstab(frame["user_idx"], frame["split"]).reindex(columns=list(EVENTS_PER_SPLIT), fill_value=0)
    counts = counts.reindex(pd.unique(frame["user_idx"]), fill_value=0)  # a user whose splits are all missing: 0
    return counts.rename(columns=SPLIT_COUNT.format).astype(np.int64)


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
                     std_floor: float, table: pd.DataFrame) -> list[CheckOutcome]:
    n_nan, n_inf = int(np.isnan(reward).sum()), int(np.isinf(reward).sum())
    res = results[("finite", "")]
    bad = n_nan + n_inf
    source = f"labeled from column {spec.signal!r}"
    first = _first_row(res)
    finite_outcome = CheckOutcome(
        "reward_not_null_and_finite", bool(res.success) and bad == 0, True,
        f"column 'reward': {bad} values are NaN or infinite ({n_nan} NaN, {n_inf} inf); first at "
        f"{_event(table, first)}, {source}" if bad
        else "column 'reward': every value is finite",
        {"n_rows": len(reward), "n_nan": n_nan, "n_inf": n_inf, "first_row": first,
         "unexpected_count": plain(res.result.get("unexpected_count"))})

    res = results[("range", "")]
    finite = reward[np.isfinite(reward)]
    lo = float(finite.min()) if len(finite) else None
    hi = float(finite.max()) if len(finite) else None
    n_out = int(res.result.get("unexpected_count") or 0)
    first = _first_row(res)
    range_outcome = CheckOutcome(
        "reward_in_range", bool(res.success), True,
        f"column 'reward': {n_out} values outside [{spec.low}, {spec.high}] (finite min {lo}, max {hi}); "
        f"first at {_event(table, first)}, {source}"
        if not res.success else f"column 'reward': every value lies in [{spec.low}, {spec.high}]",
        {"min": lo, "max": hi, "low": spec.low, "high": spec.high, "n_out_of_range": n_out, "first_row": first})

    res = results[("std", "")]
    std = plain(res.result.get("observed_value"))
    if std is None:
        described = "column 'reward': standard deviation cannot be computed (fewer than 2 finite values)"
    elif res.success:
        described = f"column 'reward': standard deviation {std:.4g} is above the floor {std_floor}"
    else:
        described = (f"column 'reward': standard deviation {std:.4g} is below the floor {std_floor} "
                     f"(a near-constant reward teaches nothing), {source}")
    std_outcome = CheckOutcome(
        "reward_std_above_floor", bool(res.success), True, described,
        {"std": std, "floor": std_floor})
    return [finite_outcome, range_outcome, std_outcome]


def _duplicates_outcome(res, table: pd.DataFrame) -> CheckOutcome:
    err = _error(res)
    n_rows = int(res.result.get("unexpected_count") or 0)
    repeated = table.duplicated(subset=EVENT_KEY) if not err else None
    n_extra = int(repeated.sum()) if not err else None
    first = int(repeated.to_numpy().argmax()) if n_extra else None
    sample = [dict((k, plain(v)) for k, v in row.items())
              for row in res.result.get("partial_unexpected_list", [])[:3]]
    if err:
        description = f"could not run: {err}"
    elif res.success:
        description = "columns (user_idx, item_idx, timestamp): every event is unique"
    else:
        description = (f"columns (user_idx, item_idx, timestamp): {n_extra} duplicated events "
                       f"({n_rows} rows involved); first repeated at {_event(table, table.index[first])}")
    return CheckOutcome("no_duplicate_events", bool(res.success) and not err, True, description,
                        {"n_duplicates": n_extra, "n_rows_involved": n_rows, "examples": sample,
                         "first_row": None if first is None else int(table.index[first])})


def _per_user_split_outcome(results: dict, frame: pd.DataFrame, table: pd.DataFrame) -> CheckOutcome:
    """Every user has exactly one valid, exactly one test and at least one train event."""
    parts = {split: results[("per_user_split", split)] for split in EVENTS_PER_SPLIT}
    errors = [f"{split}: {_error(res)}" for split, res in parts.items() if _error(res)]
    counts = frame.groupby("user_idx")[[SPLIT_COUNT.format(s) for s in EVENTS_PER_SPLIT]].first()
    counts.columns = list(EVENTS_PER_SPLIT)
    rows = [r for r in (_first_row(res) for res in parts.values()) if r is not None]
    observed = {"n_users": len(counts), "rule": "per user: >= 1 train, exactly 1 valid, exactly 1 test event",
                "expectations": {split: bool(res.success) for split, res in parts.items()}}
    if errors:
        return CheckOutcome("users_have_train_valid_test", False, True, f"could not run: {'; '.join(errors)}",
                            observed)
    if all(res.success for res in parts.values()):
        return CheckOutcome("users_have_train_valid_test", True, True,
                            f"column 'split': each of the {len(counts)} users has at least one train, exactly "
                            "one valid and exactly one test event", observed)
    low = pd.Series({split: low for split, (low, _) in EVENTS_PER_SPLIT.items()})
    high = pd.Series({split: np.inf if high is None else high for split, (_, high) in EVENTS_PER_SPLIT.items()})
    bad = ((counts < low) | (counts > high)).any(axis=1)
    first = min(rows)
    user = frame.loc[first, "user_idx"]
    has = counts.loc[user]
    who = (f"user_id {plain(table.loc[first, 'user_id'])!r} (user_idx {plain(user)}, first row {first})"
           if "user_id" in table.columns else f"user_idx {plain(user)} (first row {first})")
    description = (f"column 'split': {int(bad.sum())} of {len(counts)} users lack at least one train, exactly one "
                   f"valid and exactly one test event; first {who} has "
                   f"{int(has['train'])} train, {int(has['valid'])} valid and {int(has['test'])} test events")
    observed.update({"n_users_failing": int(bad.sum()), "first_user_idx": plain(user), "first_row": first,
                     "first_user_events": {k: int(v) for k, v in has.items()}})
    return CheckOutcome("users_have_train_valid_test", False, True, description, observed)


def _timestamps_outcome(res, table: pd.DataFrame, now: int) -> CheckOutcome:
    """Warning: timestamps before 1990-01-01 or after `now` (seconds since the epoch)."""
    ts = table["timestamp"].to_numpy()
    n_early, n_future = int((ts < EARLIEST_TIMESTAMP).sum()), int((ts > now).sum())
    observed = {"min": plain(ts.min()) if len(ts) else None, "max": plain(ts.max()) if len(ts) else None,
                "earliest_allowed": EARLIEST_TIMESTAMP, "latest_allowed": now,
                "n_before_1990": n_early, "n_in_the_future": n_future}
    err = _error(res)
    if err:
        return CheckOutcome("timestamps_plausible", False, False, f"could not run: {err}", observed)
    if res.success:
        return CheckOutcome("timestamps_plausible", True, False,
                            "column 'timestamp': every value lies between 1990-01-01 and now", observed)
    first = _first_row(res)
    observed["first_row"] = first
    when = pd.Timestamp(now, unit="s").isoformat()
    return CheckOutcome(
        "timestamps_plausible", False, False,
        f"column 'timestamp': {n_early} values before 1990-01-01 and {n_future} after now ({when} UTC); "
        f"first at {_event(table, first)}", observed)


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
