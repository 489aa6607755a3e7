"""Test-wide settings: no telemetry, nothing written outside the test's temp dirs."""
import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RECALIGN_HOME", tempfile.mkdtemp(prefix="recalign-test-home-"))
os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="recalign-test-dagster-"))

import torch  # noqa: E402

# The models under test are tiny: one intra-op thread is faster than two that contend for 2 cores.
torch.set_num_threads(1)
