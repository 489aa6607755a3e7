"""Rebuild models from `{state_dict, config}` checkpoints (see checkpoints.py)."""
from __future__ import annotations

from pathlib import Path

from recmodels.storage.checkpoints import CheckpointError, load_checkpoint
from recmodels.tokenization.items import tokenization_class


def _build(path: str | Path, payload: dict, model_cls: type, config_cls: type):
    try:
        saved_without = getattr(config_cls, "SAVED_WITHOUT", {})  # fields added after the checkpoint was written
        model = model_cls(config_cls(**{**saved_without, **payload["config"]}))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:  # config fields or tensor shapes do not match the class
        raise CheckpointError(f"checkpoint {path} does not fit {model_cls.__name__}: {exc}") from exc
    return model.eval()


def _rebuild(path: str | Path, model_cls: type, config_cls: type):
    return _build(path, load_checkpoint(path), model_cls, config_cls)


def load_policy(path: str | Path):
    """The policy saved at `path`, in eval mode on CPU: the policy class of the tokenization whose config the
    checkpoint holds (a SemanticPolicy for `level_sizes`, a GenerativePolicy for `vocab_size`)."""
    payload = load_checkpoint(path)
    try:
        kind = tokenization_class(payload["config"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    return _build(path, payload, kind.policy_class, kind.config_class)


def load_ranker(path: str | Path):
    """The ranker reward model saved at `path`, in eval mode on CPU."""
    from recmodels.models.ranker import RankerConfig, RewardRanker

    return _rebuild(path, RewardRanker, RankerConfig)
