"""One asset per post-trained policy, `post_trained_<variant>`, one per row of the variants table.

A variant is a method with fixed knobs (`recmodels.post_training.variants.VARIANTS`, built from the
method specs of the registry: every method once with its defaults, then each method's default
sweep, e.g. the λ sweep of `exp_rw_sft` and the α values of `nll_grpo`; docs/design.md §4).
Every variant starts from the pretrained weights and gets the same optimizer-step budget and batch
size; its run config may change the learning rate and the method's knobs. A semantic-ID pretrained
policy (record `tokenization: semantic`) is post-trained with its semantic IDs, and the servable
model bundles them.

Post-training is crash-safe: it saves a resumable state every `checkpoint_every` steps under the root
run's resume folder (`RecalignHome.resume_dir`), so a re-execution of a failed run continues from the
last save (metadata `resumed_from_step`); the state is removed once the asset succeeded.

An NLL-type variant (sft, exp_rw_sft, ips) trains data-parallel when its config asks for more than one
process (`nproc_per_node`, `nnodes`): `torchrun` through Dagster Pipes (`assets/torchrun.py`), as the
pretrained policy does; a ranker-driven variant given more than one process fails naming the methods
that can (docs/distributed.md).
"""
from pathlib import Path
from typing import Any, Mapping, Optional

import dagster as dg

from assets.partitions import DATASET_PARTITIONS
from assets.metadata import history_table, model_record_metadata
from assets.model_runs import (POST_TRAINED_MODEL, library_config, save_and_register_servable, tracked_training,
                               with_cpu_bf16)
from assets.records import InteractionsRecord, PostTrainedPolicyRecord, PretrainedPolicyRecord, RankerRewardModelRecord
from assets.resources import MlflowTracking, RecalignHome
from assets.torchrun import TorchrunConfig, check_global_batch, n_processes, run_training_job
from recmodels.data.rewards import RewardSpec
from recmodels.data.tables import read_parquet
from recmodels.post_training.distributed import job_spec
from recmodels.post_training.loop import PostTrainConfig, PostTrainResult, post_train
from recmodels.post_training.registry import MethodNotApplicable, data_parallel_methods, get_method
from recmodels.post_training.variants import VARIANTS, Variant
from recmodels.storage.checkpoints import clear_training_state
from recmodels.storage.model_io import load_policy, load_ranker
from recmodels.tokenization.items import load_item_codes, tokenization_class

# Dagster's op tag for the order in which ready steps start (higher first)
PRIORITY_TAG = "dagster/priority"


