"""The `champion` asset: promote this run's best post-trained policy when every gate passes.

After the evaluation report, it ranks this run's registered post-trained policies on the valid
split, points the registry alias `challenger` at the best one and compares it with the version
under `champion` (recmodels/evaluation/promotion.py has the gates). It moves `champion` only when
every gate passes; otherwise the champion stays and the asset's metadata and the losing version's
registry tags say why. Challenger and champion are versions of the same data set's registered model
(`recalign-post-trained-policy.<data set>`), and the comparison runs under the model's promotion
lock, so two concurrent runs judge one after the other. The registry conventions live in
assets/registry.py. Semantic-ID policies are
ranked with constrained beam search and their hallucination rate (unconstrained top-10 tuples on
valid) feeds the `hallucination_rate` gate; atomic policies have rate 0.
"""

from typing import Sequence

import dagster as dg
import pandas as pd

from assets.partitions import DATASET_PARTITIONS
from assets.metadata import markdown_table
from assets.model_runs import POST_TRAINED_MODEL, registered_model_name
from assets.models import ALL_CORES_TAG
from assets.post_training import post_trained_policies
from assets.records import ChampionRecord, EvaluationReportRecord, InteractionsRecord, PostTrainedPolicyRecord
from assets.registry import (CHALLENGER, CHAMPION, RegistryError, alias_version, download_policy_artifacts,
                             promote, promotion_lock, reject, tag_version)
from assets.resources import MlflowTracking, RecalignHome
from recmodels.data.tables import read_parquet
from recmodels.evaluation.promotion import GateConfig, best_challenger, decide_promotion, split_metrics
from recmodels.storage.model_io import load_policy
from recmodels.tokenization.items import load_item_codes

POST_TRAINED_INPUTS = {a.key.path[-1]: dg.AssetIn(a.key) for a in post_trained_policies}


class ChampionConfig(dg.Config):
    """Promotion gates: main metric and margin, reward alignment, hallucination ceiling (valid split)."""

    metric: str = "ndcg@10"
    alignment_metric: str = "reward_weighted_ndcg@10"
    alignment_tolerance: float = 0.0
    hallucination_ceiling: float = 0.05
    n_boot: int = 1000
    seed: int = 0


