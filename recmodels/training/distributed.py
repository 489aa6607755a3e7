"""Data-parallel pretraining: the pretraining loop of `recmodels.training.pretraining` in several processes
under `torchrun`, with `torch.nn.parallel.DistributedDataParallel` (docs/distributed.md).

    torchrun --standalone --nproc_per_node 2 -m recmodels.training.distributed --spec job.json --out result.json

Every process joins the process group torchrun set up (`init_from_env`: gloo on CPU, nccl on CUDA with
the device of its LOCAL_RANK), holds all the windows and the same seeded policy, and walks the SAME
seeded permutation of the windows each epoch. Each global batch of `batch_size` windows is cut into
`world_size` contiguous shares (`batch_size // world_size` windows each, the last batch's shares may be
smaller or empty); a process computes the SUMMED next-token NLL of its share and scales it by
`world_size / n_targets(global batch)`. DDP averages the gradients over the processes, so the gradient each
process applies is sum(NLL of the whole batch) / n_targets(whole batch): the one-process gradient of the
same global batch (up to float rounding: the sums are taken in another order). The optimizer is the same
AdamW in every process, so the replicas stay equal.

One process (the lead: rank 0 unless the caller names another) ranks the valid items after each evaluated
epoch and broadcasts the metrics; every process then takes the same early-stopping decision. The lead gets
the callback, writes the resumable state (`resume_dir`, read by every process on a resume: shared storage
on several nodes) and the final checkpoint in the usual `{state_dict, config}` form of the unwrapped
policy, so `recmodels.storage.model_io.load_policy` loads it in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from recmodels.data.tables import read_parquet
from recmodels.runtime import default_device, mixed_precision, seed_everything
from recmodels.storage.checkpoints import save_checkpoint
from recmodels.tokenization.items import ItemTokenization, tokenization_class
from recmodels.training.pretraining import (DataParallel, PretrainConfig, PretrainResult, evaluate_valid,
                                            prepare_pretraining, pretrain_fingerprint, run_epochs)

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DROPOUT_SEED_STRIDE = 1_000_003  # process r > 0 draws its dropout masks from seed * stride + r


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the torchrun job."""

    rank: int  # global rank, 0..world_size-1
    world_size: int  # processes over all nodes
    local_rank: int  # rank on this node (its CUDA device)
    backend: str  # "gloo" or "nccl"
    device: torch.device  # where this process trains


def init_from_env(device: torch.device | str | None = None) -> ProcessGroup:
    """Join the process group of the torchrun job this process belongs to (the env:// rendezvous: RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). nccl on `cuda:<LOCAL_RANK>` when CUDA is present (or
    `device` is a CUDA device), gloo on CPU. Joining twice returns the group already joined."""
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(f"data-parallel training runs under torchrun: {missing} missing from the environment "
                           "(torchrun --nproc_per_node N -m <module> ...)")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return ProcessGroup(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                        backend=dist.get_backend(), device=device)


def close() -> None:
    """Leave the process group (at the end of a process's work)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int) -> Any:
    """`obj` of process `src` in every process (picklable objects: a job spec, a metrics dict)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def first_rank_where(flag: bool) -> int | None:
    """The lowest rank whose process passed True, in every process; None when none did."""
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return next((rank for rank, f in enumerate(flags) if f), None)


def sum_over_processes(value: float, group: ProcessGroup) -> float:
    """The sum of `value` over the processes (float64 all-reduce), in every process."""
    total = torch.tensor([value], dtype=torch.float64, device=group.device)
    dist.all_reduce(total)
    return float(total.item())


