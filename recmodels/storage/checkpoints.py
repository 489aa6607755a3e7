"""Checkpoints as plain `{state_dict, config}` files, written atomically, loaded with weights_only.

A checkpoint never pickles a module: the config is stored as a dict of primitives so that
`torch.load(..., weights_only=True)` can read it back and the caller rebuilds the module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from recmodels.storage.atomic_files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or does not hold `{state_dict, config}`."""


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: Any, **extra: Any) -> Path:
    """Write `{state_dict, config, **extra}` to `path` via a temp file + rename (never half-written)."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "config": cfg, **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint saved by `save_checkpoint`; raise CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle...
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {exc}") from exc
    if not isinstance(payload, dict) or not {"state_dict", "config"} <= payload.keys():
        raise CheckpointError(f"checkpoint {path} does not hold {{state_dict, config}}")
    return payload
