"""Rebuild models from `{state_dict, config}` checkpoints (see checkpoints.py)."""
from __future__ import annotations

from pathlib import Path

from recmodels.storage.checkpoints import CheckpointError, load_checkpoint
from recmodels.models.policy import GenerativePolicy, PolicyConfig


def _build(path: str | Path, payload: dict, model_cls: type, config_cls: type):
    try:
        model = model_cls(config_cls(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:  # config fields or tensor shapes do not match the class
        raise CheckpointError(f"checkpoint {path} does not fit {model_cls.__name__}: {exc}") from exc
    return model.eval()


def _rebuild(path: str | Path, model_cls: type, config_cls: type):
    return _build(path, load_checkpoint(path), model_cls, config_cls)


def is_semantic_config(config: dict) -> bool:
    """A saved policy config of the semantic-ID policy (it names its code levels)."""
    return "level_sizes" in config


def load_policy(path: str | Path):
    """The policy saved at `path`, in eval mode on CPU: a SemanticPolicy when its config has
    `level_sizes` (semantic-ID tokens), else a GenerativePolicy (one token per item)."""
    payload = load_checkpoint(path)
    if is_semantic_config(payload["config"]):
        from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig

        return _build(path, payload, SemanticPolicy, SemanticPolicyConfig)
    return _build(path, payload, GenerativePolicy, PolicyConfig)


def load_ranker(path: str | Path):
    """The ranker reward model saved at `path`, in eval mode on CPU."""
    from recmodels.models.ranker import RankerConfig, RewardRanker

    return _rebuild(path, RewardRanker, RankerConfig)
