"""The evaluation report: every policy on the same test users, with intervals and paired differences.

Every policy is ranked by its tokenization (`recmodels.tokenization`): semantic-ID policies (the pretrained
record says `tokenization: semantic` and names its `semantic_ids`) are evaluated with beam search over their
semantic IDs: constrained accuracy, unconstrained hallucination rate.
"""

import dagster as dg

from assets.partitions import DATASET_PARTITIONS
from assets.metadata import image, markdown_table
from assets.models import ALL_CORES_TAG
from assets.post_training import post_trained_policies
from assets.records import (EvaluationReportRecord, InteractionsRecord, PostTrainedPolicyRecord,
                            PretrainedPolicyRecord, RankerRewardModelRecord)
from assets.resources import MlflowTracking, RecalignHome
from recmodels.data.oracle import Oracle
from recmodels.data.tables import read_parquet
from recmodels.evaluation.evaluate import evaluate_policies, oracle_upper_bound
from recmodels.evaluation.report import build_report, unmasked_metrics
from recmodels.evaluation.report_output import comparison_table, write_report
from recmodels.storage.model_io import load_policy, load_ranker
from recmodels.tokenization.items import load_item_codes


def load_policies(pretrained: PretrainedPolicyRecord,
                  post_trained: dict[str, PostTrainedPolicyRecord]) -> tuple[dict, dict, dict]:
    """The policies to evaluate {name: (module, method)}, the skipped variants {name: reason}, and each
    trained variant's telemetry (knobs, selected step, history) for the report."""
    trained = {r.variant: r for r in post_trained.values() if not r.is_skipped}
    skipped = {r.variant: r.skipped for r in post_trained.values() if r.is_skipped}
    policies = {"pretrained": (load_policy(pretrained.checkpoint), None)}
    policies |= {name: (load_policy(r.checkpoint), r.method) for name, r in trained.items()}
    training = {name: {"params": r.params, "best_step": r.best_step, "history": r.history}
                for name, r in trained.items()}
    return policies, skipped, training


MASKED_LOGGED = ("ndcg@10", "hr@10", "reward_weighted_ndcg@10")  # primary protocol: test_ndcg@10/<policy>
UNMASKED_LOGGED = ("ndcg@10", "hr@10")  # RecBole-comparable protocol: test_ndcg@10_unmasked/<policy>


def mlflow_test_metrics(report: dict) -> dict[str, float]:
    """The test metrics logged to MLflow per policy ('@' becomes '_at_' there): masked (primary) as
    `test_ndcg@10/<policy>`, unmasked as `test_ndcg@10_unmasked/<policy>`, and the mean number of history
    items in the unmasked top 10 as `test_seen_in_top10_unmasked/<policy>`."""
    out = {}
    for name, p in report["policies"].items():
        out |= {f"test_{m}/{name}": p["metrics"][m]["mean"] for m in MASKED_LOGGED}
        unmasked = unmasked_metrics(p)
        out |= {f"test_{m}_unmasked/{name}": unmasked[m]["mean"] for m in UNMASKED_LOGGED if m in unmasked}
        if p.get("seen_in_top10_unmasked"):
            out[f"test_seen_in_top10_unmasked/{name}"] = p["seen_in_top10_unmasked"]["mean"]
    return out


def report_metadata(report: dict, files: dict, report_dataset: str) -> dict:
    """What the Dagster UI shows of the report: the comparison table, the plots, the verdict."""
    return {"comparison": markdown_table(comparison_table(report)),
            "verdict": dg.MetadataValue.md("\n".join(f"- {s}" for s in report["verdict"])),
            "plot": image(files["png"], "NDCG@10 and HR@10 per policy"),
            "lambda_sweep": image(files["lambda_png"], "exp_rw_sft: gain vs distance per λ"),
            "training_curves": image(files["curves_png"], "valid NDCG@10 and KL per step"),
            "hr10_vs_hallucination": image(files["frontier_png"], "HR@10 vs hallucination rate"),
            "skipped": dg.MetadataValue.json(report["skipped"]),
            "dataset": report_dataset,
            "report_json": dg.MetadataValue.path(str(files["json"])),  # what cross_dataset_summary reads
            "report_md": dg.MetadataValue.path(str(files["md"]))}


