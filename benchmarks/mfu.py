"""Model FLOP utilization of a training step: its achieved FLOP/s over the matmul peak measured in this process.

`training_step_mfu(policy, tokens, targets, device)` counts the FLOPs of one forward + backward of the
pretraining loss on the batch with torch's `FlopCounterMode`, times that step (mean of `repeats` after a
warm-up) and divides by the peak of a large fp32 matmul (bf16 on CUDA, the precision training runs in)
timed on the same device with the same threads.
"""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n by n x n matmul (2 n^3 FLOPs), the best of `repeats` after one warm-up."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def training_step_mfu(policy: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor, device: torch.device,
                      repeats: int = 5) -> dict:
    """FLOPs, seconds and MFU of one training step (loss forward + backward, no optimizer update) on the batch."""
    from recmodels.runtime import mixed_precision
    from recmodels.training.pretraining import window_nll

    policy.train()
    tokens, targets = tokens.to(device), targets.to(device)

    def step() -> None:
        with mixed_precision(device):
            loss = window_nll(policy, tokens, targets)
        loss.backward()
        policy.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = matmul_peak_flops(device)
    return {"step_flops": flops, "step_s": round(seconds, 4), "achieved_gflops": round(flops / seconds / 1e9, 2),
            "matmul_peak_gflops": round(peak / 1e9, 2), "mfu": round(flops / seconds / peak, 4),
            "batch_windows": int(tokens.shape[0]), "window_len": int(tokens.shape[1]),
            "threads": torch.get_num_threads(), "device": str(device)}
