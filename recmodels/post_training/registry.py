"""The post-training methods by name (docs/design.md §4).

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

from recmodels.post_training import adagrpo, dpo, exp_rw_sft, grpo, ips, nll_grpo, ppo, sft

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]  # (policy, batch, ctx) -> (loss, telemetry)
PrepareFn = Callable[[Any, pd.DataFrame], dict[str, torch.Tensor]]


class MethodNotApplicable(ValueError):
    """The method cannot run on these logs (e.g. ips without propensities); the message says why ("skipped: ...")."""


@dataclass(frozen=True)
class PostTrainingMethod:
    name: str
    params_cls: type  # dataclass of the method's knobs (ALIASES: ClassVar maps alternative key names)
    loss: LossFn
    prepare: PrepareFn | None = None  # may raise MethodNotApplicable
    description: str = ""
    needs_ranker: bool = False  # its rewards come from the ranker reward model

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
    "ips": PostTrainingMethod("ips", ips.IPSParams, ips.ips_loss, prepare=ips.prepare,
                              description="self-normalized NLL weighted by clipped reward / propensity"),
    "dpo": PostTrainingMethod("dpo", dpo.DPOParams, dpo.dpo_loss, needs_ranker=True,
                              description="DPO on pairs sampled from the reference, ordered by the ranker"),
    "ppo": PostTrainingMethod("ppo", ppo.PPOParams, ppo.ppo_loss, needs_ranker=True,
                              description="clipped PPO on ranker reward minus a KL penalty to the reference"),
    "grpo": PostTrainingMethod("grpo", grpo.GRPOParams, grpo.grpo_loss, needs_ranker=True,
                               description="group-relative policy optimization on ranker rewards"),
    "nll_grpo": PostTrainingMethod("nll_grpo", nll_grpo.NLLGRPOParams, nll_grpo.nll_grpo_loss, needs_ranker=True,
                                   description="NLL + alpha * GRPO"),
    "adagrpo": PostTrainingMethod("adagrpo", adagrpo.AdaGRPOParams, adagrpo.adagrpo_loss, needs_ranker=True,
                                  description="NLL + alpha * GRPO gated per sample by difficulty and discriminability"),
}


def get_method(name: str) -> PostTrainingMethod:
    """The registered method called `name`; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown post-training method {name!r}; known methods: {sorted(METHODS)}") from None
