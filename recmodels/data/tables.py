"""Parquet files written atomically, read with errors that name the file, and content digests."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recmodels.storage.atomic_files import atomic_write


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` (without its index) to `path` via a temp file + rename: never half-written."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a parquet file; FileNotFoundError / ValueError naming the path when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parquet file {path} does not exist")
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except Exception as exc:  # truncated file, not parquet, unreadable schema...
        raise ValueError(f"parquet file {path} is corrupt or unreadable: {exc}") from exc


def frame_digest(df: pd.DataFrame) -> str:
    """sha256 hex of a frame's columns, dtypes and values in row order (the index is ignored)."""
    h = hashlib.sha256()
    for name, dtype in df.dtypes.items():
        h.update(f"{name}\x1f{dtype}\x1e".encode())
    h.update(str(len(df)).encode())
    if len(df.columns):
        h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()
