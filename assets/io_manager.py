"""Where the records that assets hand each other are stored: one file per asset AND run.

Dagster's default `fs_io_manager` stores an asset's output at `<base>/<asset key>`, one file per asset
that every run overwrites. Two runs at once then read each other's records (run A's champion step
judged run B's challengers), and re-executing an old run from failure would read whatever run wrote
last. `RunScopedIOManager` stores the output at `<base>/<asset key>/<run id>.pickle`, written
atomically, and loads an input from the run that produced it:

- the upstream step ran in this run: this run's file;
- a re-execution from failure skipped the upstream step: the file of the parent run that produced
  it (Dagster tells which, `upstream_output.run_id`);
- the upstream asset is not part of this run at all (e.g. materializing `champion` alone): the run of
  its latest materialization of the same partition (data set, assets/partitions.py).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.execution.context.output import RUN_ID_PLACEHOLDER

from recmodels.storage.atomic_files import atomic_write


class RunScopedIOManager(dg.ConfigurableIOManager):
    """Pickled asset outputs under `<base_dir>/<asset key path>/<run id>.pickle`."""

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, run_id: str) -> Path:
        return Path(self.base_dir, *asset_key.path, f"{run_id}.pickle")

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context.asset_key, context.run_id)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                pickle.dump(obj, f)

        atomic_write(path, write)
        context.add_output_metadata({"stored_at": dg.MetadataValue.path(str(path))})

    def _producing_run(self, context: dg.InputContext) -> str:
        if context.upstream_output is not None:
            try:
                run_id = context.upstream_output.run_id
            except dg.DagsterInvariantViolationError:  # an upstream asset outside this run's plan: no run id
                run_id = None
            if run_id not in (None, RUN_ID_PLACEHOLDER):  # the placeholder: the same, for a partitioned asset
                return run_id
        partition = context.asset_partition_key if context.has_asset_partitions else None
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition] if partition else None),
            limit=1).records
        if not records:
            where = f" for partition {partition!r}" if partition else ""
            raise dg.Failure(f"asset {context.asset_key.to_user_string()} was never materialized{where}: "
                             "materialize it before the assets that read it")
        return records[0].run_id

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context.asset_key, self._producing_run(context))
        if not path.is_file():
            raise dg.Failure(f"the stored output of {context.asset_key.to_user_string()} is missing: {path}")
        with open(path, "rb") as f:
            return pickle.load(f)