class PostTrainAssetConfig(TorchrunConfig):
    """The shared budget (steps, batch size) and this variant's knobs; empty fields keep library defaults.
    More than one process (NLL-type methods only): data-parallel under torchrun, `batch_size` the global batch."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    eval_every: Optional[int] = None
    early_eval_every: Optional[int] = None  # denser valid checks early: every this many steps up to early_eval_until
    early_eval_until: Optional[int] = None
    seed: Optional[int] = None
    checkpoint_every: Optional[int] = None  # steps between two saves of the resumable training state
    # valid checks in a row without a better valid NDCG@10 before the variant stops (null: all steps). 4: on
    # MovieLens-100k every variant of the default chain selects the step a full 200-step run selects
    # (docs/results-movielens-100k.md), with 27% fewer steps
    patience: Optional[int] = 4
    # stop at the first valid check under this fraction of the pretrained start's valid NDCG@10 (null: never). 0.5:
    # on MovieLens-100k dpo, ppo, grpo and nll_grpo α >= 0.3 stop at the check they select anyway
    # (docs/results-movielens-100k.md, "Collapse")
    collapse_ratio: Optional[float] = 0.5
    # bf16 autocast on the CPU too; empty: on where the CPU has bf16 dot products (assets/model_runs.with_cpu_bf16)
    cpu_bf16: Optional[bool] = None
    method_params: dict[str, Any] = {}


def _post_train_distributed(context: dg.AssetExecutionContext, settings: dict, method: str,
                            train_cfg: PostTrainConfig, interactions: InteractionsRecord,
                            pretrained_policy: PretrainedPolicyRecord, resume_dir: Path, checkpoint: Path,
                            callback) -> tuple[PostTrainResult, dict[str, Any]]:
    """`post_train` in torchrun processes launched through Dagster Pipes; also the metadata the worker reported.
    The evaluation rows go to `callback` once the worker has finished."""
    asset = context.asset_key.to_user_string()
    if get_method(method).target_weights is None:
        raise dg.Failure(f"{asset} config 'nproc_per_node'/'nnodes': method {method!r} does not train "
                         f"data-parallel; only the NLL-type methods {list(data_parallel_methods())} do")
    check_global_batch(settings, train_cfg.batch_size, asset)
    spec = job_spec(method, interactions.table, pretrained_policy.checkpoint, train_cfg, checkpoint,
                    item_codes=pretrained_policy.item_codes_source(),
                    reward_spec=RewardSpec(**interactions.reward_spec), resume_dir=resume_dir)
    summary, reported = run_training_job(context, settings, "post_training", spec, callback)
    if "skipped" in summary:
        raise MethodNotApplicable(summary["skipped"])
    return PostTrainResult(policy=load_policy(checkpoint), **summary), reported


def post_trained_asset(variant: str, method: str, fixed: dict[str, Any]) -> dg.AssetsDefinition:
    @dg.asset(name=f"post_trained_{variant}", group_name="post_training", kinds={"pytorch", "mlflow"},
              partitions_def=DATASET_PARTITIONS,
              tags={"method": method}, op_tags={PRIORITY_TAG: str(round(100 * get_method(method).step_cost))},
              description=f"The pretrained policy post-trained with `{method}` "
              f"{fixed or '(default knobs)'} (docs/design.md §4).")
    def _asset(context: dg.AssetExecutionContext, config: PostTrainAssetConfig, interactions: InteractionsRecord,
               pretrained_policy: PretrainedPolicyRecord, ranker_reward_model: RankerRewardModelRecord,
               home: RecalignHome, mlflow: MlflowTracking) -> dg.Output[PostTrainedPolicyRecord]:
        settings = with_cpu_bf16(config.model_dump())
        settings["method_params"] = {**fixed, **settings["method_params"]}
        train_cfg = library_config(PostTrainConfig, settings)
        processes = n_processes(settings, context.asset_key.to_user_string())
        policy = load_policy(pretrained_policy.checkpoint)
        kind = tokenization_class(pretrained_policy.tokenization)
        codes_file = {kind.codes_key: getattr(pretrained_policy, kind.codes_key)} if kind.codes_key else {}
        base = {"dataset": interactions.dataset, "variant": variant, "method": method,
                "tokenization": kind.name, **codes_file}
        checkpoint_name = f"post_trained_{variant}.pt"
        resume_dir = home.resume_dir(interactions.dataset, context)
        distributed_metadata = {}
        params = {**base, **vars(train_cfg), **({"nproc_per_node": settings["nproc_per_node"],
                                                 "nnodes": settings["nnodes"]} if processes > 1 else {})}
        with tracked_training(context, mlflow, interactions.dataset, interactions.digest, params) as training:
            try:
                if processes > 1:  # the worker's lead writes the checkpoint where it is registered from again
                    checkpoint = home.run_dir(interactions.dataset, context.run_id) / checkpoint_name
                    result, distributed_metadata = _post_train_distributed(
                        context, settings, method, train_cfg, interactions, pretrained_policy, resume_dir,
                        checkpoint, training.callback)
                else:
                    result = post_train(method, policy, read_parquet(interactions.table), train_cfg,
                                        ranker=load_ranker(ranker_reward_model.checkpoint),
                                        callback=training.callback,
                                        reward_spec=RewardSpec(**interactions.reward_spec),
                                        semantic_ids=load_item_codes(pretrained_policy.item_codes_source()),
                                        resume_dir=resume_dir)
            except MethodNotApplicable as skip:  # e.g. ips on logs without propensities: a result, not an error
                training.mlflow.set_tag("skipped", str(skip))
                context.add_output_metadata({"status": dg.MetadataValue.md(f"**{skip}**")})
                clear_training_state(resume_dir)
                return dg.Output(PostTrainedPolicyRecord(**base, skipped=str(skip)))
            if result.resumed_from_step is not None:
                context.log.info(f"resumed {method} from the state saved after step {result.resumed_from_step} "
                                 f"in {resume_dir}")
            registered = save_and_register_servable(
                training, home, interactions.dataset, result.policy, policy.cfg, checkpoint_name,
                interactions.catalog, POST_TRAINED_MODEL,
                tags={"role": "post_trained_policy", "method": method, "variant": variant,
                      "tokenization": kind.name}, semantic_ids=codes_file.get(kind.codes_key))
        registered.update(base)  # both name the dataset
        record = PostTrainedPolicyRecord(**registered, params=result.params, best_step=result.best_step,
                                         steps=result.steps, steps_per_s=round(result.steps_per_s, 2),
                                         best_valid_ndcg10=result.best_valid_ndcg10, history=result.history)
        context.add_output_metadata({**model_record_metadata(record), "method": method, "params": result.params,
                                     "best_step": result.best_step, "best_valid_ndcg@10": result.best_valid_ndcg10,
                                     "steps": result.steps, "stopped_by": result.stopped_by,
                                     "steps_per_s": record.steps_per_s,
                                     "history": history_table(result.history), **distributed_metadata})
        if result.resumed_from_step is not None:
            context.add_output_metadata({"resumed_from_step": result.resumed_from_step})
        clear_training_state(resume_dir)  # the model is stored: a later attempt must not resume this run
        return dg.Output(record)  # an Output, not the bare record: a step that opened a Pipes session must return one

    return _asset


def post_trained_assets(variants: Mapping[str, Variant]) -> list[dg.AssetsDefinition]:
    """One `post_trained_<variant>` asset per row of a variants table."""
    return [post_trained_asset(name, v.method, dict(v.method_params)) for name, v in variants.items()]


post_trained_policies = post_trained_assets(VARIANTS)
