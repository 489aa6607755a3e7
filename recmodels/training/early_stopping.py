"""Early stopping on a validation metric, keeping a copy of the best weights."""
from __future__ import annotations

import copy

import torch.nn as nn


class BestWeights:
    """Track the best value of a validation metric; say when `patience` checks brought no improvement.

    `improved(value)` records a check and returns whether it beat the best so far (higher is better
    unless `minimize`); `should_stop` turns true after `patience` checks without improvement;
    `restore()` loads the best weights back (the initial ones if no check ever improved).
    `state_dict()` / `load_state_dict()` carry the best weights and the stale count through a resumable
    training state.
    """

    def __init__(self, model: nn.Module, patience: int, minimize: bool = False):
        self.model, self.patience, self.minimize = model, patience, minimize
        self.state = copy.deepcopy(model.state_dict())
        self.stale = 0

    def improved(self, value: float, best: float) -> bool:
        better = value < best if self.minimize else value > best
        if better:
            self.state, self.stale = copy.deepcopy(self.model.state_dict()), 0
        else:
            self.stale += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience

    def state_dict(self) -> dict:
        return {"state": self.state, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.state, self.stale = state["state"], state["stale"]

    def restore(self) -> nn.Module:
        self.model.load_state_dict(self.state)
        return self.model.eval()
