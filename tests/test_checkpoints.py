"""Checkpoints: `{state_dict, config}` round trip, atomic writes, clear errors on bad files."""
from __future__ import annotations

import pytest
import torch

from recmodels.storage.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
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