class SummedWindowNll(torch.nn.Module):
    """The summed next-token NLL of a batch of windows. DistributedDataParallel wraps this module, not the
    policy: its forward must run through DDP (which prepares the gradient all-reduce), and the training loss
    calls the policy's `target_logits`, not its forward."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.policy.target_logits(tokens, targets), targets[targets != 0], reduction="sum")


def wrap_data_parallel(module: torch.nn.Module, group: ProcessGroup) -> DistributedDataParallel:
    """The DDP module around `module` (a loss module such as `SummedWindowNll(policy)`). DDP broadcasts rank 0's
    weights and buffers at construction, not the buffers at each forward: the policies' buffers are constants
    of their config."""
    return DistributedDataParallel(module, device_ids=[group.device.index] if group.device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def data_parallel_batch_loss(model: DistributedDataParallel, tokens: torch.Tensor, targets: torch.Tensor,
                             group: ProcessGroup, cpu_bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """`batch_loss(idx)` for `run_epochs` with `DataParallel`: this process's share of the GLOBAL batch `idx`
    (its contiguous `tensor_split` part), summed NLL x world_size / target tokens of the whole batch.
    Averaged over the processes (DDP's gradient average, `DataParallel`'s loss average) it is the mean NLL of
    the whole batch. A process whose share is empty (a last batch smaller than the world) still runs one
    window with weight 0: it joins the gradient all-reduce with zero gradients."""
    n_targets = (targets != 0).sum(dim=1)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        share = idx.tensor_split(group.world_size)[group.rank]
        weight = group.world_size / max(int(n_targets[idx].sum()), 1)
        if len(share) == 0:
            share, weight = idx[:1], 0.0
        with mixed_precision(group.device, cpu_bf16):  # bf16 on CUDA (and on the CPU when asked), as one process trains
            return model(tokens[share].to(group.device), targets[share].to(group.device)) * weight

    return batch_loss


def pretrain_distributed(interactions: pd.DataFrame, n_items: int, policy_config: Any = None,
                         config: PretrainConfig | None = None, callback: Callable[[dict], None] | None = None,
                         tokenization: ItemTokenization | None = None, resume_dir: str | Path | None = None,
                         group: ProcessGroup | None = None, lead: int = 0) -> PretrainResult:
    """`pretrain_policy` as one process of a torchrun job: call it in every process with the same arguments.
    The global batch is `config.batch_size` (each process takes its share, see the module docstring), so the
    run follows the one-process run of the same config up to float rounding. Process `lead` evaluates,
    calls `callback` and writes the resumable state. Every process returns the result with the best weights.

    Dropout: process 0 draws from the one-process stream, every other process from its own seed, so the
    processes do not apply the same masks. A resumed run restores the lead's RNG state in every process:
    with dropout > 0 it goes on with other masks than an uninterrupted run would have (without dropout it
    follows it up to float rounding)."""
    group = group or init_from_env()
    data = prepare_pretraining(interactions, n_items, policy_config, config, tokenization)
    config, policy_config, tokenization = data.config, data.policy_config, data.tokenization
    if config.distill_weight:
        raise ValueError("PretrainConfig.distill_weight > 0: distillation runs in one process "
                         "(recmodels.training.pretraining.pretrain_policy with a teacher)")
    if config.label_smoothing:
        raise ValueError("PretrainConfig.label_smoothing > 0: label-smoothed pretraining runs in one process "
                         "(recmodels.training.pretraining.pretrain_policy)")
    if config.batch_size < group.world_size:
        raise ValueError(f"PretrainConfig.batch_size={config.batch_size} is the global batch: it must be at least "
                         f"the number of processes ({group.world_size})")

    gen = seed_everything(config.seed)  # the same shuffle (and initial weights) in every process
    policy = tokenization.build_policy(policy_config).to(group.device)
    model = wrap_data_parallel(SummedWindowNll(policy), group)
    if group.rank != 0:
        torch.manual_seed(config.seed * DROPOUT_SEED_STRIDE + group.rank)
    result = PretrainResult(policy=policy, policy_config=policy_config)
    is_lead = group.rank == lead

    def evaluate() -> dict[str, float]:
        metrics = evaluate_valid(policy, data.valid, group.device, tokenization) if is_lead else None
        return broadcast_object(metrics, src=lead)

    state_key = ""
    if resume_dir is not None:
        state_key = pretrain_fingerprint(interactions, n_items, policy_config, config, tokenization, data.tokens,
                                         data.targets, group.device)
    parallel = DataParallel(world_size=group.world_size, lead=is_lead,
                            sum_over_processes=lambda value: sum_over_processes(value, group))
    return run_epochs(policy, data.n_windows, data_parallel_batch_loss(model, data.tokens, data.targets, group,
                                                                      config.cpu_bf16),
                      evaluate, config, gen, result, callback if is_lead else None, resume_dir=resume_dir,
                      state_key=state_key, parallel=parallel)


# --- a training job described by a JSON-able spec (the Pipes worker's extras, the command line's file) ----------

SPEC_KEYS = {"interactions", "n_items", "tokenization", "item_codes", "train_config", "policy_config",
             "checkpoint", "resume_dir"}


def job_spec(interactions: str | Path, n_items: int, tokenization: str, train_config: PretrainConfig,
             policy_config: Any, checkpoint: str | Path, item_codes: str | Path | None = None,
             resume_dir: str | Path | None = None) -> dict[str, Any]:
    """A data-parallel pretraining job as JSON-able values: the interactions parquet, the tokenization's name
    and its item-codes file (semantic IDs), both configs, where the lead writes the checkpoint and the
    resumable state. Every path must be readable (written, for the lead's) from every node."""
    return {"interactions": str(interactions), "n_items": int(n_items), "tokenization": tokenization,
            "item_codes": str(item_codes) if item_codes else None, "train_config": asdict(train_config),
            "policy_config": asdict(policy_config), "checkpoint": str(checkpoint),
            "resume_dir": str(resume_dir) if resume_dir else None}


def check_spec(spec: Mapping[str, Any], keys: set[str]) -> None:
    """A job spec holds exactly `keys`; ValueError naming the unknown and the missing ones otherwise."""
    unknown, missing = set(spec) - keys, keys - set(spec)
    if unknown or missing:
        raise ValueError(f"job spec: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")


def run_job(spec: Mapping[str, Any], callback: Callable[[dict], None] | None = None,
            group: ProcessGroup | None = None, lead: int = 0) -> PretrainResult:
    """Run the job of `spec` (see `job_spec`) as one process of the group; the lead writes the checkpoint."""
    check_spec(spec, SPEC_KEYS)
    group = group or init_from_env()
    kind = tokenization_class(spec["tokenization"])
    tokenization = kind.with_codes(kind.load_codes(spec["item_codes"]))
    result = pretrain_distributed(read_parquet(spec["interactions"]), spec["n_items"],
                                  kind.config_class(**spec["policy_config"]), PretrainConfig(**spec["train_config"]),
                                  callback=callback, tokenization=tokenization, resume_dir=spec["resume_dir"],
                                  group=group, lead=lead)
    if group.rank == lead:
        save_checkpoint(spec["checkpoint"], result.policy, result.policy_config)
    return result


def result_summary(result: PretrainResult) -> dict[str, Any]:
    """The JSON-able part of a result: history, best epoch and valid NDCG@10, the epoch resumed from."""
    return {"history": result.history, "best_epoch": result.best_epoch,
            "best_valid_ndcg10": result.best_valid_ndcg10, "resumed_from_epoch": result.resumed_from_epoch}


def run_from_command_line(job: str, run: Callable[..., Any], summarize: Callable[[Any], dict],
                          argv: list[str] | None = None, skips: tuple[type[Exception], ...] = ()) -> None:
    """The command line of a data-parallel job module, run under torchrun: `--spec job.json` (its `job_spec`),
    `--out result.json` (rank 0 writes `summarize(result)` with the world size, backend and wall time). Each
    evaluation row is printed as a JSON line by rank 0. An exception of `skips` (raised in every process
    before any collective call) becomes the summary `{"skipped": why}`."""
    parser = argparse.ArgumentParser(description=f"Data-parallel {job} of one job spec, run under torchrun.")
    parser.add_argument("--spec", required=True, help=f"JSON file of the job (the {job} module's job_spec)")
    parser.add_argument("--out", help="JSON file where rank 0 writes the result's summary")
    args = parser.parse_args(argv)
    group = init_from_env()
    try:
        spec = json.loads(Path(args.spec).read_text())
        started = time.perf_counter()
        try:
            summary = summarize(run(spec, callback=lambda row: print(json.dumps(row), flush=True), group=group))
        except skips as skip:
            summary = {"skipped": str(skip)}
        if group.rank == 0 and args.out:
            summary |= {"world_size": group.world_size, "backend": group.backend,
                        "wall_seconds": time.perf_counter() - started}
            Path(args.out).write_text(json.dumps(summary, indent=1))
    finally:
        close()


def main(argv: list[str] | None = None) -> None:
    run_from_command_line("pretraining", run_job, result_summary, argv)


if __name__ == "__main__":
    main()
