"""Data-parallel post-training for the NLL-type methods (sft, exp_rw_sft, ips) under `torchrun`, with
`torch.nn.parallel.DistributedDataParallel` (docs/distributed.md).

    torchrun --standalone --nproc_per_node 2 -m recmodels.post_training.distributed --spec job.json --out result.json

An NLL-type method's loss is a weighted NLL of the logged targets, sum_i w_i NLL_i / total, whose weights
depend on the batch's rewards (and propensities, users) but not on the policy: the method gives them
(`PostTrainingMethod.target_weights`). Every process runs the same `post_train` loop (loop.py) on the SAME
seeded stream of global batches of `batch_size` windows; at each step it computes the weights and the total
of the WHOLE batch (no model call: cheap), then the NLL of its share only (the batch's rows cut into
`world_size` contiguous parts), and scales its part of the sum by `world_size / total`. DDP averages the
gradients, so every process applies the one-process gradient of the global batch (up to float rounding:
the sums are taken in another order). The gradient clip acts on that averaged gradient, the optimizer is
the same AdamW everywhere, so the replicas stay equal.

One process (the lead) evaluates on valid and broadcasts each row, so every process keeps the same best
weights; the lead gets the callback, writes the resumable state and the final `{state_dict, config}`
checkpoint, loaded in one process by `recmodels.storage.model_io.load_policy`. A step's telemetry in
several processes is the loss and the mean NLL of the global batch (one all-reduce); the methods' own
telemetry (weights, effective sample size) is measured only in one process.

The ranker-driven methods (dpo, ppo, grpo, nll_grpo, adagrpo) do not run here: their loss depends on
rollouts sampled from the policy, whose sharing between processes this module does not define.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from recmodels.data.rewards import RewardSpec
from recmodels.data.sequences import TrainingWindows
from recmodels.data.tables import read_parquet
from recmodels.post_training.contexts import signal_seen
from recmodels.post_training.loop import (MethodContext, PostTrainConfig, PostTrainResult, StepFn, ValidSelection,
                                          finish_run, map_windows, prepare_run, train_steps)
from recmodels.post_training.registry import MethodNotApplicable, PostTrainingMethod, data_parallel_methods, get_method
from recmodels.runtime import mixed_precision
from recmodels.storage.checkpoints import save_checkpoint
from recmodels.storage.model_io import load_policy
from recmodels.tokenization.items import load_item_codes
from recmodels.training.distributed import (DROPOUT_SEED_STRIDE, ProcessGroup, broadcast_object, check_spec,
                                            init_from_env, run_from_command_line, wrap_data_parallel)


class WindowNll(nn.Module):
    """The per-position NLL [B, T] of a batch of windows (0 at padding). DistributedDataParallel wraps this
    module: its forward must run through DDP, which prepares the gradient all-reduce."""

    def __init__(self, policy: nn.Module, tokenization):
        super().__init__()
        self.policy = policy
        self.tokenization = tokenization  # how items become tokens (not a module)

    def forward(self, batch: TrainingWindows) -> torch.Tensor:
        return self.tokenization.window_nll(self.policy, batch)[0]


class LeadValidSelection(ValidSelection):
    """The valid selection of one process: the lead measures each row, every process gets it."""

    def __init__(self, *args, group: ProcessGroup, lead: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.group, self.lead = group, lead

    def measure(self, step: int, epoch: float, telemetry: dict[str, float]) -> dict:
        row = super().measure(step, epoch, telemetry) if self.group.rank == self.lead else None
        return broadcast_object(row, src=self.lead)


def data_parallel_step(spec: PostTrainingMethod, model: DistributedDataParallel, policy: nn.Module,
                       ctx: MethodContext, config: PostTrainConfig, group: ProcessGroup) -> StepFn:
    """The loop's step for this process: its share of the global batch's weighted NLL (module docstring)."""

    def step(batch: TrainingWindows, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        mask = batch.targets != 0  # [B, T] real targets of the global batch
        w, total = spec.target_weights(batch, ctx)  # [M], scalar: over the whole batch
        weights = torch.zeros(mask.shape, dtype=w.dtype, device=w.device).masked_scatter(mask, w)  # [B, T]
        rows = torch.arange(len(batch), device=mask.device).tensor_split(group.world_size)[group.rank]
        scale = group.world_size / float(total) if total > 0 else 0.0
        if len(rows) == 0:  # a batch smaller than the world: join the all-reduce with zero gradients
            rows, scale = rows.new_zeros(1), 0.0
        with mixed_precision(group.device, config.cpu_bf16):  # as one process trains: bf16 on CUDA, on the CPU if asked
            nll = model(map_windows(batch, lambda t: t[rows])).float()  # [b, T], 0 at padding
        loss = (weights[rows] * nll).sum() * scale
        # the global batch's loss and NLL sum, in every process (so that all stop together on a bad loss)
        sums = torch.stack([loss.detach() / group.world_size, nll.detach().sum() if scale else nll.new_zeros(())])
        dist.all_reduce(sums)
        if not torch.isfinite(sums).all():
            raise FloatingPointError(f"post-training method {spec.name!r}: loss is {sums[0].item()} at step {ctx.step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        optimizer.step()
        return {"loss": sums[0].item(), "nll": sums[1].item() / max(int(mask.sum()), 1),
                **signal_seen(targets=int(mask.sum()))}

    return step


def post_train_distributed(method: str, pretrained: nn.Module, interactions: pd.DataFrame, config: PostTrainConfig,
                           callback: Callable[[dict], None] | None = None, semantic_ids=None,
                           reward_spec: RewardSpec | None = None, resume_dir: str | Path | None = None,
                           group: ProcessGroup | None = None, lead: int = 0) -> PostTrainResult:
    """`post_train` as one process of a torchrun job: call it in every process with the same arguments. The
    global batch is `config.batch_size`. Process `lead` evaluates, calls `callback` and writes the resumable
    state; every process returns the result with the best weights. Dropout: as in data-parallel pretraining,
    process 0 draws the one-process masks and the others their own."""
    spec = get_method(method)
    if spec.target_weights is None:
        raise ValueError(f"post-training method {method!r} does not train data-parallel: only the NLL-type methods "
                         f"{list(data_parallel_methods())} do; train it in one process (nproc_per_node 1)")
    group = group or init_from_env()
    if config.batch_size < group.world_size:
        raise ValueError(f"PostTrainConfig.batch_size={config.batch_size} is the global batch: it must be at least "
                         f"the number of processes ({group.world_size})")
    run = prepare_run(method, pretrained, interactions, config, device=group.device, semantic_ids=semantic_ids,
                      reward_spec=reward_spec, resume_dir=resume_dir)
    if group.rank != 0:
        torch.manual_seed(config.seed * DROPOUT_SEED_STRIDE + group.rank)
    is_lead = group.rank == lead
    model = wrap_data_parallel(WindowNll(run.policy, run.tokenization), group)
    selection = LeadValidSelection(run.policy, run.ctx.reference, run.valid, run.tokenization, run.ctx.device,
                                   callback if is_lead else None, config.patience, config.collapse_ratio, group=group,
                                   lead=lead)
    loop = train_steps(run.spec, run.policy, run.windows, run.ctx, config, run.generator, selection, run.state_file,
                  run.state_key, step=data_parallel_step(spec, model, run.policy, run.ctx, config, group),
                  writes_state=is_lead)
    return finish_run(run, selection, loop)


# --- a post-training job described by a JSON-able spec (the Pipes worker's extras, the command line's file) -----

SPEC_KEYS = {"method", "interactions", "pretrained", "item_codes", "train_config", "reward_spec", "checkpoint",
             "resume_dir"}


def job_spec(method: str, interactions: str | Path, pretrained: str | Path, train_config: PostTrainConfig,
             checkpoint: str | Path, item_codes: Mapping[str, Any] | None = None,
             reward_spec: RewardSpec | None = None,
             resume_dir: str | Path | None = None) -> dict[str, Any]:
    """A data-parallel post-training job as JSON-able values: the method, the interactions parquet, the
    pretrained checkpoint, where its item codes are (a record's `item_codes_source()`: semantic IDs), the
    config, the reward spec, where the lead writes the checkpoint and the resumable state. Every path must be
    readable (written, for the lead's) from every node."""
    return {"method": method, "interactions": str(interactions), "pretrained": str(pretrained),
            "item_codes": dict(item_codes or {}), "train_config": asdict(train_config),
            "reward_spec": asdict(reward_spec or RewardSpec()), "checkpoint": str(checkpoint),
            "resume_dir": str(resume_dir) if resume_dir else None}


def run_job(spec: Mapping[str, Any], callback: Callable[[dict], None] | None = None,
            group: ProcessGroup | None = None, lead: int = 0) -> PostTrainResult:
    """Run the job of `spec` (see `job_spec`) as one process of the group; the lead writes the checkpoint."""
    check_spec(spec, SPEC_KEYS)
    group = group or init_from_env()
    pretrained = load_policy(spec["pretrained"])
    result = post_train_distributed(spec["method"], pretrained, read_parquet(spec["interactions"]),
                                    PostTrainConfig(**spec["train_config"]), callback=callback,
                                    semantic_ids=load_item_codes(spec["item_codes"], of=pretrained),
                                    reward_spec=RewardSpec(**spec["reward_spec"]), resume_dir=spec["resume_dir"],
                                    group=group, lead=lead)
    if group.rank == lead:
        save_checkpoint(spec["checkpoint"], result.policy, pretrained.cfg)
    return result


def result_summary(result: PostTrainResult) -> dict[str, Any]:
    """The JSON-able part of a result (all but the policy)."""
    return {f.name: getattr(result, f.name) for f in fields(result) if f.name != "policy"}


def main(argv: list[str] | None = None) -> None:
    run_from_command_line("post-training", run_job, result_summary, argv, skips=(MethodNotApplicable,))


if __name__ == "__main__":
    main()
