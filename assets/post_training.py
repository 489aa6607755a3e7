"""One asset per post-training method, `post_trained_<method>`, built from the method registry.

Adding a method to `recmodels.post_training.registry.METHODS` adds its asset here: every method
starts from the pretrained weights and gets the same optimizer-step budget and batch size.
"""

from typing import Any, Optional

import dagster as dg

from assets.metadata import history_table, model_record_metadata
from assets.model_runs import POST_TRAINED_MODEL, library_config, save_and_register, tracked_training
from assets.resources import MlflowTracking, RecalignHome
from recmodels.post_training.registry import METHODS


class PostTrainAssetConfig(dg.Config):
    """The shared budget (steps, batch size) and this method's knobs; empty fields keep library defaults."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    eval_every: Optional[int] = None
    seed: Optional[int] = None
    method_params: dict[str, Any] = {}


def post_trained_asset(method: str) -> dg.AssetsDefinition:
    @dg.asset(name=f"post_trained_{method}", group_name="post_training", kinds={"pytorch", "mlflow"},
              tags={"method": method},
              description=f"The pretrained policy post-trained with `{method}` (design.md §4).")
    def _asset(context: dg.AssetExecutionContext, config: PostTrainAssetConfig, interactions: dict,
               pretrained_policy: dict, ranker_reward_model: dict, home: RecalignHome,
               mlflow: MlflowTracking) -> dict:
        from recmodels.model_io import load_policy, load_ranker
        from recmodels.post_training.loop import PostTrainConfig, post_train
        from recmodels.data.tables import read_parquet

        train_cfg = library_config(PostTrainConfig, config.model_dump())
        policy = load_policy(pretrained_policy["checkpoint"])
        ranker = load_ranker(ranker_reward_model["checkpoint"])
        with tracked_training(context, mlflow, interactions["dataset"], interactions["digest"],
                              {"method": method, **vars(train_cfg)}) as training:
            result = post_train(method, policy, read_parquet(interactions["table"]), train_cfg, ranker=ranker,
                                callback=training.callback)
            record = save_and_register(training, home, interactions["dataset"], result.policy, policy.cfg,
                                       f"post_trained_{method}.pt", POST_TRAINED_MODEL,
                                       tags={"role": "post_trained_policy", "method": method})
        record.update(method=method, best_step=result.best_step, best_valid_ndcg10=result.best_valid_ndcg10)
        context.add_output_metadata({**model_record_metadata(record), "method": method,
                                     "best_valid_ndcg@10": result.best_valid_ndcg10,
                                     "history": history_table(result.history)})
        return record

    return _asset


post_trained_policies = [post_trained_asset(method) for method in METHODS]
