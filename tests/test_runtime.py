"""The device every loop uses: RECALIGN_DEVICE names it, a missing GPU is an error, CPU math stays fp32."""
import warnings

import pytest
import torch

from recmodels import runtime
from recmodels.runtime import DEVICE_VARIABLE, default_device, mixed_precision


def test_the_device_variable_picks_the_device(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_VARIABLE, "tpu")
    with pytest.raises(RuntimeError, match="RECALIGN_DEVICE='tpu' is no device: use cpu or cuda"):
        default_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_naming_cuda_without_a_gpu_fails_instead_of_training_on_the_cpu(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, "cuda")
    with pytest.raises(RuntimeError, match="RECALIGN_DEVICE=cuda but torch sees no CUDA device"):
        default_device()


def test_mixed_precision_leaves_cpu_math_in_fp32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with mixed_precision(torch.device("cpu")):
        product = a @ b
    assert product.dtype == torch.float32 and not torch.is_autocast_enabled()


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_warns_where_the_cpu_has_no_bf16_dot_products(monkeypatch, native):
    """Forced bf16 on an AVX2-only CPU made a MovieLens-1M epoch 20x slower, silently: now it says so."""
    monkeypatch.setattr(runtime, "cpu_has_bf16_dot_products", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mixed_precision(torch.device("cpu"), cpu_bf16=True):
            pass
        with mixed_precision(torch.device("cpu")):  # fp32 asks for nothing
            pass
    slow = [w for w in caught if "without bf16 dot products" in str(w.message)]
    assert len(slow) == (0 if native else 1)


def test_cpu_bf16_autocasts_matmuls_and_a_seen_bias_policy_still_trains_under_it():
    """Under bf16 autocast (CUDA always, the CPU when asked) the item logits stay fp32, so the seen bias adds in
    fp32 and the loss and its gradient exist; without the cast scatter_add_ refused the bf16 logits."""
    from recmodels.models.policy import GenerativePolicy, PolicyConfig
    from recmodels.training.pretraining import window_nll

    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with mixed_precision(torch.device("cpu"), cpu_bf16=True):
        assert (a @ b).dtype == torch.bfloat16
    torch.manual_seed(0)
    policy = GenerativePolicy(PolicyConfig(vocab_size=21, max_len=6, d_model=16, n_heads=2, n_layers=1,
                                           seen_bias=True))
    items = torch.tensor([[0, 3, 5, 3, 7, 9]])
    with mixed_precision(torch.device("cpu"), cpu_bf16=True):
        logits, _ = policy(items)
        loss = window_nll(policy, items, torch.tensor([[0, 5, 3, 7, 9, 2]]))
    assert logits.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert policy.seen_logit.grad is not None and policy.seen_logit.grad != 0


def test_the_chain_leaves_cpu_bf16_to_the_machine_unless_its_config_names_it(monkeypatch):
    """An empty `cpu_bf16` in a training asset's config means: bf16 where the CPU multiplies it natively."""
    from assets import model_runs

    for native in (True, False):
        monkeypatch.setattr(model_runs, "cpu_has_bf16_dot_products", lambda: native)
        assert model_runs.with_cpu_bf16({"cpu_bf16": None, "lr": 1e-3}) == {"cpu_bf16": native, "lr": 1e-3}
        assert model_runs.with_cpu_bf16({"cpu_bf16": False})["cpu_bf16"] is False
        assert model_runs.with_cpu_bf16({"cpu_bf16": True})["cpu_bf16"] is True


# Allocates and frees a 64 MiB tensor, every page written, 30 times in a fresh process; prints the page faults of
# the last 10 rounds. With glibc's defaults each round maps new pages (16,384 faults); kept memory is reused.
ALLOCATION_ROUNDS = """
import resource, sys, torch
from recmodels.runtime import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
elif sys.argv[1] == "retain, switched off":  # RECALIGN_RETAIN_FREED_MEMORY=0 in the environment
    assert not retain_freed_memory()
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


@pytest.mark.skipif(not runtime.on_glibc(), reason="the allocator setting is glibc's")
def test_a_process_that_retains_freed_memory_stops_faulting_its_large_tensors_in_again():
    import os
    import subprocess
    import sys
    from pathlib import Path

    def last_rounds_faults(mode: str, retain_variable: str = "") -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1", runtime.RETAIN_VARIABLE: retain_variable}
        out = subprocess.run([sys.executable, "-c", ALLOCATION_ROUNDS, mode], cwd=Path(__file__).resolve().parents[1],
                             capture_output=True, text=True, check=True, env=env)
        return int(out.stdout)

    assert last_rounds_faults("default") >= 10 * 16_000  # every round maps its 64 MiB anew
    assert last_rounds_faults("retain") < 16_000  # the freed block is reused: not one round's worth of faults
    assert last_rounds_faults("retain, switched off", retain_variable="0") >= 10 * 16_000  # glibc's own settings


@pytest.mark.parametrize("value, wanted", [("", True), ("1", True), (" On ", True), ("0", False), ("off", False),
                                           ("false", False)])
def test_the_retain_variable_switches_the_allocator_setting(monkeypatch, value, wanted):
    monkeypatch.setenv(runtime.RETAIN_VARIABLE, value)
    assert runtime.retain_freed_memory_wanted() is wanted


def test_a_retain_variable_that_is_neither_on_nor_off_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv(runtime.RETAIN_VARIABLE, "Sometimes")
    with pytest.raises(RuntimeError, match="RECALIGN_RETAIN_FREED_MEMORY='Sometimes'"):
        runtime.retain_freed_memory()
