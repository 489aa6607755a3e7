"""Crash-safe training: a run killed with SIGKILL half way and resumed ends with the same weights as an
uninterrupted run with the same seed (pretraining, an NLL and two rollout post-training methods);
unreadable or foreign training states are never mixed in."""
from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from recmodels.data.sequences import build_user_sequences, training_windows
from recmodels.storage.checkpoints import CheckpointError, training_state_path
from tests import resume_worker
from tests.resume_worker import KILL_AT, train

REPO = Path(__file__).resolve().parents[1]
TIMINGS = {"seconds", "sequences_per_s"}


@pytest.fixture(autouse=True)
def one_thread():
    """The worker runs on one thread; so do the runs it is compared with (bit-identical CPU kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kill_half_way(kind: str, resume_dir: Path) -> list[str]:
    """Run the worker until it reports the row KILL_AT[kind], SIGKILL it; return the rows it printed."""
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen([sys.executable, "-m", "tests.resume_worker", kind, str(resume_dir),
                                  str(KILL_AT[kind])], cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        watchdog = threading.Timer(120, child.kill)  # a worker that hangs before its kill row fails the test
        watchdog.start()
        rows = []
        try:
            for line in child.stdout:
                rows.append(line.strip())
                if line.strip() == f"row {KILL_AT[kind]}":
                    os.kill(child.pid, signal.SIGKILL)
                    break
        finally:
            watchdog.cancel()
            if child.poll() is None and rows[-1:] != [f"row {KILL_AT[kind]}"]:
                child.kill()
            child.wait(timeout=30)
            child.stdout.close()
            stderr.seek(0)
            errors = stderr.read().decode()
    assert child.returncode == -signal.SIGKILL, f"the worker did not reach row {KILL_AT[kind]}:\n{errors}"
    return rows


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], dict):
            assert_same_tensors(a[name], b[name])
        elif isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name
        else:
            assert a[name] == b[name], name


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert_same_tensors(a.state_dict(), b.state_dict())


def assert_same_last_state(a: Path, b: Path) -> None:
    """The states saved after the last epoch / step: the last trained weights (not only the best ones kept)
    and the optimizer's moments are the same."""
    last_a, last_b = (torch.load(training_state_path(d), weights_only=True) for d in (a, b))
    assert_same_tensors(last_a["state_dict"], last_b["state_dict"])
    assert_same_tensors(last_a["optimizer"]["state"], last_b["optimizer"]["state"])


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in history]


def test_pretraining_killed_half_way_resumes_to_the_same_weights(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    rows = kill_half_way("pretrain", killed)
    assert rows == [f"row {epoch}" for epoch in range(1, KILL_AT["pretrain"] + 1)]
    saved = torch.load(training_state_path(killed), weights_only=True)
    assert saved["progress"]["epoch"] == KILL_AT["pretrain"] - 1  # epoch 5 died before its save

    replayed = []
    resumed = train("pretrain", killed, callback=replayed.append)
    uninterrupted = train("pretrain", whole)
    assert resumed.resumed_from_epoch == KILL_AT["pretrain"] - 1 and uninterrupted.resumed_from_epoch is None
    assert_same_weights(resumed.policy, uninterrupted.policy)
    assert_same_last_state(killed, whole)
    assert without_timings(resumed.history) == without_timings(uninterrupted.history)
    assert without_timings(replayed) == without_timings(resumed.history)  # restored rows replayed, then new ones
    assert (resumed.best_epoch, resumed.best_valid_ndcg10) == (uninterrupted.best_epoch,
                                                               uninterrupted.best_valid_ndcg10)
    plain = train("pretrain", None)  # without a resume_dir: the same numbers
    assert_same_weights(plain.policy, uninterrupted.policy)
    assert without_timings(plain.history) == without_timings(uninterrupted.history)


@pytest.mark.parametrize("method", ["exp_rw_sft", "grpo", "ppo"])
def test_post_training_killed_half_way_resumes_to_the_same_weights(tmp_path, method):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    kill_half_way(method, killed)
    progress = torch.load(training_state_path(killed), weights_only=True)["progress"]
    # saves every 3 steps; ppo's waits for its rollouts' last inner epoch (steps 4, 8, ...): 4 or 6, mid-epoch
    assert progress["step"] == (4 if method == "ppo" else 6)
    windows = training_windows(build_user_sequences(resume_worker.interactions()), resume_worker.MAX_LEN)
    assert 0 < progress["data"]["batch"] < math.ceil(len(windows) / resume_worker.POST_TRAIN.batch_size)

    resumed = train(method, killed)
    uninterrupted = train(method, whole)
    assert resumed.resumed_from_step == progress["step"] and uninterrupted.resumed_from_step is None
    assert_same_weights(resumed.policy, uninterrupted.policy)
    assert_same_last_state(killed, whole)
    assert resumed.history == uninterrupted.history  # telemetry, cache hit rates and valid metrics too
    assert (resumed.best_step, resumed.steps) == (uninterrupted.best_step, uninterrupted.steps)
    plain = train(method, None)  # without a resume_dir: the same numbers
    assert_same_weights(plain.policy, uninterrupted.policy)
    assert plain.history == uninterrupted.history


def test_a_finished_state_is_resumed_without_training(tmp_path):
    first = train("exp_rw_sft", tmp_path)
    again = train("exp_rw_sft", tmp_path)
    assert again.resumed_from_step == resume_worker.POST_TRAIN.steps
    assert_same_weights(first.policy, again.policy)
    assert again.history == first.history


def test_a_truncated_state_raises_naming_the_file(tmp_path):
    train("pretrain", tmp_path, epochs=1)
    path = training_state_path(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt or unreadable"):
        train("pretrain", tmp_path, epochs=2)


def test_a_state_from_another_config_is_ignored_with_a_warning(tmp_path, caplog):
    train("pretrain", tmp_path, epochs=2)  # leaves a state with lr=1e-2
    with caplog.at_level(logging.WARNING, logger="recmodels.storage.checkpoints"):
        other = train("pretrain", tmp_path, epochs=2, lr=3e-3)
    assert f"ignoring training state {training_state_path(tmp_path)}" in caplog.text
    fresh = train("pretrain", None, epochs=2, lr=3e-3)
    assert other.resumed_from_epoch is None
    assert_same_weights(other.policy, fresh.policy)
    # the new run's saves replaced the foreign state, and checkpoint_every is no part of the fingerprint
    assert train("pretrain", tmp_path, epochs=2, lr=3e-3, checkpoint_every=5).resumed_from_epoch == 2

    train("ppo", tmp_path)  # a post-training state is foreign to pretraining and the other way round
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="recmodels.storage.checkpoints"):
        assert train("grpo", tmp_path).resumed_from_step is None
    assert "ignoring training state" in caplog.text
