"""Model assets trained on the interactions: the pretrained policy and the ranker reward model.

The pretrained policy trains crash-safe: it saves a resumable state every `checkpoint_every` epochs under
the root run's resume folder (`RecalignHome.resume_dir`), so a re-execution of a failed run continues
from the last save (metadata `resumed_from_epoch`); the state is removed once the asset succeeded.

The pretrained policy's run config picks its tokenization (`recmodels.tokenization.items.TOKENIZATIONS`):
`atomic` (default, one token per item) or `semantic` (the `item_tokens` semantic IDs, L+1 code tokens
per item). Everything downstream follows the checkpoint: its config says which policy it is, and the
record carries the tokenization's name and the file of the item codes it reads (`semantic_ids`).

With `nproc_per_node` > 1 (or `nnodes` > 1) the pretrained policy trains data-parallel: the asset launches
`torchrun` on `assets/training_worker.py` through Dagster Pipes (`assets/torchrun.py`), passing the job as
Pipes extras; the worker's log lines reach the run's logs as it trains, its epoch rows come back as custom
messages and go to MLflow through the same callback as in one process, and the checkpoint its lead process
wrote is loaded and registered as usual (docs/distributed.md).
"""

from pathlib import Path
from typing import Optional

import dagster as dg

from assets.partitions import DATASET_PARTITIONS
from assets.metadata import history_table, model_record_metadata
from assets.model_runs import (POLICY_MODEL, RANKER_MODEL, library_config, save_and_register,
                               tracked_training, with_preset)
from assets.records import InteractionsRecord, ItemTokensRecord, PretrainedPolicyRecord, RankerRewardModelRecord
from assets.resources import MlflowTracking, RecalignHome
from assets.torchrun import TorchrunConfig, check_global_batch, n_processes, run_training_job
from recmodels.data.tables import read_parquet
from recmodels.storage.checkpoints import clear_training_state
from recmodels.storage.model_io import load_policy
from recmodels.tokenization.items import DEFAULT_TOKENIZATION, TOKENIZATIONS, tokenization_class
from recmodels.training.presets import pretrain_preset
from recmodels.training.pretraining import PretrainConfig, PretrainResult, pretrain_policy
from recmodels.training.ranker_training import RankerTrainConfig, train_ranker


class PretrainAssetConfig(TorchrunConfig):
    """Knobs of the pretrained policy; a field left empty keeps the data set's measured setting where it has one
    (`recmodels.training.presets`: MovieLens-1M), else the library default. `tokenization`: "atomic" (one token
    per item) or "semantic" (the item_tokens semantic IDs)."""

    tokenization: str = DEFAULT_TOKENIZATION
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    patience: Optional[int] = None
    seed: Optional[int] = None
    max_len: Optional[int] = None
    d_model: Optional[int] = None
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    dropout: Optional[float] = None
    # bf16 autocast on the CPU too (empty: fp32, or the data set's preset). Opt-in here, unlike post-training: on
    # MovieLens-100k it trained 1.4x faster but scored lower test NDCG@10 on both seeds tried; on MovieLens-1M it
    # cost no accuracy (docs/experiments-pretraining.md)
    cpu_bf16: Optional[bool] = None
    checkpoint_every: Optional[int] = None  # epochs between two saves of the resumable training state


POLICY_CHECKPOINT = "pretrained_policy.pt"


def _train_policy(settings: dict, interactions: InteractionsRecord, item_tokens: ItemTokensRecord, callback,
                  resume_dir):
    """(result, record fields naming the item-codes file it read, MLflow params) of the chosen tokenization."""
    kind = tokenization_class(settings["tokenization"])
    tokenization = kind.with_codes(kind.load_codes(item_tokens.path))  # reads the semantic IDs, if any codes
    codes_file = {kind.codes_key: item_tokens.path} if kind.codes_key else {}
    n_items = interactions.n_items
    train_cfg = library_config(PretrainConfig, settings)
    policy_cfg = library_config(kind.config_class, settings, **tokenization.vocabulary(n_items))
    result = pretrain_policy(read_parquet(interactions.table), n_items, policy_cfg, train_cfg, callback=callback,
                             tokenization=tokenization, resume_dir=resume_dir)
    return result, codes_file, {**vars(train_cfg), **vars(policy_cfg)}


def _train_policy_distributed(context: dg.AssetExecutionContext, settings: dict, interactions: InteractionsRecord,
                              item_tokens: ItemTokensRecord, callback, resume_dir, checkpoint: Path):
    """`_train_policy` in `torchrun` processes launched through Dagster Pipes; also returns the metadata the
    worker reported. The epoch rows go to `callback` once the worker has finished."""
    from recmodels.training.distributed import job_spec

    kind = tokenization_class(settings["tokenization"])
    tokenization = kind.with_codes(kind.load_codes(item_tokens.path))
    codes_file = {kind.codes_key: item_tokens.path} if kind.codes_key else {}
    n_items = interactions.n_items
    train_cfg = library_config(PretrainConfig, settings)
    policy_cfg = library_config(kind.config_class, settings, **tokenization.vocabulary(n_items))
    check_global_batch(settings, train_cfg.batch_size, "pretrained_policy")
    spec = job_spec(interactions.table, n_items, kind.name, train_cfg, policy_cfg, checkpoint,
                    item_codes=item_tokens.path if kind.codes_key else None, resume_dir=resume_dir)
    summary, reported = run_training_job(context, settings, "pretraining", spec, callback)
    result = PretrainResult(policy=load_policy(checkpoint), policy_config=policy_cfg, history=summary["history"],
                            best_epoch=summary["best_epoch"], best_valid_ndcg10=summary["best_valid_ndcg10"],
                            resumed_from_epoch=summary["resumed_from_epoch"])
    params = {**vars(train_cfg), **vars(policy_cfg), "nproc_per_node": settings["nproc_per_node"],
              "nnodes": settings["nnodes"]}
    return result, codes_file, params, reported


