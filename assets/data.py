"""Data assets: raw logs from the chosen source, then the reward-labeled, split interactions."""

from typing import Any, Optional

import dagster as dg

from assets.metadata import markdown_table
from assets.partitions import DATASET_PARTITIONS
from assets.records import InteractionsRecord, RawLogsRecord
from assets.resources import RecalignHome
from recmodels.data.interactions import build_interactions
from recmodels.data.oracle import Oracle
from recmodels.data.quality import reward_histogram
from recmodels.data.rewards import RewardSpec
from recmodels.data.sources import RawLogs, load_raw_logs
from recmodels.data.tables import frame_digest, read_parquet, write_parquet


class RawLogsConfig(dg.Config):
    """Settings of the run's source, which is its partition (assets/partitions.py): `path` (and
    `catalog_path`) of the `file` partition's logs, `simulator` settings of the `simulator` partition
    (`recmodels.data.simulator.SimulatorConfig`).

    `columns` renames a file's columns to the contract's before validation, as {file's name: contract
    name}, e.g. `{"movie_id": "item_id", "ts": "timestamp"}`; `file` partition only."""

    path: Optional[str] = None
    catalog_path: Optional[str] = None
    simulator: dict[str, Any] = {}
    columns: dict[str, str] = {}


@dg.asset(group_name="data", kinds={"parquet"}, partitions_def=DATASET_PARTITIONS)
def raw_logs(context: dg.AssetExecutionContext, config: RawLogsConfig, home: RecalignHome) -> RawLogsRecord:
    """Raw interaction logs in the raw-log contract (user_id, item_id, timestamp, feedback signals),
    from the source that the run's partition names.

    The data set is the source's name, or for a `file` `<file stem>-<first 12 hex characters of the
    logs' digest>`: different logs under one file name are different data sets. Logs that break the
    contract fail the asset with a `DataContractError` naming the file, the column and the row."""
    raw = load_raw_logs(context.partition_key, path=config.path, catalog_path=config.catalog_path, cache_dir=home.cache_dir,
                        simulator=config.simulator or None, columns=config.columns or None)
    out = home.run_dir(raw.name, context.run_id)
    record = RawLogsRecord(
        dataset=raw.name, logs=str(write_parquet(raw.logs, out / "raw_logs.parquet")),
        catalog=str(write_parquet(raw.catalog, out / "raw_catalog.parquet")) if raw.catalog is not None else None,
        digest=raw.digest, oracle=str(Oracle.from_dict(raw.oracle).save(out / "oracle.npz")) if raw.oracle else None)
    context.add_output_metadata({
        "dataset": raw.name, "rows": len(raw.logs), "users": int(raw.logs["user_id"].nunique()),
        "items": int(raw.logs["item_id"].nunique()), "digest": raw.digest, "preview": markdown_table(raw.logs, 10)})
    return record


class RewardSpecConfig(dg.Config):
    """Reward labeling: r = (signal - center) / scale, declared to lie in [low, high]."""

    signal: str = "rating"
    center: float = 3.0
    scale: float = 2.0
    low: float = -1.0
    high: float = 1.0


@dg.asset(group_name="data", kinds={"parquet"}, partitions_def=DATASET_PARTITIONS)
def interactions(context: dg.AssetExecutionContext, config: RewardSpecConfig, raw_logs: RawLogsRecord,
                 home: RecalignHome) -> InteractionsRecord:
    """Reward-labeled interactions with a chronological leave-one-out split, and the item catalog.

    Users with fewer than 3 events are dropped (they could not be evaluated): the metadata's
    `dropped_users` / `dropped_events` count them, and logs where nobody is left fail the asset."""
    catalog = read_parquet(raw_logs.catalog) if raw_logs.catalog else None
    raw = RawLogs(raw_logs.dataset, read_parquet(raw_logs.logs), catalog, raw_logs.digest)
    spec = RewardSpec(**config.model_dump())
    inter = build_interactions(raw, spec)
    out = home.run_dir(raw.name, context.run_id)
    table = inter.table
    splits = table["split"].value_counts().to_dict()
    context.add_output_metadata({
        "users": inter.n_users, "items": inter.n_items, "events": len(table),
        "dropped_users": inter.dropped_users, "dropped_events": inter.dropped_events,
        **{f"{k}_events": int(v) for k, v in splits.items()},
        "reward_mean": float(table["reward"].mean()), "preview": markdown_table(table, 10)})
    return InteractionsRecord(
        dataset=raw.name, table=str(write_parquet(table, out / "interactions.parquet")),
        catalog=str(write_parquet(inter.catalog, out / "catalog.parquet")),
        n_users=inter.n_users, n_items=inter.n_items, digest=frame_digest(table), oracle=raw_logs.oracle,
        reward_spec=spec.__dict__, reward_hist=reward_histogram(table["reward"], spec.low, spec.high))
