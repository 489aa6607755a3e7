"""Dagster asset and asset-check definitions of recalign: thin wrappers that call into `recmodels`."""
from assets.champion import build_champion_asset
from assets.data import interactions, raw_logs
from assets.evaluation import evaluation_report
from assets.item_tokens import item_tokens, item_tokens_bijection
from assets.models import pretrained_policy, ranker_reward_model
from assets.post_training import post_trained_policies
from assets.reward_checks import interactions_reward_checks

UPSTREAM_OF_CHAMPION = [raw_logs, interactions, item_tokens, pretrained_policy, ranker_reward_model,
                        *post_trained_policies, evaluation_report]
ALL_CHECKS = [interactions_reward_checks, item_tokens_bijection]
champion = build_champion_asset([*UPSTREAM_OF_CHAMPION, *ALL_CHECKS])  # promotion waits on their blocking checks
ALL_ASSETS = [*UPSTREAM_OF_CHAMPION, champion]
