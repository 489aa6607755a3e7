"""The `item_tokens` asset: semantic IDs of the catalog, and the blocking check that they are a bijection.

Item vectors come from the TRAIN split only (collaborative SVD factors) plus the catalog's genres and
year; residual quantization (RQ-KMeans unless the config names another quantizer) turns them into L
levels of V codes plus one disambiguation code per item (recmodels/tokenization/semantic_ids.py). The
asset is always materialized (it is cheap); the pretrained policy uses it when its run config says
`tokenization: semantic`.
"""

import json
import time
from typing import Optional

import dagster as dg
import pandas as pd

from assets.partitions import DATASET_PARTITIONS
from assets.metadata import markdown_table
from assets.model_runs import library_config
from assets.records import InteractionsRecord, ItemTokensRecord
from assets.resources import RecalignHome
from recmodels.data.tables import read_parquet
from recmodels.tokenization import ItemVectorConfig, SemanticIdConfig, build_item_vectors, build_semantic_ids
from recmodels.tokenization.quality import CHECK_NAME, bijection_check
from recmodels.tokenization.semantic_ids import SemanticIds


class ItemTokensConfig(dg.Config):
    """Semantic-ID settings: `n_levels` levels of (at most) `codebook_size` codes over `svd_dim` collaborative
    factors (+ genres and year), built by `quantizer` (rq_kmeans, balanced_rq_kmeans, balanced_tree or
    rq_vae); empty fields keep the library defaults."""

    n_levels: int = 3
    codebook_size: int = 32
    quantizer: Optional[str] = None
    svd_dim: int = 32
    seed: int = 0
    genre_weight: Optional[float] = None
    year_weight: Optional[float] = None


@dg.asset(group_name="data", kinds={"numpy", "scikitlearn"}, partitions_def=DATASET_PARTITIONS)
def item_tokens(context: dg.AssetExecutionContext, config: ItemTokensConfig, interactions: InteractionsRecord,
                home: RecalignHome) -> ItemTokensRecord:
    """Semantic IDs: every item's unique tuple of L RQ-KMeans codes plus a disambiguation code."""
    started = time.perf_counter()
    settings = config.model_dump()
    vectors = build_item_vectors(read_parquet(interactions.table), read_parquet(interactions.catalog),
                                 interactions.n_items, library_config(ItemVectorConfig, settings))
    ids = build_semantic_ids(vectors.vectors, library_config(SemanticIdConfig, settings))
    seconds = time.perf_counter() - started
    path = ids.save(home.run_dir(interactions.dataset, context.run_id) / "item_tokens.npz")
    stats = ids.stats
    usage = pd.DataFrame({"level": range(len(stats["codebook_usage"])),
                          "codes_used": [round(u * v) for u, v in zip(stats["codebook_usage"], ids.level_sizes)],
                          "codebook_size": list(ids.level_sizes[:-1]), "usage": stats["codebook_usage"],
                          "residual_rmse": stats["residual_rmse"]})
    context.add_output_metadata({
        "items": ids.n_items, "quantizer": ids.config.quantizer, "tuple_length": stats["tuple_length"],
        "level_sizes": str(ids.level_sizes), "tuple_density": stats["tuple_density"],
        "collisions_resolved": stats["n_collisions"], "max_disambiguation_code": stats["max_disambiguation"],
        "codebook_usage": markdown_table(usage), "vector_dim": vectors.stats["dim"],
        "svd_explained_variance": vectors.stats["svd_explained_variance"],
        "items_without_train_events": vectors.stats["items_without_train_events"],
        "build_seconds": round(seconds, 3), "path": dg.MetadataValue.path(str(path))})
    return ItemTokensRecord(
        dataset=interactions.dataset, path=str(path), n_items=ids.n_items, level_sizes=list(ids.level_sizes),
        tuple_length=stats["tuple_length"], n_collisions=stats["n_collisions"],
        max_disambiguation=stats["max_disambiguation"], codebook_usage=stats["codebook_usage"],
        build_seconds=round(seconds, 3))


@dg.asset_check(asset=item_tokens, name=CHECK_NAME, blocking=True, compute_kind="great_expectations",
                partitions_def=DATASET_PARTITIONS,
                description="Great Expectations: every item has one tuple, no two items share one, each maps back.")
def item_tokens_bijection(item_tokens: ItemTokensRecord) -> dg.AssetCheckResult:
    outcome = bijection_check(SemanticIds.load(item_tokens.path))
    return dg.AssetCheckResult(
        passed=outcome.passed, severity=dg.AssetCheckSeverity.ERROR, description=outcome.description,
        metadata={k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                  for k, v in outcome.observed.items()})
