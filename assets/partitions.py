"""The chain's one partition dimension: the data set's source.

Every asset of the chain (raw logs to the champion) and every check on them is partitioned by
`DATASET_PARTITIONS`, one static partition per raw-log source of `recmodels.data.sources.SOURCES`:
`movielens-100k`, `movielens-1m`, `simulator`, and `file` for a user's own logs (the path is
`raw_logs`' config). A run materializes one partition (`make run SOURCE=...` tags it
`dagster/partition`), so each data set has its own materializations, checks and lineage in the UI,
and the `cross_dataset_summary` asset reads the latest evaluation report of each partition.

User files share the `file` partition rather than one dynamic partition each: a Dagster asset has
one partitions definition, and a file's data set name (`<stem>-<digest>`, its registered model)
is known only once the file is read. Each file still has its own data set in MLflow and its own
champion; the partition's materialization history lists the files one after another.
"""
import warnings

import dagster as dg

from recmodels.data.sources import SOURCES

# The checks on partitioned assets are partitioned too, so that a run's check reads its own partition
# (an unpartitioned check would load every partition of its asset). Dagster 1.13 marks partitioned
# check specs as preview; this is the one place that uses them.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=dg.PreviewWarning)

DATASET_PARTITIONS = dg.StaticPartitionsDefinition(list(SOURCES))
FILE_PARTITION = "file"
# The partitions the nightly schedule retrains and the summary compares: those that read their own
# data (a `file` run needs a path, which only its own run config gives).
BUILTIN_DATASETS = tuple(s for s in SOURCES if s != FILE_PARTITION)
