"""Checkpoints as plain `{state_dict, config}` files, written atomically, loaded with weights_only.

A checkpoint never pickles a module: the config is stored as a dict of primitives so that
`torch.load(..., weights_only=True)` can read it back and the caller rebuilds the module.

A resumable training state (`save_training_state`) is the same kind of file with what a training
loop needs to continue bit-identically after a kill: `{state_dict, config, optimizer, rng, progress,
fingerprint}`. `rng` holds the global RNG states (torch CPU and CUDA, numpy, python `random`) and the
loop's own torch generators; `progress` the loop's bookkeeping (epoch or step, history, best weights);
`fingerprint` a hash of the config, data and starting weights, so that a state is only ever resumed by
the run that saved it. A loop keeps it in `<resume_dir>/training_state.pt`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


# --- resumable training state ---------------------------------------------------------------------------------

TRAINING_STATE_FILE = "training_state.pt"
TRAINING_STATE_KEYS = {"state_dict", "config", "optimizer", "rng", "progress", "fingerprint"}

log = logging.getLogger(__name__)


def training_state_path(resume_dir: str | Path) -> Path:
    """The file of a training loop's resumable state in `resume_dir`."""
    return Path(resume_dir) / TRAINING_STATE_FILE


def fingerprint(*parts: Any) -> str:
    """sha256 of what a training run depends on: dicts, lists, dataclasses (as dicts of their fields) and
    primitives by their JSON, tensors and numpy arrays by dtype, shape and bytes (a state_dict is a dict of
    tensors), data frames by their columns, dtypes and `pd.util.hash_pandas_object` row hashes."""
    h = hashlib.sha256()

    def feed(part: Any) -> None:
        if dataclasses.is_dataclass(part) and not isinstance(part, type):
            part = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
        if isinstance(part, pd.DataFrame):
            h.update(f"frame {list(part.columns)} {[str(t) for t in part.dtypes]}".encode())
            part = pd.util.hash_pandas_object(part, index=False).to_numpy()
        if isinstance(part, torch.Tensor):
            part = part.detach().cpu().contiguous()
            h.update(f"tensor {part.dtype} {tuple(part.shape)}".encode())
            h.update(part.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(part, np.ndarray):
            h.update(f"array {part.dtype} {part.shape}".encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif isinstance(part, dict):
            h.update(f"dict {len(part)}".encode())
            for key in sorted(part, key=str):
                feed(str(key))
                feed(part[key])
        elif isinstance(part, (list, tuple)):
            h.update(f"list {len(part)}".encode())
            for item in part:
                feed(item)
        else:
            h.update(json.dumps(part, default=repr).encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The global RNG states (torch CPU, every CUDA device when present, numpy, python `random`) and those of
    `generators`, as tensors and primitives that `torch.load(weights_only=True)` reads. Draws nothing."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                       "gauss": py_gauss},
            "generators": {name: g.get_state() for name, g in generators.items()}}


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back the RNG states saved by `rng_state` (CUDA ones only where CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"].tolist()), py_state["gauss"]))
    for name, g in generators.items():
        g.set_state(state["generators"][name])


def save_training_state(path: str | Path, model: torch.nn.Module, config: Any, optimizer: torch.optim.Optimizer,
                        generators: dict[str, torch.Generator], progress: dict[str, Any], fingerprint: str) -> Path:
    """Write `{state_dict, config, optimizer, rng, progress, fingerprint}` atomically (temp file, fsync, rename):
    after a kill the file is the previous complete state or the new one. `progress` is the loop's own
    bookkeeping (epoch or step, history, best weights...) as tensors and primitives."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "config": cfg,
               "optimizer": optimizer.state_dict(), "rng": rng_state(generators), "progress": progress,
               "fingerprint": fingerprint}

    def write(tmp: str) -> None:
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the state

    return atomic_write(path, write)


def load_training_state(path: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The training state saved at `path` by `save_training_state`, or None when there is none to resume.

    A file that cannot be read (truncated, not a torch file, a pickled object) raises CheckpointError naming
    it. A state saved by a run with another fingerprint (other config, data or starting weights) is IGNORED
    with a logged warning and None is returned: the run starts afresh and its first save replaces the file,
    so a state is never mixed into a different run.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unsafe pickle...
        raise CheckpointError(f"training state {path} is corrupt or unreadable: {exc}") from exc
    if not isinstance(payload, dict) or not TRAINING_STATE_KEYS <= payload.keys():
        raise CheckpointError(f"training state {path} does not hold {sorted(TRAINING_STATE_KEYS)}")
    if payload["fingerprint"] != fingerprint:
        log.warning("ignoring training state %s: it was saved by a run with another config, data or starting "
                    "weights (fingerprint %.12s, this run %.12s); training starts afresh",
                    path, payload["fingerprint"], fingerprint)
        return None
    return payload


def clear_training_state(resume_dir: str | Path) -> None:
    """Remove the resumable state of `resume_dir`, if any, and the folder once empty (after the trained model
    is safely stored)."""
    training_state_path(resume_dir).unlink(missing_ok=True)
    try:
        Path(resume_dir).rmdir()
    except OSError:  # not empty (other files) or already gone
        pass
