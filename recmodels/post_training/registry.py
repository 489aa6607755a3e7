"""The post-training methods by name, and what each one is to the rest of the pipeline (docs/design.md §4).

A method is a knob model (pydantic, knobs.py), a loss `loss(policy, batch, ctx) -> (loss, telemetry)`
and, optionally, a `prepare(params, interactions) -> dict of tensors` that precomputes what the loss
reads from `ctx.state`. Its line in METHODS is its spec: its family (which comparisons of the report
and the studies it enters, see `Family`), whether its rewards come from the ranker, the knobs the
report shows and the knob it is swept over by default. The variants table (variants.py) is built
from these specs. Adding a method = one module + one line in METHODS: the shared loop (loop.py),
the assets, the report and the studies pick it up from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import pandas as pd
import torch
from pydantic import AliasChoices, ValidationError

from recmodels.post_training import adagrpo, dpo, exp_rw_sft, grpo, ips, nll_grpo, ppo, sft
from recmodels.post_training.knobs import MethodKnobs

LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]  # (policy, batch, ctx) -> (loss, telemetry)
# (batch, ctx) -> (w [M], total): the weight of each real target of the batch (row-major over [B, T], detached)
# and the denominator, for a method whose loss is sum_i w_i NLL_i / total (sft.weighted_nll)
TargetWeightsFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
PrepareFn = Callable[[Any, pd.DataFrame], dict[str, torch.Tensor]]

# What a method optimizes, which decides the comparisons it enters:
# - "nll": next-item NLL only (sft), an NLL-anchored baseline of adagrpo;
# - "reward_weighted_nll": NLL weighted by the logged rewards (exp_rw_sft, ips);
# - "rlhf": RLHF-style, on the ranker's rewards of generated items (dpo, ppo, grpo): the rivals of exp_rw_sft;
# - "nll_plus_rl": NLL plus an RL term on the ranker's rewards (nll_grpo, adagrpo): the points of the
#   HR@10 vs hallucination frontier, and (but for adagrpo itself) NLL-anchored baselines of adagrpo.
Family = Literal["nll", "reward_weighted_nll", "rlhf", "nll_plus_rl"]
NLL_ANCHORED: tuple[Family, ...] = ("nll", "nll_plus_rl")


@dataclass(frozen=True)
class Sweep:
    """The values of one knob a method runs at by default, each as its own variant `<method>_<label>_<value>`."""

    knob: str  # a field of the method's knob model
    label: str  # the knob in variant names ("lambda" for exp_rw_sft's `lam`)
    values: tuple[float, ...]
    with_default: bool = True  # the method also runs with its default knobs, as the variant `<method>`


class MethodNotApplicable(ValueError):
    """The method cannot run on these logs (e.g. ips without propensities); the message says why ("skipped: ...")."""


@dataclass(frozen=True)
class PostTrainingMethod:
    name: str
    params_cls: type[MethodKnobs]  # the pydantic model of the method's knobs
    loss: LossFn
    prepare: PrepareFn | None = None  # may raise MethodNotApplicable
    description: str = ""
    needs_ranker: bool = False  # its rewards come from the ranker reward model
    family: Family | None = None  # which comparisons it enters (None: none, only the per-policy tables)
    key_knobs: tuple[str, ...] | None = None  # the knobs the report's tables show (None: every knob)
    sweep: Sweep | None = None  # the knob values it runs at in the chain besides (or instead of) its defaults
    # an NLL-type method (loss = weighted NLL of the logged targets) gives its weights: it can then train
    # data-parallel, each process on its share of a batch whose weights are taken over the whole batch
    # (recmodels/post_training/distributed.py)
    target_weights: TargetWeightsFn | None = None
    # seconds per optimizer step relative to sft's, at the chain's batch size: the chain starts the costlier
    # variants first (assets/post_training.py), so that short ones, not a long one, end it. Measured on
    # the MovieLens-100k chain (one thread per step, 25 steps plus a valid check): sft, exp_rw_sft 12.5 s;
    # nll_grpo, adagrpo (NLL and rollouts) 14 s; dpo, ppo, grpo (rollouts only) 7.5 s
    step_cost: float = 1.0

    def parse_params(self, raw: Mapping[str, Any] | None) -> MethodKnobs:
        """The knob model from `method_params`; an unknown, repeated or invalid knob raises ValueError naming
        the method and the knob."""
        try:
            return self.params_cls.model_validate(dict(raw or {}))
        except ValidationError as exc:
            raise ValueError("; ".join(self._knob_error(e) for e in exc.errors(include_url=False))) from None

    def _knob_error(self, error: dict) -> str:
        key = error["loc"][0] if error["loc"] else ""
        if error["type"] == "extra_forbidden" and key in self.knob_keys():
            return (f"parameter {self.knob_keys()[key]!r} of post-training method {self.name!r} is given twice "
                    f"(as {key!r} and under another name)")
        if error["type"] == "extra_forbidden":
            return (f"unknown parameter {key!r} for post-training method {self.name!r}; "
                    f"accepted: {sorted(self.knob_keys()) or 'none'}")
        return f"parameter {key!r} of post-training method {self.name!r}: {error['msg']}, got {error['input']!r}"

    def knob_keys(self) -> dict[str, str]:
        """Every key `method_params` accepts (knob names and their aliases) -> the knob it sets."""
        keys = {}
        for knob, info in self.params_cls.model_fields.items():
            aliases = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else []
            keys |= {str(alias): knob for alias in (knob, *aliases)}
        return keys

    def canonical_knobs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with aliases replaced by the knob names ({"lambda": 0.3} -> {"lam": 0.3})."""
        keys = self.knob_keys()
        return {keys.get(k, k): v for k, v in params.items()}

    def default(self, knob: str) -> Any:
        return self.params_cls.model_fields[knob].default

    def label(self, knob: str) -> str:
        """How the report writes the knob (its field's title: "λ" for lam), else its name."""
        info = self.params_cls.model_fields.get(knob)
        return info.title if info is not None and info.title else knob


