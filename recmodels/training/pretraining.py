"""Pretraining of the generative policy: next-token NLL at every position of the train windows.

One loop for every tokenization (`recmodels.tokenization.items`): the tokenization turns the item
windows into token windows (atomic: the items themselves; semantic IDs: L+1 codes per item, every
target item costing its L+1 codes), builds the policy's config and ranks the valid items.

Model selection follows docs/design.md §5: after each evaluated epoch the policy ranks every user's
`valid` item (history masked: over the full catalog for atomic tokens, among constrained beams for
semantic IDs) and training stops when valid NDCG@10 has not improved for `patience` evaluations;
the best weights are restored.

Crash safety: with a `resume_dir`, the loop saves a resumable state there (weights, optimizer, RNG
states, epoch, history and early-stopping state; `recmodels.storage.checkpoints`) every
`checkpoint_every` epochs and when training ends, atomically. A run given a `resume_dir` that holds a
state saved with the same config, data and tokenization continues from it and ends with the same
weights as an uninterrupted run; a state from another run is ignored with a warning. Saving draws
from no RNG, so the numbers are the same with or without a `resume_dir`.

Several processes: `recmodels.training.distributed.pretrain_distributed` runs the same loop (`run_epochs`
with a `DataParallel`) in every process of a torchrun job, each on its share of every global batch.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F

from recmodels.data.sequences import EvalExamples, build_user_sequences, eval_examples, training_windows
from recmodels.evaluation.metrics import hit_rate, ndcg
from recmodels.models.warm_start import start_from_atomic
from recmodels.runtime import default_device, mixed_precision, seed_everything
from recmodels.storage.checkpoints import fingerprint, load_training_state, save_training_state, set_rng_state, \
    training_state_path
from recmodels.tokenization.items import AtomicItems, ItemTokenization
from recmodels.training.distillation import check_teacher, distilled_window_loss
from recmodels.training.early_stopping import BestWeights
from recmodels.training.weight_average import WeightAverage

REQUIRED_COLUMNS = ("user_idx", "item_idx", "reward", "split")


@dataclass
class PretrainConfig:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    patience: int = 10  # evaluations without a better valid NDCG@10 before stopping
    eval_every: int = 1  # epochs between two valid evaluations
    seed: int = 0
    max_len: int | None = None  # window length; None = the policy's max_len (they must agree)
    stride: int | None = None  # step between overlapping windows; None = max_len (no overlap)
    checkpoint_every: int = 1  # epochs between two saves of the resumable state (only with a resume_dir)
    warmup_epochs: float = 0.0  # the learning rate rises linearly from 0 to lr over these epochs
    schedule: str = "constant"  # after warmup: "constant" lr, or "cosine" decay to lr/10 at the last epoch
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (on CUDA it is on wherever the GPU supports bf16)
    # share of the loss that is the cross-entropy to a teacher's distributions (`pretrain_policy(teacher=...)`,
    # `recmodels.training.distillation`); 0: the plain next-token NLL
    distill_weight: float = 0.0
    distill_temperature: float = 1.0  # the teacher's logits are divided by it before the softmax
    # share of each target's probability spread evenly over the tokens the policy may predict there (those with a
    # finite logit: never padding); 0: the plain next-token NLL
    label_smoothing: float = 0.0
    # the weights evaluated and kept are an exponential moving average of the trained ones with this decay per
    # optimizer step (`recmodels.training.weight_average`); 0: the trained weights themselves
    ema_decay: float = 0.0


SCHEDULES = ("constant", "cosine")


def lr_factor(config: PretrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based) over `config.lr`: linear warmup, then constant or
    cosine decay to 0.1 at the end of `config.epochs` (a function of the step alone, so resuming needs no
    scheduler state)."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    total = config.epochs * steps_per_epoch
    progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class PretrainResult:
    policy: torch.nn.Module  # the tokenization's policy class, best weights, eval mode
    policy_config: Any  # its config
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_ndcg10: float = float("-inf")
    resumed_from_epoch: int | None = None  # the epoch of the saved state this run continued from, if any


def check_interactions(interactions: pd.DataFrame, n_items: int) -> None:
    """Raise ValueError naming the column when the table breaks the interactions contract."""
    missing = [c for c in REQUIRED_COLUMNS if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions is missing column(s) {missing}; has {list(interactions.columns)}")
    if len(interactions) == 0:
        raise ValueError("interactions is empty")
    items = interactions["item_idx"].to_numpy()
    if items.min() < 1 or items.max() > n_items:
        bad = interactions.index[(items < 1) | (items > n_items)][0]
        raise ValueError(f"column item_idx must lie in 1..n_items={n_items}; row {bad} has "
                         f"{interactions.at[bad, 'item_idx']}")
    unknown = set(interactions["split"].astype(str).unique()) - {"train", "valid", "test"}
    if unknown:
        raise ValueError(f"column split has unknown value(s) {sorted(unknown)}; expected train/valid/test")
    rewards = interactions["reward"].to_numpy(dtype="float64")
    if not pd.notna(rewards).all() or not (abs(rewards) < float("inf")).all():
        raise ValueError("column reward holds NaN or infinite values")


def window_nll(policy, tokens: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean next-token NLL over the non-zero targets; equals `policy(tokens, targets)[1]` but only projects
    the positions that have a target (`policy.target_logits`: windows are often mostly padding). With
    `label_smoothing` e > 0: (1 - e) NLL + e times the mean NLL of the tokens with a finite logit (PyTorch's
    `label_smoothing` spreads over every class, and a -inf logit, padding's, would make it infinite)."""
    logits, wanted = policy.target_logits(tokens, targets), targets[targets != 0]  # [n, V], [n]
    if not label_smoothing:
        return F.cross_entropy(logits, wanted)
    log_p = F.log_softmax(logits.float(), dim=-1)  # [n, V]
    allowed = torch.isfinite(logits)
    uniform_nll = -log_p.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1)  # [n]
    nll = -log_p.gather(-1, wanted[:, None]).squeeze(-1)  # [n]
    return ((1.0 - label_smoothing) * nll + label_smoothing * uniform_nll).mean()


