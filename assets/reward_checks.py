"""Great Expectations checks of the interactions table, run as Dagster asset checks on `interactions`.

The six of `BLOCKING_CHECKS` are blocking (docs/design.md §2): schema, reward finite, in range and
not constant, no duplicate events, every user with train, valid and test events; when one fails, no
downstream asset of the run is materialized. Drift (KL of the reward histogram against the last
accepted materialization), the positive-reward share and implausible timestamps (before 1990 or in
the future) only warn. Every check shows its observed values as metadata; a failed one's description
names the column and, where there is one, the first offending row.
"""

import json

import dagster as dg

from assets.partitions import DATASET_PARTITIONS
from assets.records import InteractionsRecord
from assets.resources import RecalignHome
from recmodels.data.quality import BLOCKING_CHECKS, WARNING_CHECKS, reward_checks
from recmodels.data.rewards import RewardSpec
from recmodels.data.tables import read_parquet


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(name, asset="interactions", blocking=name in BLOCKING_CHECKS,
                             partitions_def=DATASET_PARTITIONS) for name in (*BLOCKING_CHECKS, *WARNING_CHECKS)],
    compute_kind="great_expectations",
)
def interactions_reward_checks(context: dg.AssetCheckExecutionContext, interactions: InteractionsRecord,
                               home: RecalignHome):
    """Validate the interactions table with one Great Expectations suite and report each check (the
    blocking ones as ERROR, the warnings as WARN)."""
    reference_file = home.dataset_dir(interactions.dataset) / "reference_reward_hist.json"
    reference = json.loads(reference_file.read_text()) if reference_file.exists() else None
    outcomes = reward_checks(read_parquet(interactions.table), RewardSpec(**interactions.reward_spec),
                             reference_hist=reference)
    for outcome in outcomes:
        yield dg.AssetCheckResult(
            check_name=outcome.name, asset_key="interactions", passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
            description=outcome.description,
            metadata={k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                      for k, v in outcome.observed.items()})
    if all(o.passed for o in outcomes if o.blocking):  # the accepted table becomes the drift reference
        reference_file.write_text(json.dumps(interactions.reward_hist))
