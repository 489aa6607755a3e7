"""The post-training methods by name (design.md §4).

A method is a knob dataclass, a loss `loss(policy, batch, ctx) -> (loss, telemetry)` and,
optionally, a `prepare(params, interactions) -> dict of tensors` that precomputes what the loss
reads from `ctx.state`. Adding a method = one module + one line in METHODS; the shared loop
(loop.py) and the orchestration layer pick it up from here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch

from recmodels.post_training import exp_rw_sft, sft

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]  # (policy, batch, ctx) -> (loss, telemetry)
PrepareFn = Callable[[Any, pd.DataFrame], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PostTrainingMethod:
    name: str
    params_cls: type  # dataclass of the method's knobs (ALIASES: ClassVar maps alternative key names)
    loss: LossFn
    prepare: PrepareFn | None = None
    description: str = ""

    def parse_params(self, raw: dict[str, Any] | None) -> Any:
        """Build the knob dataclass from `method_params`; unknown keys raise ValueError naming them."""
        aliases: dict[str, str] = getattr(self.params_cls, "ALIASES", {})
        known = [f.name for f in dataclasses.fields(self.params_cls)]
        kwargs: dict[str, Any] = {}
        for key, value in dict(raw or {}).items():
            name = aliases.get(key, key)
            if name not in known:
                accepted = sorted(set(known) | set(aliases)) or "none"
                raise ValueError(f"unknown parameter {key!r} for post-training method {self.name!r}; "
                                 f"accepted: {accepted}")
            if name in kwargs:
                raise ValueError(f"parameter {name!r} of post-training method {self.name!r} is given twice "
                                 f"(as {key!r} and under another name)")
            kwargs[name] = value
        return self.params_cls(**kwargs)


METHODS: dict[str, PostTrainingMethod] = {
    "sft": PostTrainingMethod("sft", sft.SFTParams, sft.sft_loss,
                              description="next-item NLL on the same logs (more training, no reward)"),
    "exp_rw_sft": PostTrainingMethod("exp_rw_sft", exp_rw_sft.ExpRwSFTParams, exp_rw_sft.exp_rw_sft_loss,
                                     prepare=exp_rw_sft.prepare,
                                     description="NLL weighted by exp(reward / lambda)"),
}


def get_method(name: str) -> PostTrainingMethod:
    """The registered method called `name`; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown post-training method {name!r}; known methods: {sorted(METHODS)}") from None
