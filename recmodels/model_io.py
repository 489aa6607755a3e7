"""Rebuild models from `{state_dict, config}` checkpoints (see checkpoints.py)."""
from __future__ import annotations

from pathlib import Path

from recmodels.checkpoints import CheckpointError, load_checkpoint
from recmodels.policy import GenerativePolicy, PolicyConfig


def _rebuild(path: str | Path, model_cls: type, config_cls: type):
    payload = load_checkpoint(path)
    try:
        model = model_cls(config_cls(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as exc:  # config fields or tensor shapes do not match the class
        raise CheckpointError(f"checkpoint {path} does not fit {model_cls.__name__}: {exc}") from exc
    return model.eval()


def load_policy(path: str | Path) -> GenerativePolicy:
    """The generative policy saved at `path`, in eval mode on CPU."""
    return _rebuild(path, GenerativePolicy, PolicyConfig)


def load_ranker(path: str | Path):
    """The ranker reward model saved at `path`, in eval mode on CPU."""
    from recmodels.ranker import RankerConfig, RewardRanker

    return _rebuild(path, RewardRanker, RankerConfig)