def build_evaluation_report_asset(post_trained_assets) -> dg.AssetsDefinition:
    """The `evaluation_report` asset over the pretrained policy and the given post-trained policy assets."""
    post_trained_inputs = {a.key.path[-1]: dg.AssetIn(a.key) for a in post_trained_assets}

    @dg.asset(name="evaluation_report", group_name="evaluation", kinds={"mlflow"}, partitions_def=DATASET_PARTITIONS,
              ins={"interactions": dg.AssetIn(), "pretrained_policy": dg.AssetIn(),
                   "ranker_reward_model": dg.AssetIn(), **post_trained_inputs}, op_tags={ALL_CORES_TAG: "true"})
    def _evaluation_report(context: dg.AssetExecutionContext, home: RecalignHome, mlflow: MlflowTracking,
                           interactions: InteractionsRecord, pretrained_policy: PretrainedPolicyRecord,
                           ranker_reward_model: RankerRewardModelRecord,
                           **post_trained: PostTrainedPolicyRecord) -> EvaluationReportRecord:
        """HR/NDCG/MRR@5/10/20 with 95% bootstrap intervals, paired differences, reward alignment and, for
        semantic-ID policies, constrained vs unconstrained decoding with the hallucination rate."""
        return evaluate_and_report(context, home, mlflow, interactions, pretrained_policy, ranker_reward_model,
                                   post_trained)

    return _evaluation_report


def evaluate_and_report(context: dg.AssetExecutionContext, home: RecalignHome, mlflow: MlflowTracking,
                        interactions: InteractionsRecord, pretrained_policy: PretrainedPolicyRecord,
                        ranker_reward_model: RankerRewardModelRecord,
                        post_trained: dict[str, PostTrainedPolicyRecord]) -> EvaluationReportRecord:
    """Evaluate every policy on the test users, write the report files, log them to MLflow; return the record."""
    policies, skipped, training = load_policies(pretrained_policy, post_trained)
    max_len = policies["pretrained"][0].cfg.max_len
    table, catalog = read_parquet(interactions.table), read_parquet(interactions.catalog)
    oracle = Oracle.load(interactions.oracle) if interactions.oracle else None  # simulated data only
    evals = evaluate_policies(policies, table, load_ranker(ranker_reward_model.checkpoint), max_len,
                              oracle=oracle, catalog=catalog,
                              semantic_ids=load_item_codes(pretrained_policy.item_codes_source()))
    for evaluation in evals[1:]:  # training telemetry of each post-trained policy, for the report's tables and plots
        evaluation.extra = training[evaluation.name]
    report = build_report(evals, baseline="pretrained", skipped=skipped)
    report["ranker"] = ranker_reward_model.rmses()
    if oracle is not None:
        report["oracle_best_top10_true"] = oracle_upper_bound(oracle, table, catalog, max_len)
    files = write_report(report, home.run_dir(interactions.dataset, context.run_id, "report"))
    with mlflow.start_run(context, interactions.dataset, interactions.digest, {"policies": list(policies)}):
        for path in files.values():
            mlflow.log_artifact(path, artifact_path="report")
        mlflow.log_metrics(mlflow_test_metrics(report), step=0)
        mlflow.log_metrics({f"test_hallucination_rate/{name}": p["hallucination_rate"]
                            for name, p in report["policies"].items()}, step=0)
    context.add_output_metadata(report_metadata(report, files, interactions.dataset))
    return EvaluationReportRecord(
        dataset=interactions.dataset, tokenization=pretrained_policy.tokenization,
        hallucination_rate={name: p["hallucination_rate"] for name, p in report["policies"].items()},
        **{k: str(v) for k, v in files.items()})


evaluation_report = build_evaluation_report_asset(post_trained_policies)