# An op tag: the step runs (almost) alone, so in a step process of its own it takes every core (pipelines/definitions.py
# `StepProcessRuntime`) instead of its share of them: the pretrained policy (only the short ranker beside it), and the
# evaluation report and the champion, which wait for every post-trained policy and for each other
ALL_CORES_TAG = "recalign/all_cores"


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"}, partitions_def=DATASET_PARTITIONS,
          op_tags={ALL_CORES_TAG: "true"})
def pretrained_policy(context: dg.AssetExecutionContext, config: PretrainAssetConfig, interactions: InteractionsRecord,
                      item_tokens: ItemTokensRecord, home: RecalignHome,
                      mlflow: MlflowTracking) -> dg.Output[PretrainedPolicyRecord]:
    """Causal transformer trained with next-item NLL (atomic) or next-code NLL (semantic IDs), early-stopped
    on valid NDCG@10."""
    settings = config.model_dump()
    if settings["tokenization"] not in TOKENIZATIONS:
        raise dg.Failure(f"pretrained_policy config 'tokenization' must be one of {list(TOKENIZATIONS)}, "
                         f"got {settings['tokenization']!r}")
    tokenization = settings["tokenization"]
    settings, preset = with_preset(settings, pretrain_preset(interactions.dataset, tokenization))
    if preset:
        context.log.info(f"{interactions.dataset}: the data set's measured pretraining settings for the knobs the "
                         f"run config leaves empty: {preset} (recmodels/training/presets.py)")
    parallel = n_processes(settings, "pretrained_policy") > 1
    resume_dir = home.resume_dir(interactions.dataset, context)
    distributed_metadata = {}
    with tracked_training(context, mlflow, interactions.dataset, interactions.digest,
                          {"tokenization": tokenization}) as training:
        if parallel:  # the worker's lead process writes the checkpoint where save_and_register writes it again
            checkpoint = Path(home.run_dir(interactions.dataset, context.run_id)) / POLICY_CHECKPOINT
            result, codes_file, params, distributed_metadata = _train_policy_distributed(
                context, settings, interactions, item_tokens, training.callback, resume_dir, checkpoint)
        else:
            result, codes_file, params = _train_policy(settings, interactions, item_tokens, training.callback,
                                                       resume_dir)
        if result.resumed_from_epoch is not None:
            context.log.info(f"resumed pretraining from the state saved after epoch {result.resumed_from_epoch} "
                             f"in {resume_dir}")
        training.mlflow.log_params(params)
        for artifact_path, path in codes_file.items():  # the item-codes file, beside the checkpoint
            training.mlflow.log_artifact(path, artifact_path=artifact_path)
        registered = save_and_register(training, home, interactions.dataset, result.policy, result.policy_config,
                                       POLICY_CHECKPOINT, POLICY_MODEL,
                                       tags={"role": "pretrained_policy", "tokenization": tokenization})
    throughput = sum(row["sequences_per_s"] for row in result.history) / len(result.history)
    record = PretrainedPolicyRecord(**registered, tokenization=tokenization, **codes_file, best_epoch=result.best_epoch,
                                    best_valid_ndcg10=result.best_valid_ndcg10, epochs=len(result.history),
                                    sequences_per_s=round(throughput, 1))
    context.add_output_metadata({**model_record_metadata(record), "tokenization": tokenization,
                                 "best_epoch": result.best_epoch, "best_valid_ndcg@10": result.best_valid_ndcg10,
                                 "sequences_per_s": record.sequences_per_s,
                                 "dataset_preset": dg.MetadataValue.json(preset),
                                 "history": history_table(result.history)})
    if result.resumed_from_epoch is not None:
        context.add_output_metadata({"resumed_from_epoch": result.resumed_from_epoch})
    if distributed_metadata:
        context.add_output_metadata(distributed_metadata)
    clear_training_state(resume_dir)  # the model is stored: a later attempt must not resume this run
    return dg.Output(record)  # an Output, not the bare record: a step that opened a Pipes session must return one


class RankerAssetConfig(dg.Config):
    """Knobs of the ranker reward model; a field left empty keeps the library default."""

    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    patience: Optional[int] = None
    seed: Optional[int] = None


@dg.asset(group_name="models", kinds={"pytorch", "mlflow"}, partitions_def=DATASET_PARTITIONS)
def ranker_reward_model(context: dg.AssetExecutionContext, config: RankerAssetConfig, interactions: InteractionsRecord,
                        home: RecalignHome, mlflow: MlflowTracking) -> RankerRewardModelRecord:
    """Reward regressor on logged (history, item) pairs: the 'production ranker' that RL methods optimize."""
    train_cfg = library_config(RankerTrainConfig, config.model_dump())
    with tracked_training(context, mlflow, interactions.dataset, interactions.digest,
                          vars(train_cfg)) as training:
        result = train_ranker(read_parquet(interactions.table), interactions.n_items, train_cfg,
                              callback=training.callback)
        training.mlflow.log_metrics({"valid_rmse": result.valid_rmse, **result.baselines}, step=0)
        registered = save_and_register(training, home, interactions.dataset, result.ranker, result.config,
                                       "ranker.pt", RANKER_MODEL, tags={"role": "ranker"})
    record = RankerRewardModelRecord(**registered, valid_rmse=result.valid_rmse, **result.baselines)
    context.add_output_metadata({**model_record_metadata(record), "valid_rmse": result.valid_rmse,
                                 **{k: float(v) for k, v in result.baselines.items()},
                                 "history": history_table(result.history)})
    return record
