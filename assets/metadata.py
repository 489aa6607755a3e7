"""Small helpers that turn results into metadata a person reads in the Dagster UI."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.records import PostTrainedPolicyRecord, PretrainedPolicyRecord, RankerRewardModelRecord


def markdown_table(df: pd.DataFrame, max_rows: int = 20, floatfmt: str = ".4f") -> dg.MetadataValue:
    """A frame (first `max_rows` rows) as a Markdown table."""
    return dg.MetadataValue.md(df.head(max_rows).to_markdown(index=False, floatfmt=floatfmt))


def history_table(history: list[dict[str, Any]]) -> dg.MetadataValue:
    """Per-epoch training history as a Markdown table (last 30 rows)."""
    return markdown_table(pd.DataFrame(history).tail(30), max_rows=30)


def image(path: str | Path, caption: str) -> dg.MetadataValue:
    """A PNG shown inline in the asset's metadata (Markdown with a base64 data URI)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{data})")


def model_record_metadata(record: PretrainedPolicyRecord | RankerRewardModelRecord | PostTrainedPolicyRecord
                          ) -> dict[str, Any]:
    """The standard metadata of a model asset: checkpoint path, MLflow run and registry version."""
    return {
        "checkpoint": dg.MetadataValue.path(record.checkpoint),
        "mlflow_run_id": record.mlflow_run_id,
        "registered_model": f"{record.registered_model} v{record.model_version}",
    }
