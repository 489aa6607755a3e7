"""Test-wide settings: no telemetry, nothing written outside the test's temp dirs."""
import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RECALIGN_HOME", tempfile.mkdtemp(prefix="recalign-test-home-"))
os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="recalign-test-dagster-"))

import torch  # noqa: E402

# The models under test are tiny: one intra-op thread is faster than two that contend for 2 cores.
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The files with an `integration` test first, each file's tests in their order: with `make test`'s
    workers (pytest-xdist, whole files each, `--no-loadscope-reorder`) the files that start real Dagster
    runs (up to two minutes each) are handed out first and the many short files fill in after them,
    instead of the long ones queueing on one worker at the end."""
    integration_files = {item.path for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.path not in integration_files)