METHODS: dict[str, PostTrainingMethod] = {
    "sft": PostTrainingMethod("sft", sft.SFTParams, sft.sft_loss, family="nll",
                              target_weights=sft.sft_target_weights,
                              description="next-item NLL on the same logs (more training, no reward)"),
    "exp_rw_sft": PostTrainingMethod("exp_rw_sft", exp_rw_sft.ExpRwSFTParams, exp_rw_sft.exp_rw_sft_loss,
                                     prepare=exp_rw_sft.prepare, family="reward_weighted_nll",
                                     target_weights=exp_rw_sft.exp_rw_sft_target_weights,
                                     key_knobs=("lam", "baseline", "w_max"),
                                     sweep=Sweep("lam", "lambda", (0.1, 0.3, 3.0)),
                                     description="NLL weighted by exp(reward / lambda)"),
    "ips": PostTrainingMethod("ips", ips.IPSParams, ips.ips_loss, prepare=ips.prepare, family="reward_weighted_nll",
                              target_weights=ips.ips_target_weights,
                              key_knobs=("clip",),
                              description="self-normalized NLL weighted by clipped reward / propensity"),
    "dpo": PostTrainingMethod("dpo", dpo.DPOParams, dpo.dpo_loss, needs_ranker=True, family="rlhf",
                              key_knobs=("beta",), step_cost=0.6,
                              description="DPO on pairs sampled from the reference, ordered by the ranker"),
    "ppo": PostTrainingMethod("ppo", ppo.PPOParams, ppo.ppo_loss, needs_ranker=True, family="rlhf",
                              key_knobs=("eps", "beta"), step_cost=0.6,
                              description="clipped PPO on ranker reward minus a KL penalty to the reference"),
    "grpo": PostTrainingMethod("grpo", grpo.GRPOParams, grpo.grpo_loss, needs_ranker=True, family="rlhf",
                               key_knobs=("group_size", "eps", "beta"), step_cost=0.6,
                               description="group-relative policy optimization on ranker rewards"),
    "nll_grpo": PostTrainingMethod("nll_grpo", nll_grpo.NLLGRPOParams, nll_grpo.nll_grpo_loss, needs_ranker=True,
                                   family="nll_plus_rl", key_knobs=("alpha",), step_cost=1.1,
                                   sweep=Sweep("alpha", "alpha", (0.1, 0.3, 1.0), with_default=False),
                                   description="NLL + alpha * GRPO"),
    "adagrpo": PostTrainingMethod("adagrpo", adagrpo.AdaGRPOParams, adagrpo.adagrpo_loss, needs_ranker=True,
                                  family="nll_plus_rl", key_knobs=("alpha", "tau_h", "delta"), step_cost=1.1,
                                  description="NLL + alpha * GRPO gated per sample by difficulty and discriminability"),
}


def get_method(name: str) -> PostTrainingMethod:
    """The registered method called `name`; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown post-training method {name!r}; known methods: {sorted(METHODS)}") from None


def methods_of_family(*families: Family) -> tuple[str, ...]:
    """The registered methods of these families, in registry order."""
    return tuple(name for name, spec in METHODS.items() if spec.family in families)


def data_parallel_methods() -> tuple[str, ...]:
    """The methods that can train data-parallel under torchrun: those that give their target weights."""
    return tuple(name for name, spec in METHODS.items() if spec.target_weights is not None)


def needs_ranker(method: str | None) -> bool:
    """Whether `method` is a registered method whose rewards come from the ranker reward model."""
    return method in METHODS and METHODS[method].needs_ranker
