"""The training loop shared by every post-training method (docs/design.md §4).

Every method starts from a copy of the pretrained policy and gets the same budget: `steps`
optimizer steps on batches of `batch_size` training windows (epochs reshuffled with a seeded
generator). Valid NDCG@10 is measured every `eval_every` steps and the best trained weights are
kept (model selection on valid only). A method only supplies its loss; the loop hands it a
`MethodContext` with the frozen reference policy, the optional ranker and whatever its
`prepare` precomputed, so rollout-based methods plug in the same way as likelihood-based ones.
The context also holds the one memoized cache of the reference's log-probs that every method
needing pi_ref reads (reference_cache.py), a scratch dict a method keeps across steps (PPO's
rollouts for its inner epochs) and the tokenization (`recmodels/tokenization/`): atomic item tokens for a
`GenerativePolicy`, semantic-ID code tuples for a `SemanticPolicy`, so every method runs on both.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn as nn

from recmodels.models.policy import GenerativePolicy
from recmodels.post_training.reference_cache import ReferenceCache
from recmodels.post_training.registry import PostTrainingMethod, get_method
from recmodels.tokenization.items import AtomicItems, SemanticItems, kl_to_reference, tokenization_for
from recmodels.runtime import default_device, seed_everything
from recmodels.models.semantic_policy import SemanticPolicy
from recmodels.data.sequences import EvalExamples, TrainingWindows, build_user_sequences, eval_examples, training_windows
from recmodels.data.rewards import RewardSpec
from recmodels.tokenization.semantic_ids import SemanticIds
from recmodels.training.early_stopping import BestWeights

__all__ = ["MethodContext", "PostTrainConfig", "PostTrainResult", "kl_to_reference", "post_train"]


@dataclass
class PostTrainConfig:
    steps: int = 200  # optimizer steps: the budget every method gets
    batch_size: int = 128  # training windows per step
    lr: float = 3e-4
    weight_decay: float = 0.0
    eval_every: int = 25  # steps between valid evaluations
    seed: int = 0
    max_len: int = 50  # history length; capped at the policy's own context length
    stride: int | None = None  # window stride (default max_len)
    grad_clip: float | None = 1.0  # max global gradient norm (None = no clipping)
    method_params: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "max_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PostTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"PostTrainConfig.lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"PostTrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")


@dataclass
class MethodContext:
    """What a method's loss may use besides the policy and the batch."""

    params: Any  # the method's knob model (knobs.py)
    reference: GenerativePolicy | SemanticPolicy  # frozen copy of the pretrained policy (eval mode, no grad)
    ranker: nn.Module | None  # frozen copy of the ranker reward model, if one was given
    state: dict[str, torch.Tensor]  # what the method's `prepare` precomputed, on `device`
    device: torch.device
    generator: torch.Generator  # seeded, on `device`: for sampling rollouts
    step: int = 0  # optimizer steps taken so far
    memory: dict[str, Any] = field(default_factory=dict)  # a method's scratch space kept across steps
    reference_cache: ReferenceCache | None = None  # memoized pi_ref log-probs (built from `reference` if None)
    tokenization: AtomicItems | SemanticItems = field(default_factory=AtomicItems)  # how items become tokens
    invalid_reward: float = RewardSpec.low  # reward of a generated non-item: the reward spec's lower bound

    def __post_init__(self):
        if self.reference_cache is None:
            self.reference_cache = ReferenceCache(self.reference)


@dataclass
class PostTrainResult:
    policy: GenerativePolicy | SemanticPolicy  # the best weights on valid, eval mode
    method: str
    history: list[dict]  # one row per evaluation (step 0 = the pretrained start)
    best_step: int
    best_valid_ndcg10: float
    params: dict = field(default_factory=dict)  # the method's knobs as used
    steps: int = 0  # optimizer steps taken
    train_seconds: float = 0.0  # wall time of those steps (loss, backward, update), evaluations excluded

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds > 0 else float("nan")


