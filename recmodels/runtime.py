"""Device choice, seeding, eval mode, the intra-op thread count and the C allocator's reuse of freed memory, shared
by every training and scoring loop and the processes that run them."""
from __future__ import annotations

import ctypes
import os
import random
import warnings
from contextlib import contextmanager, nullcontext
from functools import cache
from typing import Iterator

import numpy as np
import torch


DEVICE_VARIABLE = "RECALIGN_DEVICE"  # "cpu" or "cuda": the device every training and scoring loop uses


def default_device() -> torch.device:
    """The device named by the RECALIGN_DEVICE variable when set ("cpu" or "cuda"), else CUDA when present, else
    the CPU. Naming "cuda" where there is none raises RuntimeError rather than silently training on the CPU."""
    named = os.environ.get(DEVICE_VARIABLE, "").strip().lower()
    if named not in ("", "cpu", "cuda"):
        raise RuntimeError(f"{DEVICE_VARIABLE}={named!r} is no device: use cpu or cuda")
    if named == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_VARIABLE}=cuda but torch sees no CUDA device (torch {torch.__version__})")
    return torch.device(named or ("cuda" if torch.cuda.is_available() else "cpu"))


def mixed_precision(device: torch.device, cpu_bf16: bool = False):
    """bf16 autocast on a CUDA device that supports it (matmuls and attention in bf16, softmax, losses and
    reductions in fp32 by autocast's own rules); on the CPU only when `cpu_bf16` (worth it where the CPU has
    bf16 dot products, AVX512-BF16 or AMX; elsewhere it warns, since bf16 matmuls are then far slower than fp32),
    otherwise CPU numbers stay bit-for-bit fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16:
        if not cpu_has_bf16_dot_products():
            warnings.warn("cpu_bf16=True on a CPU without bf16 dot products (AVX512-BF16 or AMX): its bf16 matmuls "
                          "run far slower than fp32 (0.6 against 41 GFLOP/s for a 1024 x 1024 matmul on one AVX2 "
                          "core); leave cpu_bf16 empty or False here", RuntimeWarning, stacklevel=2)
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return nullcontext()


@cache
def cpu_has_bf16_dot_products() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles), where bf16 autocast pays (1.7-1.9x
    faster MovieLens-100k post-training steps on such a 2-core machine, docs/results-movielens-100k.md).
    Elsewhere autocast would convert to fp32 and gain nothing."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU-feature checks
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one (a container or
    `taskset` limit), else `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def threads_per_process(processes: int, cores: int | None = None) -> int:
    """Intra-op threads for each of `processes` processes that share `cores` (default: `available_cores()`)
    without oversubscribing them: `max(1, cores // processes)`."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, processes))


def set_threads(n: int) -> int:
    """Use `n` (>= 1) intra-op threads for torch's CPU kernels in this process; return the previous count.

    For a given `n` a seeded training gives the same weights in any process (tests/test_parallel_steps.py);
    another `n` splits torch's parallel reductions differently, which changes the low-order bits of the
    weights (about 1e-7 on the small chain), as running on a machine with another core count does."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    return previous


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_ABOVE_BYTES = 2**31 - 1  # give memory back to the OS only when more than this lies free at the heap's top


def on_glibc() -> bool:
    """Whether this process's C library is glibc (Linux distributions but Alpine's musl)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name on this OS
        return False


RETAIN_VARIABLE = "RECALIGN_RETAIN_FREED_MEMORY"  # "0" / "false" / "no" / "off": glibc's own allocator settings


def retain_freed_memory_wanted() -> bool:
    """Whether the RECALIGN_RETAIN_FREED_MEMORY variable leaves `retain_freed_memory` on (unset or empty: on);
    a value that is no yes or no raises RuntimeError naming the variable, rather than being read as either."""
    named = os.environ.get(RETAIN_VARIABLE, "")
    value = named.strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{RETAIN_VARIABLE}={named!r} is neither on nor off: use 1 or 0 (true/false, yes/no, on/off)")


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep the memory this process frees for its next allocations instead of giving it back to
    the OS; return whether it took (False off glibc: macOS, musl, Windows, and where RECALIGN_RETAIN_FREED_MEMORY=0
    asks for glibc's own settings, for a machine whose memory is tighter than its time).

    By default glibc serves each block above its mmap threshold (at most 32 MiB; a MovieLens-100k pretraining
    batch's logits alone are 43 MB) with a new mapping and unmaps it when freed, so every training step faults
    its largest tensors in again, page by page, zero-filled by the kernel: about a fifth of a CPU training step's
    time went to the kernel (`docs/results-movielens-100k.md`, "Freed memory kept for reuse"). With no mmap and the heap
    trimmed only above 2 GiB free, a step reuses the blocks of the step before. Only where memory comes from
    changes, not what is computed: the numbers stay the same to the bit; peak memory grows (8% for the
    MovieLens-100k chain's processes, 22-27% for MovieLens-1M pretraining steps). It applies to the whole process
    and to the processes it forks afterwards; call it where a process starts its work."""
    if not retain_freed_memory_wanted() or not on_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE_BYTES))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def eval_mode(*modules: torch.nn.Module, no_grad: bool = True) -> Iterator[None]:
    """Put `modules` in eval mode (no dropout), under `torch.no_grad()` unless `no_grad=False`, and
    give each back the mode it had, also when the block raises. Objects that are no `nn.Module` are
    left alone, so scoring code can take any policy-like object."""
    torch_modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    was_training = [m.training for m in torch_modules]
    for module in torch_modules:
        module.eval()
    try:
        with torch.no_grad() if no_grad else nullcontext():
            yield
    finally:
        for module, mode in zip(torch_modules, was_training):
            module.train(mode)
