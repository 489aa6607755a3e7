"""The raw-log contract (docs/design.md §2): checked once at the door, normalized for every later step.

Raw logs hold one row per logged event: `user_id`, `item_id`, `timestamp`, at least one feedback
signal and optionally `propensity`. The item catalog holds `item_id`, `title` and feature columns
(`genres` as "A|B", `year`, ...).

`timestamp` may hold integer (or integral float) seconds since the epoch, datetimes, or ISO-8601
strings (`1997-12-04 15:55:49`, `1997-12-04T15:55:49Z`, `1997-12-04T17:55:49+02:00`, `1997-12-04`).
Zone-aware datetimes and strings are converted to UTC; naive ones are taken as UTC, also when a
column mixes both. Every form is normalized to int64 seconds since the epoch (fractions of a second
are dropped); a time before the epoch (a negative value) breaks the contract. Implausible but
non-negative times (before 1990, or in the future) are only warned about, by a check on the
interactions table (`recmodels.data.quality`).

Messages name the file or source, the column and, where there is one, the first offending row:
`row N` counts the data rows from 0 (the header is not a row).

A file whose columns have other names is mapped onto the contract with `rename_to_contract`
(`{"movie_id": "item_id", "ts": "timestamp"}`), before validation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


class DataContractError(ValueError):
    """Input data breaks the contract; the message names the file or source, the column and the problem."""


REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
FEEDBACK_SIGNALS = ("rating", "click", "watch_ratio", "dwell_s")
CONTRACT_COLUMNS = (*REQUIRED_COLUMNS, *FEEDBACK_SIGNALS, "propensity")
CATALOG_COLUMNS = ("item_id", "title", "genres", "year")


def _example(values: pd.Series) -> str:
    if not len(values):
        return "?"
    value = values.iloc[0]
    return repr(value.item() if isinstance(value, np.generic) else value)


def _require_no_nulls(col: pd.Series, where: str) -> None:
    missing = col.isna()
    if missing.any():
        first = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataContractError(
            f"{where}: column {col.name!r} has {int(missing.sum())} missing values (first at row {first})")


def _ids_as_str(col: pd.Series, where: str) -> pd.Series:
    """Ids as strings; integral float ids (1.0, from CSV with gaps) become "1", not "1.0"."""
    _require_no_nulls(col, where)
    if pd.api.types.is_float_dtype(col):
        values = col.to_numpy(np.float64)
        if np.isfinite(values).all() and (values == np.round(values)).all():
            col = pd.Series(values.astype(np.int64), index=col.index, name=col.name)
    return col.astype(str)


def _iso_strings_as_datetimes(col: pd.Series, where: str) -> pd.Series:
    """ISO-8601 strings as UTC datetimes (naive values taken as UTC); the first unparseable one is named."""
    parsed = pd.to_datetime(col, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataContractError(
            f"{where}: column {col.name!r} must hold integer seconds, datetimes or ISO-8601 strings; "
            f"row {row} holds {col.iloc[row]!r} ({int(bad.sum())} unparseable in all)")
    return parsed


def _datetimes_as_seconds(col: pd.Series) -> pd.Series:
    """int64 seconds since the epoch of naive (taken as UTC) or zone-aware datetimes."""
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        col = col.dt.tz_convert("UTC").dt.tz_localize(None)
    return col.astype("datetime64[s]").astype(np.int64).rename(col.name)


def _timestamps_as_seconds(col: pd.Series, where: str) -> pd.Series:
    """int64 seconds since the epoch from int, integral float, datetime or ISO-8601 string columns."""
    _require_no_nulls(col, where)
    if pd.api.types.is_bool_dtype(col):
        pass  # falls through to the error below
    elif pd.api.types.is_integer_dtype(col):
        return col.astype(np.int64)
    elif pd.api.types.is_string_dtype(col):
        return _datetimes_as_seconds(_iso_strings_as_datetimes(col, where))
    elif pd.api.types.is_datetime64_any_dtype(col):
        return _datetimes_as_seconds(col)
    elif pd.api.types.is_float_dtype(col):
        values = col.to_numpy(np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if not bad.any():
            return pd.Series(values.astype(np.int64), index=col.index, name=col.name)
        raise DataContractError(
            f"{where}: column {col.name!r} must hold integer seconds or datetimes; "
            f"found a non-integral value {float(values[bad][0])!r}")
    raise DataContractError(
        f"{where}: column {col.name!r} must hold integer seconds, datetimes or ISO-8601 strings, "
        f"got dtype {col.dtype} (e.g. {_example(col)})")


def _require_non_negative_timestamps(col: pd.Series, where: str) -> None:
    """Seconds since the epoch must not be negative (a time before 1970-01-01 is no logged event)."""
    negative = col.to_numpy() < 0
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise DataContractError(
            f"{where}: column {col.name!r} must hold non-negative seconds since 1970-01-01; "
            f"{int(negative.sum())} values are negative (first at row {row}: {int(col.iloc[row])})")


def _require_numeric(col: pd.Series, where: str) -> None:
    if pd.api.types.is_numeric_dtype(col):
        return
    coerced = pd.to_numeric(col, errors="coerce")
    bad = (coerced.isna() & col.notna()).to_numpy()
    if not bad.any():  # every value reads as a number, but the column holds them as text
        raise DataContractError(
            f"{where}: column {col.name!r} must be numeric, got dtype {col.dtype} (e.g. {_example(col)})")
    row = int(np.flatnonzero(bad)[0])
    raise DataContractError(
        f"{where}: column {col.name!r} must be numeric, got dtype {col.dtype}; row {row} holds "
        f"{_example(col.iloc[[row]])} ({int(bad.sum())} non-numeric values in all)")


def _check_column_mapping(columns: dict[str, str], present: list, where: str) -> None:
    """Every source column exists, every target is a contract column, no two columns end with one name."""
    for source, target in columns.items():
        if source not in present:
            raise DataContractError(
                f"{where}: column mapping names column {source!r}, which the file does not have "
                f"(columns present: {present})")
        if target not in CONTRACT_COLUMNS:
            raise DataContractError(
                f"{where}: column mapping maps {source!r} to {target!r}, which is not a contract column; "
                f"expected one of {list(CONTRACT_COLUMNS)}")
    renamed = pd.Series([columns.get(name, name) for name in present], index=present)
    clash = renamed[renamed.duplicated(keep=False)]
    if len(clash):
        target = clash.iloc[0]
        raise DataContractError(
            f"{where}: column mapping gives the name {target!r} to more than one column: "
            f"{clash.index[clash == target].tolist()}; map only one of them to {target!r}")


def rename_to_contract(df: pd.DataFrame, columns: dict[str, str] | None, where: str) -> pd.DataFrame:
    """`df` with its columns renamed by `columns` ({file's name: contract name}), after checking the mapping.

    Unmapped columns keep their names. A mapping that names a column `df` lacks, maps to a name outside
    `CONTRACT_COLUMNS`, or leaves two columns with one name (two sources mapped to it, or a source
    mapped onto a column of that name that is not itself renamed away) raises `DataContractError`.
    """
    if not columns:
        return df
    _check_column_mapping(dict(columns), list(df.columns), where)
    return df.rename(columns=dict(columns))


def validate_raw_logs(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check `df` against the raw-log contract and return a normalized copy.

    Normalized: `user_id` / `item_id` as str, `timestamp` as int64 seconds (never negative), a
    fresh RangeIndex (row order is kept: it breaks timestamp ties later). NaN / inf in a signal,
    duplicate events and users with too few events are left for the interactions table and its
    blocking checks.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataContractError(f"{where}: raw logs must be a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataContractError(f"{where}: raw logs are empty (0 rows; columns present: {list(df.columns)})")
    for name in REQUIRED_COLUMNS:
        if name not in df.columns:
            raise DataContractError(
                f"{where}: missing required column {name!r} (columns present: {list(df.columns)})")
    signals = [s for s in FEEDBACK_SIGNALS if s in df.columns]
    if not signals:
        raise DataContractError(
            f"{where}: no feedback signal column; expected at least one of {list(FEEDBACK_SIGNALS)} "
            f"(columns present: {list(df.columns)})")
    out = df.reset_index(drop=True)  # a new frame: the caller's stays untouched
    out = out.assign(user_id=_ids_as_str(out["user_id"], where),
                     item_id=_ids_as_str(out["item_id"], where),
                     timestamp=_timestamps_as_seconds(out["timestamp"], where))
    _require_non_negative_timestamps(out["timestamp"], where)
    for name in signals:
        _require_numeric(out[name], where)
    if "propensity" in out.columns:
        _require_numeric(out["propensity"], where)
        p = out["propensity"].to_numpy(np.float64)
        bad = ~((p > 0) & (p <= 1))
        if bad.any():
            raise DataContractError(
                f"{where}: column 'propensity' must lie in (0, 1]; {int(bad.sum())} values do not "
                f"(e.g. {float(p[bad][0])!r} at row {int(np.flatnonzero(bad)[0])})")
    return out


def validate_catalog(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Normalize an item catalog: str `item_id` (unique), str `title` / `genres`, Int64 `year`."""
    if "item_id" not in df.columns:
        raise DataContractError(
            f"{where}: catalog is missing required column 'item_id' (columns present: {list(df.columns)})")
    out = df.reset_index(drop=True)
    out = out.assign(item_id=_ids_as_str(out["item_id"], where))
    dup = out["item_id"].duplicated()
    if dup.any():
        raise DataContractError(
            f"{where}: catalog column 'item_id' has {int(dup.sum())} duplicated ids "
            f"(e.g. {out['item_id'][dup].iloc[0]!r})")
    for name in ("title", "genres"):
        values = out[name] if name in out.columns else pd.Series("", index=out.index)
        out[name] = values.fillna("").astype(str)
    year = out["year"] if "year" in out.columns else pd.Series(pd.NA, index=out.index, dtype="Int64")
    try:
        out["year"] = pd.to_numeric(year, errors="raise").astype("Int64")
    except (ValueError, TypeError) as exc:
        raise DataContractError(f"{where}: catalog column 'year' must hold integer years: {exc}") from exc
    extra = [c for c in out.columns if c not in CATALOG_COLUMNS]
    return out[list(CATALOG_COLUMNS) + extra]
