"""The training loop shared by every post-training method (docs/design.md §4).

Every method starts from a copy of the pretrained policy and gets the same budget: `steps`
optimizer steps on batches of `batch_size` training windows (epochs reshuffled with a seeded
generator). Valid NDCG@10 is measured every `eval_every` steps (and, when asked, every
`early_eval_every` steps up to `early_eval_until`: a method whose best point comes early is not
judged at a coarse grid) and the best trained weights are
kept (model selection on valid only). With `patience`, the same rule ends every method early: after
`patience` checks in a row without a better valid NDCG@10 (default None: all `steps`); with `collapse_ratio`,
also at the first check whose valid NDCG@10 is under that fraction of the starting policy's (a method that lost
that much has collapsed; its selection is the best check up to there). A method only
supplies its loss; the loop hands it a `MethodContext` with the frozen reference policy, the optional
ranker and whatever its `prepare` precomputed, so rollout-based methods plug in the same way as likelihood-based ones.
The context also holds the one memoized cache of the reference's log-probs that every method
needing pi_ref reads (reference_cache.py), a scratch dict a method keeps across steps (PPO's
rollouts for its inner epochs) and the tokenization (`recmodels/tokenization/`): atomic item tokens for a
`GenerativePolicy`, semantic-ID code tuples for a `SemanticPolicy`, so every method runs on both.

Crash safety: with a `resume_dir`, the loop saves a resumable state there (`recmodels.storage.checkpoints`)
every `checkpoint_every` steps and after the last step, atomically: weights, optimizer, step, the
position in the shuffled data (the shuffling generator's state at the epoch's start and the batches
of the epoch already taken), the rollout generator, the global RNG states, the reference cache, the
valid selection (history, best weights and step) and the telemetry sums. A method's `ctx.memory` is
not saved: a save waits for a step where every value kept there is `spent` (PPO's rollouts after
their last inner epoch), so the resumed method rebuilds it exactly as the uninterrupted run would.
A `post_train` given a `resume_dir` holding a state of the same run (method, knobs, config, data,
starting weights, ranker) continues from it and ends with the same weights as an uninterrupted run;
a state of another run is ignored with a warning. Saving draws from no RNG: the numbers are the same
with or without a `resume_dir`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn as nn

from recmodels.models.policy import GenerativePolicy
from recmodels.post_training.reference_cache import ReferenceCache
from recmodels.post_training.registry import PostTrainingMethod, get_method
from recmodels.tokenization.items import AtomicItems, SemanticItems, kl_to_reference, tokenization_for
from recmodels.runtime import default_device, mixed_precision, seed_everything
from recmodels.storage.checkpoints import fingerprint, load_training_state, save_training_state, set_rng_state, \
    training_state_path
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
    early_eval_every: int | None = None  # denser valid evaluations early: every this many steps ...
    early_eval_until: int = 0  # ... up to this step (both needed; e.g. 5 and 50)
    seed: int = 0
    max_len: int = 50  # history length; capped at the policy's own context length
    stride: int | None = None  # window stride (default max_len)
    grad_clip: float | None = 1.0  # max global gradient norm (None = no clipping)
    method_params: dict = field(default_factory=dict)
    checkpoint_every: int = 25  # steps between two saves of the resumable state (only with a resume_dir)
    # valid checks without a better NDCG@10 before the run stops; None (the default): the whole budget. On the
    # MovieLens-100k chain 3 would keep 10 of 12 selections but not sft's and exp_rw_sft λ=3's (best at step 200)
    patience: int | None = None
    # stop at the first check whose valid NDCG@10 is under this fraction of the starting policy's (step 0); None:
    # never. On the MovieLens-100k chain 0.5 ends dpo, ppo, grpo and nll_grpo α >= 0.3 at their selected check
    collapse_ratio: float | None = None
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (on CUDA it is on wherever the GPU supports bf16)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "max_len", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PostTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"PostTrainConfig.lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"PostTrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.patience is not None and int(self.patience) < 1:
            raise ValueError(f"PostTrainConfig.patience must be >= 1 or None, got {self.patience}")
        if self.collapse_ratio is not None and not 0 < self.collapse_ratio < 1:
            raise ValueError(f"PostTrainConfig.collapse_ratio must be in (0, 1) or None, got {self.collapse_ratio}")
        if self.early_eval_every is not None and (int(self.early_eval_every) < 1 or int(self.early_eval_until) < 1):
            raise ValueError(f"PostTrainConfig.early_eval_every={self.early_eval_every} needs early_eval_every >= 1 "
                             f"and early_eval_until >= 1, got early_eval_until={self.early_eval_until}")

    def evaluates_at(self, step: int) -> bool:
        """Whether the loop measures valid after optimizer step `step` (>= 1)."""
        early = (self.early_eval_every is not None and step <= self.early_eval_until
                 and step % self.early_eval_every == 0)
        return early or step % self.eval_every == 0 or step == self.steps


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
    # a method's scratch space kept across steps; a value with `spent` true may be dropped (resumable saves wait
    # for every value to be spent, and a resumed run starts with it empty)
    memory: dict[str, Any] = field(default_factory=dict)
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
    resumed_from_step: int | None = None  # the step of the saved state this run continued from, if any
    stopped_by: str = "budget"  # why the steps ended: "budget" (all run), "patience" or "collapse"

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds > 0 else float("nan")


def _frozen_copy(module: nn.Module, device: torch.device) -> nn.Module:
    module = copy.deepcopy(module).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def map_windows(windows: TrainingWindows, fn) -> TrainingWindows:
    """Apply `fn` to every tensor field (optional fields left None)."""
    return TrainingWindows(**{f.name: None if getattr(windows, f.name) is None else fn(getattr(windows, f.name))
                              for f in dataclasses.fields(windows)})


@dataclass
class DataPosition:
    """Where the stream of `_batches` stands: the epoch, how many of its batches went out and the shuffling
    generator's state before the epoch's permutation (None: the stream has not started)."""

    epoch: int = 0
    batch: int = 0
    rng: torch.Tensor | None = None


def _batches(windows: TrainingWindows, batch_size: int, generator: torch.Generator,
             position: DataPosition | None = None):
    """Endless (epoch, batch) stream: each epoch is a fresh seeded permutation of the windows.

    `position` is kept up to date as batches go out; a stream started from a saved position redraws
    that epoch's permutation from the saved generator state and skips the batches already taken.
    """
    position = position if position is not None else DataPosition()
    if position.rng is not None:
        generator.set_state(position.rng)
    taken = position.batch
    while True:
        position.rng = generator.get_state()
        order = torch.randperm(len(windows), generator=generator)
        for b, s in enumerate(range(0, len(order), batch_size)):
            if b < taken:
                continue
            position.batch = b + 1
            idx = order[s:s + batch_size]
            yield position.epoch, map_windows(windows, lambda t: t[idx])
        taken, position.epoch, position.batch = 0, position.epoch + 1, 0


def _to(batch: TrainingWindows, device: torch.device) -> TrainingWindows:
    return map_windows(batch, lambda t: t.to(device))


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

    def state_dict(self) -> dict:
        return {"sums": self.sums, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.n = dict(state["sums"]), state["n"]


class ValidSelection:
    """Evaluates the policy on valid (history rows to `callback`) and keeps the best weights after step 0; settled
    after `patience` checks without a better one, or at a check under `collapse_ratio` x the step-0 check."""

    def __init__(self, policy: nn.Module, reference: nn.Module, valid: EvalExamples,
                 tokenization: AtomicItems | SemanticItems, device: torch.device,
                 callback: Callable[[dict], None] | None, patience: int | None = None,
                 collapse_ratio: float | None = None):
        self.policy, self.reference, self.valid = policy, reference, valid
        self.tokenization, self.device, self.callback = tokenization, device, callback
        self.best = BestWeights(policy, patience=math.inf if patience is None else patience)
        self.collapse_ratio = collapse_ratio
        self.history: list[dict] = []
        self.best_step, self.best_ndcg = -1, float("-inf")

    @functools.cached_property
    def check(self) -> Callable[[nn.Module], dict[str, float]]:
        """policy -> kl_to_reference, valid_ndcg@10, valid_hr@10; built at the first check (where the reference's
        part is computed once), so a process that never measures never builds it."""
        return self.tokenization.valid_check(self.reference, self.valid, self.device)

    def measure(self, step: int, epoch: float, telemetry: dict[str, float]) -> dict:
        """The evaluation row of the policy as it is now."""
        return {"step": step, "epoch": round(epoch, 4), **telemetry, **self.check(self.policy)}

    def evaluate(self, step: int, epoch: float, telemetry: dict[str, float]) -> None:
        row = self.measure(step, epoch, telemetry)
        self.history.append(row)
        if self.callback is not None:
            self.callback(row)
        if step > 0 and self.best.improved(row["valid_ndcg@10"], self.best_ndcg):
            self.best_step, self.best_ndcg = step, row["valid_ndcg@10"]

    @property
    def settled(self) -> bool:
        """Whether `patience` checks after step 0 in a row brought no better valid NDCG@10 (never without one), or
        the latest check collapsed (`collapsed`)."""
        return self.best.should_stop or self.collapsed

    @property
    def collapsed(self) -> bool:
        """Whether the latest check after step 0 is under `collapse_ratio` x the step-0 check's valid NDCG@10."""
        if self.collapse_ratio is None or len(self.history) < 2:
            return False
        start, latest = self.history[0], self.history[-1]
        return latest["valid_ndcg@10"] < self.collapse_ratio * start["valid_ndcg@10"]

    @property
    def stopped_by(self) -> str:
        """Why a loop that ends now ends: "collapse", "patience", or "budget" (not settled: every step ran)."""
        return "collapse" if self.collapsed else "patience" if self.best.should_stop else "budget"

    def state_dict(self) -> dict:
        return {"history": self.history, "best_step": self.best_step, "best_ndcg": self.best_ndcg,
                "best": self.best.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Take over a saved selection; its history rows go to `callback` again (a new tracking run gets them all)."""
        self.history = list(state["history"])
        self.best_step, self.best_ndcg = state["best_step"], state["best_ndcg"]
        self.best.load_state_dict(state["best"])
        for row in self.history if self.callback is not None else ():
            self.callback(row)


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
                    optimizer: torch.optim.Optimizer, grad_clip: float | None,
                    cpu_bf16: bool = False) -> dict[str, float]:
    """One update on the method's loss; returns the loss and the method's telemetry."""
    with mixed_precision(ctx.device, cpu_bf16):
        loss, telemetry = spec.loss(policy, batch, ctx)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"post-training method {spec.name!r}: loss is {loss.item()} at step {ctx.step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    return {"loss": loss.item(), **telemetry}


@dataclass
class LoopState:
    """What `train_steps` carries from step to step besides the policy, the optimizer and the generators."""

    step: int = 0  # optimizer steps taken
    seen: int = 0  # training windows consumed
    train_seconds: float = 0.0
    position: DataPosition = field(default_factory=DataPosition)
    telemetry: TelemetryMeans = field(default_factory=TelemetryMeans)
    resumed_from_step: int | None = None


def _memory_spent(memory: dict[str, Any]) -> bool:
    """Whether every value a method keeps across steps may be dropped (see `MethodContext.memory`)."""
    return all(getattr(value, "spent", False) for value in memory.values())


def _save_state(path: Path, state_key: str, policy: nn.Module, optimizer: torch.optim.Optimizer,
                config: PostTrainConfig, ctx: MethodContext, selection: ValidSelection, loop: LoopState) -> None:
    progress = {"step": loop.step, "seen": loop.seen, "train_seconds": loop.train_seconds,
                "data": dataclasses.asdict(loop.position), "telemetry": loop.telemetry.state_dict(),
                "selection": selection.state_dict(), "reference_cache": ctx.reference_cache.state_dict()}
    save_training_state(path, policy, config, optimizer, {"rollouts": ctx.generator}, progress, state_key)


def _resume(saved: dict, policy: nn.Module, optimizer: torch.optim.Optimizer, ctx: MethodContext,
            selection: ValidSelection) -> LoopState:
    """Load a saved post-training state into the loop's objects; the loop state to go on from."""
    progress = saved["progress"]
    policy.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"], {"rollouts": ctx.generator})
    ctx.reference_cache.load_state_dict(progress["reference_cache"], ctx.device)
    selection.load_state_dict(progress["selection"])
    loop = LoopState(step=progress["step"], seen=progress["seen"], train_seconds=progress["train_seconds"],
                     position=DataPosition(**progress["data"]), resumed_from_step=progress["step"])
    loop.telemetry.load_state_dict(progress["telemetry"])
    return loop


# (batch on the device, optimizer) -> the step's telemetry: one update of the policy
StepFn = Callable[[TrainingWindows, torch.optim.Optimizer], dict[str, float]]


def train_steps(spec: PostTrainingMethod, policy: nn.Module, windows: TrainingWindows, ctx: MethodContext,
           config: PostTrainConfig, generator: torch.Generator, selection: ValidSelection,
           state_file: Path | None = None, state_key: str = "", step: StepFn | None = None,
           writes_state: bool = True) -> LoopState:
    """`config.steps` optimizer steps, valid measured where `config.evaluates_at`; the final loop state.
    With `config.patience` or `config.collapse_ratio`, the loop ends early once the selection is settled
    (`ValidSelection.settled`).

    With `state_file`, a resumable state is saved there (with `state_key` as fingerprint) once at least
    `checkpoint_every` steps passed since the last save and the method's memory is spent, and after the
    last step; a state there with the same key is resumed instead of starting at step 0.

    `step` replaces the update on the method's loss (the data-parallel step of `distributed.py`);
    `writes_state=False`: this process reads a saved state but leaves the saving to another.
    """
    step = step or (lambda batch, optimizer: _optimizer_step(spec, policy, batch, ctx, optimizer, config.grad_clip,
                                                             config.cpu_bf16))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    saved = load_training_state(state_file, state_key) if state_file is not None else None
    if saved is None:
        selection.evaluate(0, 0.0, {})
        loop = LoopState()
    else:
        loop = _resume(saved, policy, optimizer, ctx, selection)
    last_save = loop.step
    policy.train()
    for _, batch in _batches(windows, config.batch_size, generator, loop.position):
        if loop.step >= config.steps or selection.settled:
            break
        started = time.perf_counter()
        ctx.step = loop.step
        loop.telemetry.add(step(_to(batch, ctx.device), optimizer))
        loop.train_seconds += time.perf_counter() - started
        loop.step += 1
        loop.seen += len(batch)
        if config.evaluates_at(loop.step):
            selection.evaluate(loop.step, loop.seen / len(windows), loop.telemetry.pop_means())
            policy.train()
        if state_file is not None and writes_state and (loop.step == config.steps or selection.settled or (
                loop.step - last_save >= config.checkpoint_every and _memory_spent(ctx.memory))):
            _save_state(state_file, state_key, policy, optimizer, config, ctx, selection, loop)
            last_save = loop.step
    return loop


def post_train_fingerprint(method: str, params: Any, pretrained: nn.Module, ranker: nn.Module | None,
                           interactions: pd.DataFrame, config: PostTrainConfig, windows: TrainingWindows,
                           semantic_ids: SemanticIds | None, reward_spec: RewardSpec, device: torch.device) -> str:
    """What a resumable post-training state must match: the method and its knobs, every knob of the config but
    `checkpoint_every`, the starting weights, the ranker, the interactions and windows, the semantic IDs,
    the reward spec and the device type."""
    knobs = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpoint_every"}
    return fingerprint("post_training", method, params.model_dump(), knobs, pretrained.state_dict(),
                       ranker.state_dict() if ranker is not None else None, interactions, windows,
                       semantic_ids.codes if semantic_ids is not None else None, reward_spec, device.type)


def post_train(method: str, pretrained: GenerativePolicy | SemanticPolicy, interactions: pd.DataFrame,
               config: PostTrainConfig, ranker: nn.Module | None = None,
               callback: Callable[[dict], None] | None = None, device=None,
               semantic_ids: SemanticIds | None = None, reward_spec: RewardSpec | None = None,
               resume_dir: str | Path | None = None) -> PostTrainResult:
    """Post-train a copy of `pretrained` with `method` for `config.steps` steps; keep the best valid weights.

    The pretrained policy (and the ranker) are never modified. Evaluation rows go to `callback`
    and `history`: step, epoch (fraction of passes over the windows), the method's telemetry
    averaged over the steps since the previous row, kl_to_reference, valid_ndcg@10, valid_hr@10.
    The step-0 row measures the pretrained start; the returned weights are the best of the
    evaluations after training began (`config.evaluates_at`: every `eval_every` steps, the denser early ones
    when asked, and the last step).

    `reward_spec` is the interactions' reward labeling (default: `RewardSpec()`, ratings to [-1, 1]):
    a generated item that is no real item (semantic IDs) gets its lower bound as reward.

    A `SemanticPolicy` needs `semantic_ids` (the code tuple of every item): its training windows
    become code tokens, rollouts are whole code tuples, and valid NDCG@10 / HR@10 come from a
    constrained beam search (beam 10, the trie of real items); each row also carries
    `valid_hallucination_rate`, the share of no-item tuples in an unconstrained beam search
    (beam 10) on ALL the valid examples, and `kl_to_reference` is the KL of the level-0 code
    distributions (see tokenization.SemanticItems).

    With `resume_dir`, a resumable state is saved there every `config.checkpoint_every` steps and a
    state found there is resumed (see the module docstring); `resumed_from_step` says from which step.
    """
    run = prepare_run(method, pretrained, interactions, config, ranker, device, semantic_ids, reward_spec, resume_dir)
    selection = ValidSelection(run.policy, run.ctx.reference, run.valid, run.tokenization, run.ctx.device, callback,
                               config.patience, config.collapse_ratio)
    loop = train_steps(run.spec, run.policy, run.windows, run.ctx, config, run.generator, selection, run.state_file,
                  run.state_key)
    return finish_run(run, selection, loop)


@dataclass
class PreparedRun:
    """Everything a post-training run sets up before its first step (`prepare_run`)."""

    spec: PostTrainingMethod
    policy: nn.Module  # the copy of the pretrained policy that trains, on the device
    windows: TrainingWindows
    valid: EvalExamples
    ctx: MethodContext
    tokenization: AtomicItems | SemanticItems
    generator: torch.Generator  # the data shuffle
    state_file: Path | None  # where the resumable state lives (None: no resume_dir)
    state_key: str


def prepare_run(method: str, pretrained: GenerativePolicy | SemanticPolicy, interactions: pd.DataFrame,
                config: PostTrainConfig, ranker: nn.Module | None = None, device=None,
                semantic_ids: SemanticIds | None = None, reward_spec: RewardSpec | None = None,
                resume_dir: str | Path | None = None) -> PreparedRun:
    """The checks, seeds, data and method context of a `post_train` run (shared with the data-parallel run)."""
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
    reward_spec = reward_spec or RewardSpec()
    ctx = _method_context(spec, params, pretrained, ranker, interactions, config, device, tokenization, reward_spec)
    state_file, state_key = None, ""
    if resume_dir is not None:
        state_file = training_state_path(resume_dir)
        state_key = post_train_fingerprint(method, params, pretrained, ranker, interactions, config, windows,
                                           semantic_ids, reward_spec, device)
    return PreparedRun(spec=spec, policy=policy, windows=windows, valid=valid, ctx=ctx, tokenization=tokenization,
                       generator=generator, state_file=state_file, state_key=state_key)


def finish_run(run: PreparedRun, selection: ValidSelection, loop: LoopState) -> PostTrainResult:
    """The result: the best valid weights restored into the policy, its history and bookkeeping."""
    selection.best.restore()
    return PostTrainResult(policy=run.policy, method=run.spec.name, history=selection.history,
                           best_step=selection.best_step, best_valid_ndcg10=selection.best_ndcg,
                           params=_knobs_as_used(run.spec, run.ctx), steps=loop.step,
                           train_seconds=loop.train_seconds, resumed_from_step=loop.resumed_from_step,
                           stopped_by=selection.stopped_by)
