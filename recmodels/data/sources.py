"""Where raw logs come from: a MovieLens variant, a parquet / CSV / TSV file of one's own, or the simulator."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from recmodels.data.movielens import WHEELS, read_movielens
from recmodels.data.raw_logs import rename_to_contract, validate_catalog, validate_raw_logs
from recmodels.data.simulator import SimulatorConfig, simulate_logs
from recmodels.data.tables import frame_digest, read_parquet

SOURCES = ("movielens-100k", "movielens-1m", "file", "simulator")


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


def read_table_file(path: str | Path) -> pd.DataFrame:
    """A parquet, CSV or TSV file as a DataFrame, chosen by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return read_parquet(path)
    if suffix in (".csv", ".tsv", ".tab"):
        sep = "," if suffix == ".csv" else "\t"
        try:
            return pd.read_csv(path, sep=sep)
        except Exception as exc:  # empty file, ragged rows, bad encoding...
            raise ValueError(f"file {path} could not be read as {suffix[1:].upper()}: {exc}") from exc
    raise ValueError(f"file {path}: unsupported format {suffix or '(no suffix)'!r}; "
                     "use .parquet, .csv or .tsv")


def load_raw_logs(source: str = "movielens-100k", *, path: str | None = None,
                  catalog_path: str | None = None, cache_dir: Path,
                  simulator: dict | None = None, columns: dict[str, str] | None = None) -> RawLogs:
    """Raw logs (and catalog) of `source`, validated against the raw-log contract.

    "movielens-100k" / "movielens-1m" read the cached wheel in `cache_dir` (downloaded once);
    "file" reads `path` (and `catalog_path` when given), renaming its columns by `columns`
    ({file's name: contract name}, e.g. {"movie_id": "item_id", "ts": "timestamp"}) first;
    "simulator" generates logs with `SimulatorConfig(**simulator)` (defaults when None) and keeps the oracle.
    `columns` is for the "file" source only: given with another source, it raises ValueError.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown raw-log source {source!r}; known sources: {list(SOURCES)}")
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
        logs = validate_raw_logs(rename_to_contract(read_table_file(path), columns, where), where=where)
        catalog = None
        if catalog_path is not None:
            catalog = validate_catalog(read_table_file(catalog_path), where=f"catalog file {catalog_path}")
        name = Path(path).stem
    else:
        logs, catalog = read_movielens(source, Path(cache_dir))
        spec = WHEELS[source]
        logs = validate_raw_logs(logs, where=f"{source} ({spec.filename}:{spec.inter})")
        catalog = validate_catalog(catalog, where=f"{source} ({spec.filename}:{spec.item})")
        name = source
    return RawLogs(name=name, logs=logs, catalog=catalog, digest=frame_digest(logs))