def evaluate_valid(policy, examples: EvalExamples, device: torch.device,
                   tokenization: ItemTokenization) -> dict[str, float]:
    ranks = tokenization.valid_ranks(policy, examples, device)
    return {"valid_hr@10": float(hit_rate(ranks, 10).mean()), "valid_ndcg@10": float(ndcg(ranks, 10).mean())}


def _resolve_configs(n_items: int, tokenization: ItemTokenization, policy_config: Any,
                     config: PretrainConfig) -> tuple[Any, PretrainConfig]:
    if policy_config is None:
        policy_config = tokenization.config_class(**tokenization.vocabulary(n_items))
        if config.max_len is not None:
            policy_config = replace(policy_config, max_len=config.max_len)
    tokenization.check_config(policy_config, n_items)
    if config.max_len is None:
        config = replace(config, max_len=policy_config.max_len)
    if config.max_len != policy_config.max_len:
        raise ValueError(f"PretrainConfig.max_len={config.max_len} differs from "
                         f"{type(policy_config).__name__}.max_len={policy_config.max_len}")
    check_pretrain_config(config)
    return policy_config, config


def check_pretrain_config(config: PretrainConfig) -> None:
    """Raise ValueError naming the field when a resolved PretrainConfig (max_len set) is out of range."""
    for name in ("epochs", "batch_size", "patience", "eval_every", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"PretrainConfig.{name} must be >= 1, got {getattr(config, name)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"PretrainConfig.schedule must be one of {list(SCHEDULES)}, got {config.schedule!r}")
    if config.warmup_epochs < 0:
        raise ValueError(f"PretrainConfig.warmup_epochs must be >= 0, got {config.warmup_epochs}")
    if not 0.0 <= config.distill_weight <= 1.0:
        raise ValueError(f"PretrainConfig.distill_weight must lie in [0, 1], got {config.distill_weight}")
    if config.distill_temperature <= 0:
        raise ValueError(f"PretrainConfig.distill_temperature must be > 0, got {config.distill_temperature}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"PretrainConfig.label_smoothing must lie in [0, 1), got {config.label_smoothing}")
    if config.label_smoothing and config.distill_weight:
        raise ValueError("PretrainConfig.label_smoothing and distill_weight are both > 0: the distillation loss "
                         "has no label smoothing; set one of them")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"PretrainConfig.ema_decay must lie in [0, 1), got {config.ema_decay}")
    if config.stride is not None and not 1 <= config.stride <= config.max_len:
        raise ValueError(f"PretrainConfig.stride must lie in 1..max_len={config.max_len}, got {config.stride}")


def pretrain_policy(interactions: pd.DataFrame, n_items: int, policy_config: Any = None,
                    config: PretrainConfig | None = None, callback: Callable[[dict], None] | None = None,
                    device: torch.device | str | None = None,
                    tokenization: ItemTokenization | None = None,
                    resume_dir: str | Path | None = None,
                    start_from: torch.nn.Module | None = None,
                    teacher: torch.nn.Module | None = None) -> PretrainResult:
    """Train the policy of `tokenization` (default: atomic items, a GenerativePolicy) on the train split;
    early-stop on valid NDCG@10, keep the best weights. `policy_config` defaults to the tokenization's
    vocabulary with the library's knobs. With `resume_dir`, a resumable state is saved there every
    `config.checkpoint_every` epochs, and a state found there is resumed (see the module docstring).
    `start_from`: a trained atomic policy the (semantic-ID) policy starts from instead of its fresh weights
    (`recmodels.models.warm_start.start_from_atomic`).
    `teacher`: a trained atomic policy whose distributions the policy also learns, with `config.distill_weight`
    > 0 (`recmodels.training.distillation`).
    `recmodels.training.distributed.pretrain_distributed` is the same training in several processes."""
    data = prepare_pretraining(interactions, n_items, policy_config, config, tokenization)
    config, policy_config, tokenization = data.config, data.policy_config, data.tokenization
    tokens, targets, valid = data.tokens, data.targets, data.valid
    if (teacher is None) != (config.distill_weight == 0):
        raise ValueError("distillation needs both a teacher and PretrainConfig.distill_weight > 0, got "
                         f"teacher={'a policy' if teacher is not None else None} and "
                         f"distill_weight={config.distill_weight}")
    device = torch.device(device) if device is not None else default_device()
    if teacher is not None:
        check_teacher(teacher, n_items)
        teacher = teacher.to(device)

    gen = seed_everything(config.seed)
    policy = tokenization.build_policy(policy_config)
    if start_from is not None:
        start_from_atomic(policy, start_from)
    policy = policy.to(device)
    result = PretrainResult(policy=policy, policy_config=policy_config)

    on_device = tokens.to(device), targets.to(device)  # once: no copy per batch on a GPU
    if teacher is not None:  # the teacher reads the windows as items
        item_windows = data.item_inputs.to(device), data.item_targets.to(device)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(device)
        with mixed_precision(device, config.cpu_bf16):
            if teacher is None:
                return window_nll(policy, on_device[0][idx], on_device[1][idx], config.label_smoothing)
            return distilled_window_loss(policy, teacher, tokenization, on_device[0][idx], on_device[1][idx],
                                         item_windows[0][idx], item_windows[1][idx], config.distill_weight,
                                         config.distill_temperature)

    def evaluate() -> dict[str, float]:
        return evaluate_valid(policy, valid, device, tokenization)

    state_key = ""
    if resume_dir is not None:
        state_key = pretrain_fingerprint(interactions, n_items, policy_config, config, tokenization, tokens,
                                         targets, device, start_from, teacher)
    return run_epochs(policy, data.n_windows, batch_loss, evaluate, config, gen, result, callback,
                      resume_dir=resume_dir, state_key=state_key)


@dataclass
class PretrainData:
    """What pretraining trains and selects on, built the same way in one process or several."""

    config: PretrainConfig  # resolved: max_len set
    policy_config: Any
    tokenization: ItemTokenization
    tokens: torch.Tensor  # [n_windows, S] token windows of the train split
    targets: torch.Tensor  # [n_windows, S] their next-token targets (0 = none)
    item_inputs: torch.Tensor  # [n_windows, T] the same windows as items (a distillation teacher reads them)
    item_targets: torch.Tensor  # [n_windows, T] their next items (0 = none)
    valid: EvalExamples  # the valid items ranked by model selection

    @property
    def n_windows(self) -> int:
        return len(self.tokens)


def prepare_pretraining(interactions: pd.DataFrame, n_items: int, policy_config: Any = None,
                        config: PretrainConfig | None = None,
                        tokenization: ItemTokenization | None = None) -> PretrainData:
    """Check the inputs, resolve the configs and cut the train windows and valid examples (draws no RNG)."""
    config = config or PretrainConfig()
    tokenization = tokenization or AtomicItems()
    check_interactions(interactions, n_items)
    policy_config, config = _resolve_configs(n_items, tokenization, policy_config, config)
    seqs = build_user_sequences(interactions)
    windows = training_windows(seqs, config.max_len, config.stride)
    tokens, targets = tokenization.window_tokens(windows.inputs, windows.targets)
    valid = eval_examples(seqs, "valid", config.max_len)
    return PretrainData(config, policy_config, tokenization, tokens, targets, windows.inputs, windows.targets, valid)


def pretrain_fingerprint(interactions: pd.DataFrame, n_items: int, policy_config: Any, config: PretrainConfig,
                         tokenization: ItemTokenization, tokens: torch.Tensor, targets: torch.Tensor,
                         device: torch.device, start_from: torch.nn.Module | None = None,
                         teacher: torch.nn.Module | None = None) -> str:
    """What a resumable pretraining state must match: every knob but `checkpoint_every`, the policy config, the
    tokenization, the interactions, the token windows (semantic IDs included), the device type and the weights
    of the policy a warm start starts from and of a distillation teacher."""
    knobs = {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}
    if not config.distill_weight:  # a run without distillation keeps the key it had before the knobs existed
        knobs = {k: v for k, v in knobs.items() if not k.startswith("distill_")}
    for knob in ("label_smoothing", "ema_decay"):  # as does a run without label smoothing or weight average
        if not knobs[knob]:
            knobs.pop(knob)
    policy_knobs = {f.name: getattr(policy_config, f.name) for f in fields(policy_config)}
    for knob, former in (("positions", "learned"), ("block", "transformer")):  # as does a policy without them
        if policy_knobs.get(knob) == former:
            policy_knobs.pop(knob)
    warm = [start_from.state_dict()] if start_from is not None else []  # a cold start keeps its former key
    warm += [{"teacher": teacher.state_dict()}] if teacher is not None else []
    return fingerprint("pretraining", knobs, n_items, policy_knobs, type(tokenization).__name__, interactions,
                       tokens, targets, device.type, *warm)


@dataclass(frozen=True)
class DataParallel:
    """How `run_epochs` runs as one of `world_size` data-parallel processes (built by
    `recmodels.training.distributed`). Every process walks the same seeded shuffle; `batch_loss(idx)` gets the
    GLOBAL batch `idx`, computes this process's share of it and returns its part of the batch loss, scaled so
    that the gradients averaged over the processes are the one-process gradient of the whole batch and the
    batch losses of the processes average to the whole batch's loss; `evaluate()` returns the same metrics in
    every process (one evaluates, all receive), so every process takes the same early-stopping decisions."""

    world_size: int
    lead: bool  # this process writes the resumable state (the caller gives the callback to it alone)
    sum_over_processes: Callable[[float], float]  # the sum of a number over all processes (a collective)


def run_epochs(policy: torch.nn.Module, n_windows: int, batch_loss: Callable[[torch.Tensor], torch.Tensor],
               evaluate: Callable[[], dict[str, float]], config: PretrainConfig, generator: torch.Generator,
               result, callback: Callable[[dict], None] | None = None, resume_dir: str | Path | None = None,
               state_key: str = "", parallel: DataParallel | None = None):
    """The epoch loop of pretraining, whatever the tokenization: AdamW over seeded shuffles of the windows.

    `batch_loss(idx)` is the loss of the windows `idx`; `evaluate()` returns the valid metrics (with
    `valid_ndcg@10`) every `eval_every` epochs. Early stopping after `patience` evaluations without a
    better valid NDCG@10; the best weights are restored (with `config.ema_decay`, the weights evaluated and kept
    are the moving average of the trained ones, `WeightAverage`). `result` (history, best_epoch,
    best_valid_ndcg10, resumed_from_epoch) is filled in and returned.

    With `resume_dir`, the state is saved to `<resume_dir>/training_state.pt` after every
    `checkpoint_every`-th epoch and after the last one (early stop included), with `state_key` (the run's
    fingerprint) as its fingerprint; a state there with the same key is resumed: its history rows go to
    `callback` first, then training goes on from the epoch after it.

    With `parallel`, this is one process of a data-parallel run (see `DataParallel`): the epoch's train loss
    is averaged over the processes, and only the lead process writes the resumable state (all read it).
    """
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best = BestWeights(policy, config.patience)
    average = WeightAverage(policy, config.ema_decay) if config.ema_decay else None
    state_file = training_state_path(resume_dir) if resume_dir is not None else None
    saved = load_training_state(state_file, state_key) if state_file is not None else None
    first = 1 if saved is None else _resume_epochs(saved, policy, optimizer, generator, best, result, callback,
                                                    config.epochs, average)
    steps_per_epoch = math.ceil(n_windows / config.batch_size)
    for epoch in range(first, config.epochs + 1):
        start = time.perf_counter()
        policy.train()
        total, n_batches = 0.0, 0
        for idx in torch.randperm(n_windows, generator=generator).split(config.batch_size):
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(config, (epoch - 1) * steps_per_epoch + n_batches,
                                                    steps_per_epoch)
            loss = batch_loss(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update()
            total, n_batches = total + loss.item(), n_batches + 1
        train_seconds = time.perf_counter() - start
        if parallel is not None:  # each process summed its parts of the batch losses: one collective per epoch
            total = parallel.sum_over_processes(total) / parallel.world_size
        row = {"epoch": epoch, "train_loss": total / n_batches}
        evaluated = epoch % config.eval_every == 0 or epoch == config.epochs
        stopped = False
        if evaluated:  # the weight average, where there is one, is what is evaluated and kept as the best
            with average.applied() if average is not None else nullcontext():
                row.update(evaluate())
                if best.improved(row["valid_ndcg@10"], result.best_valid_ndcg10):
                    result.best_valid_ndcg10, result.best_epoch = row["valid_ndcg@10"], epoch
                else:
                    stopped = best.should_stop
        row["seconds"] = time.perf_counter() - start
        row["sequences_per_s"] = n_windows / max(train_seconds, 1e-9)
        result.history.append(row)
        if callback is not None:
            callback(dict(row))
        writes_state = state_file is not None and (parallel is None or parallel.lead)
        if writes_state and (epoch % config.checkpoint_every == 0 or epoch == config.epochs or stopped):
            progress = {"epoch": epoch, "stopped": stopped, "history": result.history, "best_epoch": result.best_epoch,
                        "best_valid_ndcg10": result.best_valid_ndcg10, "best": best.state_dict()}
            if average is not None:
                progress["weight_average"] = average.state_dict()
            save_training_state(state_file, policy, config, optimizer, {"shuffle": generator}, progress, state_key)
        if stopped:
            break
    best.restore()
    return result


def _resume_epochs(saved: dict, policy: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   generator: torch.Generator, best: BestWeights, result,
                   callback: Callable[[dict], None] | None, epochs: int,
                   average: WeightAverage | None = None) -> int:
    """Load a saved pretraining state into the loop's objects; return the first epoch still to run (past
    `epochs` when the saved run had stopped early)."""
    progress = saved["progress"]
    policy.load_state_dict(saved["state_dict"])
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"], {"shuffle": generator})
    best.load_state_dict(progress["best"])
    if average is not None:
        average.load_state_dict(progress["weight_average"])
    result.history[:] = progress["history"]
    result.best_epoch, result.best_valid_ndcg10 = progress["best_epoch"], progress["best_valid_ndcg10"]
    result.resumed_from_epoch = progress["epoch"]
    for row in result.history if callback is not None else ():
        callback(dict(row))
    return epochs + 1 if progress["stopped"] else progress["epoch"] + 1
