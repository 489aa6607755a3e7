"""Early stopping on a validation metric, keeping a copy of the best weights."""
from __future__ import annotations

import copy

import torch.nn as nn


class BestWeights:
    """Track the best value of a validation metric; say when `patience` checks brought no improvement.

    `improved(value)` records a check and returns whether it beat the best so far (higher is better
    unless `minimize`); `should_stop` turns true after `patience` checks without improvement;
    `restore()` loads the best weights back (the initial ones if no check ever improved).
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

    def restore(self) -> nn.Module:
        self.model.load_state_dict(self.state)
        return self.model.eval()
