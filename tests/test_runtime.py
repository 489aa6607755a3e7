"""The device every loop uses: RECALIGN_DEVICE names it, a missing GPU is an error, CPU math stays fp32."""
import pytest
import torch

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
