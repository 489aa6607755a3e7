"""Device choice, seeding and eval mode, shared by every training and scoring loop."""
from __future__ import annotations

import random
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np
import torch


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def eval_mode(*modules: torch.nn.Module, no_grad: bool = True) -> Iterator[None]:
    """Put `modules` in eval mode (no dropout), under `torch.no_grad()` unless `no_grad=False`, and
    give each back the mode it had, also when the block raises. Objects that are no `nn.Module` are
    left alone, so scoring code can take any policy-like object."""
    torch_modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in torch_modules]
    for module in torch_modules:
        module.eval()
    try:
        with torch.no_grad() if no_grad else nullcontext():
            yield
    finally:
        for module, mode in zip(torch_modules, was_training):
            module.train(mode)