def _frozen_copy(module: nn.Module, device: torch.device) -> nn.Module:
    module = copy.deepcopy(module).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _map_windows(windows: TrainingWindows, fn) -> TrainingWindows:
    """Apply `fn` to every tensor field (optional fields left None)."""
    return TrainingWindows(**{f.name: None if getattr(windows, f.name) is None else fn(getattr(windows, f.name))
                              for f in dataclasses.fields(windows)})


def _batches(windows: TrainingWindows, batch_size: int, generator: torch.Generator):
    """Endless (epoch, batch) stream: each epoch is a fresh seeded permutation of the windows."""
    epoch = 0
    while True:
        order = torch.randperm(len(windows), generator=generator)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            yield epoch, _map_windows(windows, lambda t: t[idx])
        epoch += 1


def _to(batch: TrainingWindows, device: torch.device) -> TrainingWindows:
    return _map_windows(batch, lambda t: t.to(device))


def _check_ranker(spec: PostTrainingMethod, ranker: nn.Module | None) -> None:
    if spec.needs_ranker and ranker is None:
        raise ValueError(f"post-training method {spec.name!r} takes its rewards from the ranker reward model: "
                         "pass ranker= to post_train")


def _knobs_as_used(spec: PostTrainingMethod, ctx: MethodContext) -> dict:
    """The knobs for the record; a ranker-rewarded method also records the reward its non-items got."""
    used = ctx.params.model_dump()
    return {**used, "invalid_reward": ctx.invalid_reward} if spec.needs_ranker else used


class TelemetryMeans:
    """The method's telemetry (with the loss) summed over the steps since the last evaluation."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, telemetry: dict[str, float]) -> None:
        for k, v in telemetry.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1

    def pop_means(self) -> dict[str, float]:
        means = {k: v / self.n for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return means


class ValidSelection:
    """Evaluates the policy on valid (history rows to `callback`) and keeps the best weights after step 0."""

    def __init__(self, policy: nn.Module, reference: nn.Module, valid: EvalExamples,
                 tokenization: AtomicItems | SemanticItems, device: torch.device,
                 callback: Callable[[dict], None] | None):
        self.policy, self.reference, self.valid = policy, reference, valid
        self.tokenization, self.device, self.callback = tokenization, device, callback
        self.best = BestWeights(policy, patience=math.inf)  # no early stopping: every method gets the whole budget
        self.history: list[dict] = []
        self.best_step, self.best_ndcg = -1, float("-inf")

    def evaluate(self, step: int, epoch: float, telemetry: dict[str, float]) -> None:
        row = {"step": step, "epoch": round(epoch, 4), **telemetry,
               "kl_to_reference": self.tokenization.kl_to_reference(self.policy, self.reference, self.valid.history,
                                                                    self.device),
               **self.tokenization.evaluate(self.policy, self.valid, self.device)}
        self.history.append(row)
        if self.callback is not None:
            self.callback(row)
        if step > 0 and self.best.improved(row["valid_ndcg@10"], self.best_ndcg):
            self.best_step, self.best_ndcg = step, row["valid_ndcg@10"]


def _method_context(spec: PostTrainingMethod, params: Any, pretrained: nn.Module, ranker: nn.Module | None,
                    interactions: pd.DataFrame, config: PostTrainConfig, device: torch.device,
                    tokenization: AtomicItems | SemanticItems, reward_spec: RewardSpec) -> MethodContext:
    """The frozen reference and ranker, what the method's `prepare` precomputed and the seeded rollout generator."""
    reference = _frozen_copy(pretrained, device)
    state = spec.prepare(params, interactions) if spec.prepare else {}
    rollout_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    return MethodContext(params=params, reference=reference,
                         ranker=_frozen_copy(ranker, device) if ranker is not None else None,
                         state={k: v.to(device) for k, v in state.items()}, device=device, generator=rollout_gen,
                         tokenization=tokenization, invalid_reward=reward_spec.low)