def run_lineage(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """This run's id and those of the runs it re-executes (its parent, the parent's parent...), newest first."""
    ids = [run.run_id]
    while run.parent_run_id and (run := instance.get_run_by_id(run.parent_run_id)) is not None:
        ids.append(run.run_id)
    return ids


def blocking_check_results(context: dg.AssetExecutionContext,
                           known: Sequence[dg.AssetCheckSpec] = ()) -> dict[str, bool]:
    """`asset:check` -> passed, for every blocking check on an upstream asset, judged on the data this run uses.

    The checks are the blocking ones of `known` (the code location's definitions) and of the run's
    asset graph (a run that materializes only `champion` leaves upstream checks out of its graph).
    A check evaluated in this run or in a run it re-executes is judged by that evaluation: a run on
    another data set at the same time never counts. Otherwise (the upstream asset was not part of
    this run) the latest evaluation counts, and a check that never ran, or last ran on an older
    materialization than the asset's latest one, counts as not passed.
    """
    graph = context.job_def.asset_layer.asset_graph
    upstream = graph.get_ancestor_asset_keys(context.asset_key)
    known_keys = {spec.key for spec in known if spec.blocking}  # upstream by construction of the champion
    keys = known_keys | {key for key in graph.asset_check_keys if graph.get_check_spec(key).blocking}
    lineage = set(run_lineage(context.instance, context.run))
    results = {}
    for key in sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        if key not in known_keys and key.asset_key not in upstream:  # a subset run's graph may stop at the parents
            continue
        history = context.instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        ours = next((r for r in history  # newest first; a planned-only record has no evaluation
                     if r.run_id in lineage and r.event is not None and r.event.asset_check_evaluation), None)
        if ours is not None:
            results[f"{key.asset_key.to_user_string()}:{key.name}"] = ours.event.asset_check_evaluation.passed
            continue
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        evaluation = record.event.asset_check_evaluation if record is not None and record.event else None
        passed = evaluation is not None and evaluation.passed  # a dg.AssetCheckEvaluation: planned or failed -> False
        if passed and evaluation.target_materialization_data is not None:
            latest = context.instance.fetch_materializations(key.asset_key, limit=1).records
            passed = not latest or evaluation.target_materialization_data.storage_id == latest[0].storage_id
        results[f"{key.asset_key.to_user_string()}:{key.name}"] = passed
    return results


def valid_metrics_of_challengers(trained: dict[str, PostTrainedPolicyRecord],
                                 table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-user valid metrics of each post-trained policy of this run (trained on this table's tokens);
    each frame's `attrs["hallucination_rate"]` is the policy's valid hallucination rate."""
    frames = {}
    for variant, record in trained.items():
        policy = load_policy(record.checkpoint)
        frames[variant] = split_metrics(policy, table, policy.cfg.max_len,
                                        semantic_ids=load_item_codes(record.item_codes_source(), of=policy))
    return frames


def valid_metrics_of_version(name: str, version: str, table: pd.DataFrame, folder) -> pd.DataFrame:
    """Per-user valid metrics of a registered policy, read through the catalog it was trained with."""
    artifacts = download_policy_artifacts(name, version, folder)
    policy, items = load_policy(artifacts["checkpoint"]), read_parquet(artifacts["catalog"])
    token_of = dict(zip(items["item_id"].astype(str), items["item_idx"].astype(int)))
    return split_metrics(policy, table, policy.cfg.max_len, token_of=token_of,
                         semantic_ids=load_item_codes(artifacts, of=policy))


def build_champion_asset(upstream: Sequence[dg.AssetsDefinition | dg.AssetChecksDefinition]) -> dg.AssetsDefinition:
    """The `champion` asset, guarded by the blocking checks defined on (or beside) the `upstream` assets."""
    known_checks = [spec for definition in upstream for spec in definition.check_specs]

    @dg.asset(name="champion", group_name="promotion", kinds={"mlflow"}, partitions_def=DATASET_PARTITIONS,
              ins={"interactions": dg.AssetIn(), "evaluation_report": dg.AssetIn(), **POST_TRAINED_INPUTS},
              op_tags={ALL_CORES_TAG: "true"})
    def champion(context: dg.AssetExecutionContext, config: ChampionConfig, home: RecalignHome,
                 mlflow: MlflowTracking, interactions: InteractionsRecord, evaluation_report: EvaluationReportRecord,
                 **post_trained: PostTrainedPolicyRecord) -> ChampionRecord:
        """Moves the registry alias `champion` to this run's best post-trained policy when every gate passes."""
        trained = {r.variant: r for r in post_trained.values() if not r.is_skipped}
        if not trained:
            raise dg.Failure("no post-trained policy was registered in this run: nothing to promote")
        name = registered_model_name(POST_TRAINED_MODEL, interactions.dataset)
        table = read_parquet(interactions.table)
        frames = valid_metrics_of_challengers(trained, table)
        best = best_challenger(frames, config.metric)
        version = trained[best].model_version
        client = mlflow.client()
        with promotion_lock(home.lock_dir, name):  # read the champion, judge, move the alias: one run at a time
            client.set_registered_model_alias(name, CHALLENGER, version)
            metric_tag = "valid_" + config.metric.replace("@", "_at_")
            for variant, record in trained.items():
                tag_version(client, name, record.model_version, promotion_run=context.run_id,
                            **{metric_tag: f"{frames[variant][config.metric].mean():.6f}"},
                            **({} if variant == best else {"status": "not_selected"}))
            current = alias_version(client, name, CHAMPION)
            champion_frame = None
            if current is not None and current != version:
                champion_dataset = client.get_model_version(name, current).tags.get("dataset")
                if champion_dataset != interactions.dataset:  # never judge against another data set's champion
                    raise RegistryError(f"{name} v{current} (champion) was trained on data set "
                                        f"{champion_dataset!r}, not {interactions.dataset!r}: fix its alias")
                folder = home.run_dir(interactions.dataset, context.run_id, "champion", f"v{current}")
                champion_frame = valid_metrics_of_version(name, current, table, folder)
            decision = decide_promotion(frames[best], champion_frame, GateConfig(**config.model_dump()),
                                        hallucination_rate=frames[best].attrs.get("hallucination_rate"),
                                        blocking_checks=blocking_check_results(context, known_checks))
            who = f"v{version} ({best})"
            if current == version:
                outcome, summary = "kept", f"**kept**: challenger {who} is already the champion"
            elif decision.promote:
                promote(client, name, version, promotion_run=context.run_id)
                outcome = "promoted"
                summary = (f"**promoted** {who} to `{CHAMPION}`"
                           + (f" (was v{current})" if current else " (first champion)"))
            else:
                reject(client, name, version, decision.reasons, compared_with_champion=current or "none",
                       promotion_run=context.run_id)
                outcome = "kept"
                summary = f"**kept** champion v{current}; challenger {who} rejected: " + "; ".join(decision.reasons)
        champion_version = alias_version(client, name, CHAMPION)
        gates = pd.DataFrame([{"gate": g.name, "passed": g.passed, "detail": g.detail} for g in decision.gates])
        ranking = pd.DataFrame([{"variant": v, "version": trained[v].model_version,
                                 config.metric: f[config.metric].mean(),
                                 "hallucination_rate": f.attrs.get("hallucination_rate", 0.0)}
                                for v, f in frames.items()])
        ranking = ranking.sort_values(config.metric, ascending=False)
        context.add_output_metadata({
            "decision": dg.MetadataValue.md(summary), "gates": markdown_table(gates),
            f"valid_{config.metric}": markdown_table(ranking), "champion_version": champion_version or "none",
            "challenger_version": version, "model_uri": f"models:/{name}@{CHAMPION}"})
        context.log.info(summary)
        return ChampionRecord(dataset=interactions.dataset, registered_model=name, decision=outcome,
                              champion_version=champion_version, challenger_version=version,
                              challenger_variant=best, previous_champion=current, reasons=decision.reasons,
                              evidence=decision.evidence, report=evaluation_report.json)

    return champion
