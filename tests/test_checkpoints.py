"""Checkpoints: `{state_dict, config}` round trip, atomic writes, clear errors on bad files; resumable
training states (RNG states, optimizer, fingerprint)."""
from __future__ import annotations

import logging
import random

import numpy as np
import pandas as pd
import pytest
import torch

from recmodels.storage.checkpoints import (CheckpointError, clear_training_state, fingerprint, load_checkpoint,
                                           load_training_state, rng_state, save_checkpoint, save_training_state,
                                           set_rng_state, training_state_path)
from recmodels.storage.model_io import load_policy, load_ranker
from recmodels.models.policy import GenerativePolicy, PolicyConfig


def tiny_policy(seed: int = 0) -> GenerativePolicy:
    torch.manual_seed(seed)
    return GenerativePolicy(PolicyConfig(vocab_size=11, max_len=6, d_model=8, n_heads=1, n_layers=1)).eval()


def test_policy_round_trip_gives_the_same_logits(tmp_path):
    policy = tiny_policy()
    path = save_checkpoint(tmp_path / "p.pt", policy, policy.cfg)
    loaded = load_policy(path)
    history = torch.tensor([[0, 0, 3, 4, 5, 6]])
    torch.testing.assert_close(loaded.next_item_logits(history), policy.next_item_logits(history))
    assert set(load_checkpoint(path)) >= {"state_dict", "config"}


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "p.pt", tiny_policy(0), tiny_policy(0).cfg)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny_policy(1), tiny_policy(1).cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_rejected_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "p.pt", tiny_policy(), tiny_policy().cfg)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"p\.pt is corrupt or unreadable"):
        load_policy(path)


def test_missing_checkpoint_and_wrong_model_are_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nope.pt")
    path = save_checkpoint(tmp_path / "p.pt", tiny_policy(), tiny_policy().cfg)
    with pytest.raises(CheckpointError, match="does not fit RewardRanker"):
        load_ranker(path)


def test_a_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pt"
    torch.save({"state_dict": {}, "config": {}, "module": tiny_policy()}, path)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(path)


def draws(generator: torch.Generator) -> tuple:
    return (torch.rand(3), np.random.rand(3).tolist(), random.random(), random.gauss(0, 1),
            torch.rand(3, generator=generator))


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    random.gauss(0, 1)  # python keeps a spare gaussian: part of the state
    state = rng_state({"g": gen})
    expected = draws(gen)
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), {"g": gen})
    again = draws(gen)
    assert torch.equal(again[0], expected[0]) and torch.equal(again[4], expected[4])
    assert again[1:4] == expected[1:4]


def test_training_state_round_trip_and_foreign_state(tmp_path, caplog):
    policy = tiny_policy()
    optimizer = torch.optim.AdamW(policy.parameters())
    policy(torch.tensor([[0, 1, 2, 3, 4, 5]]))[0].sum().backward()
    optimizer.step()
    path = training_state_path(tmp_path)
    save_training_state(path, policy, policy.cfg, optimizer, {}, {"epoch": 3, "history": [{"loss": 1.5}]}, "abc")
    saved = load_training_state(path, "abc")
    assert saved["progress"] == {"epoch": 3, "history": [{"loss": 1.5}]}
    assert saved["config"]["vocab_size"] == 11 and saved["optimizer"]["state"][0]["step"] == 1
    with caplog.at_level(logging.WARNING):
        assert load_training_state(path, "another run") is None
    assert f"ignoring training state {path}" in caplog.text
    clear_training_state(tmp_path)
    assert load_training_state(path, "abc") is None and not tmp_path.exists()


def test_fingerprint_sees_configs_tensors_and_frames():
    base = fingerprint({"lr": 1e-3}, torch.arange(4), np.zeros(2))
    assert base == fingerprint({"lr": 1e-3}, torch.arange(4), np.zeros(2))
    assert base != fingerprint({"lr": 2e-3}, torch.arange(4), np.zeros(2))
    assert base != fingerprint({"lr": 1e-3}, torch.arange(4).flip(0), np.zeros(2))
    assert base != fingerprint({"lr": 1e-3}, torch.arange(4).float(), np.zeros(2))
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert fingerprint(frame) != fingerprint(frame.assign(b=["x", "z"]))
