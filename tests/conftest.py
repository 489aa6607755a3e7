"""Test-wide settings: no telemetry, nothing written outside the test's temp dirs."""
import os
import tempfile

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RECALIGN_HOME", tempfile.mkdtemp(prefix="recalign-test-home-"))
os.environ.setdefault("DAGSTER_HOME", tempfile.mkdtemp(prefix="recalign-test-dagster-"))