def _optimizer_step(spec: PostTrainingMethod, policy: nn.Module, batch: TrainingWindows, ctx: MethodContext,
                    optimizer: torch.optim.Optimizer, grad_clip: float | None) -> dict[str, float]:
    """One update on the method's loss; returns the loss and the method's telemetry."""
    loss, telemetry = spec.loss(policy, batch, ctx)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"post-training method {spec.name!r}: loss is {loss.item()} at step {ctx.step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    return {"loss": loss.item(), **telemetry}


def _train(spec: PostTrainingMethod, policy: nn.Module, windows: TrainingWindows, ctx: MethodContext,
           config: PostTrainConfig, generator: torch.Generator, selection: ValidSelection) -> tuple[int, float]:
    """`config.steps` optimizer steps, evaluated every `eval_every` steps and at the last; (steps, train seconds)."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    selection.evaluate(0, 0.0, {})
    telemetry = TelemetryMeans()
    step, seen, train_seconds = 0, 0, 0.0
    policy.train()
    for _, batch in _batches(windows, config.batch_size, generator):
        if step >= config.steps:
            break
        started = time.perf_counter()
        ctx.step = step
        telemetry.add(_optimizer_step(spec, policy, _to(batch, ctx.device), ctx, optimizer, config.grad_clip))
        train_seconds += time.perf_counter() - started
        step += 1
        seen += len(batch)
        if step % config.eval_every == 0 or step == config.steps:
            selection.evaluate(step, seen / len(windows), telemetry.pop_means())
            policy.train()
    return step, train_seconds


def post_train(method: str, pretrained: GenerativePolicy | SemanticPolicy, interactions: pd.DataFrame,
               config: PostTrainConfig, ranker: nn.Module | None = None,
               callback: Callable[[dict], None] | None = None, device=None,
               semantic_ids: SemanticIds | None = None, reward_spec: RewardSpec | None = None) -> PostTrainResult:
    """Post-train a copy of `pretrained` with `method` for `config.steps` steps; keep the best valid weights.

    The pretrained policy (and the ranker) are never modified. Evaluation rows go to `callback`
    and `history`: step, epoch (fraction of passes over the windows), the method's telemetry
    averaged over the steps since the previous row, kl_to_reference, valid_ndcg@10, valid_hr@10.
    The step-0 row measures the pretrained start; the returned weights are the best of the
    evaluations after training began (every `eval_every` steps and the last step).

    `reward_spec` is the interactions' reward labeling (default: `RewardSpec()`, ratings to [-1, 1]):
    a generated item that is no real item (semantic IDs) gets its lower bound as reward.

    A `SemanticPolicy` needs `semantic_ids` (the code tuple of every item): its training windows
    become code tokens, rollouts are whole code tuples, and valid NDCG@10 / HR@10 come from a
    constrained beam search (beam 10, the trie of real items); each row also carries
    `valid_hallucination_rate`, the share of no-item tuples in an unconstrained beam search
    (beam 10) on ALL the valid examples, and `kl_to_reference` is the KL of the level-0 code
    distributions (see tokenization.SemanticItems).
    """
    tokenization = tokenization_for(pretrained, semantic_ids)
    tokenization.check(pretrained, interactions)
    spec = get_method(method)
    params = spec.parse_params(config.method_params)
    _check_ranker(spec, ranker)
    device = torch.device(device) if device is not None else default_device()
    generator = seed_everything(config.seed)

    policy = copy.deepcopy(pretrained).to(device)
    max_len = min(config.max_len, pretrained.cfg.max_len)
    seqs = build_user_sequences(interactions)
    windows = training_windows(seqs, max_len, config.stride)
    valid = eval_examples(seqs, "valid", max_len)
    ctx = _method_context(spec, params, pretrained, ranker, interactions, config, device, tokenization,
                          reward_spec or RewardSpec())
    selection = ValidSelection(policy, ctx.reference, valid, tokenization, device, callback)
    steps, train_seconds = _train(spec, policy, windows, ctx, config, generator, selection)
    selection.best.restore()
    return PostTrainResult(policy=policy, method=method, history=selection.history, best_step=selection.best_step,
                           best_valid_ndcg10=selection.best_ndcg, params=_knobs_as_used(spec, ctx), steps=steps,
                           train_seconds=train_seconds)
