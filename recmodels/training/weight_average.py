"""An exponential moving average of a model's weights during training, evaluated and kept in their place."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """`average <- decay * average + (1 - decay) * weights` after every optimizer step (`update`), starting from
    the weights of the first step (torch's `AveragedModel`; buffers are the model's own). `applied()` puts the
    average into the model for as long as the context lasts (evaluation, keeping the best weights), then puts
    the trained weights back. `state_dict()` / `load_state_dict()` carry it through a resumable training state."""

    def __init__(self, model: nn.Module, decay: float):  # decay in (0, 1): `check_pretrain_config` checks it
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def update(self) -> None:
        self.average.update_parameters(self.model)

    @contextmanager
    def applied(self) -> Iterator[nn.Module]:
        trained = copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(self.average.module.state_dict())
        try:
            yield self.model
        finally:
            self.model.load_state_dict(trained)

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
