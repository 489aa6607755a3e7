"""The generative policy: shapes, the padding logit, left padding, checkpoints."""
import pytest
import torch

from recmodels.storage.checkpoints import load_checkpoint, save_checkpoint
from recmodels.models.policy import SEEN_BIAS_SCALE, GenerativePolicy, PolicyConfig


def tiny_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=12, max_len=6, d_model=16, n_layers=2, n_heads=2, dropout=0.1)
    return GenerativePolicy(PolicyConfig(**{**cfg, **overrides}))


def test_forward_shapes_padding_logit_and_loss():
    policy = tiny_policy()
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7]])
    logits, loss = policy(items, targets)
    assert logits.shape == (2, 6, 12)
    assert torch.isneginf(logits[..., 0]).all()
    assert torch.isfinite(logits[..., 1:]).all()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)
    assert policy.next_item_logits(items).shape == (2, 12)


def test_padded_rows_are_finite_in_eval_mode():
    """Left padding (and an all-padding row) must not turn attention into NaN at inference."""
    policy = tiny_policy().eval()
    items = torch.tensor([[0, 0, 0, 3, 4, 5], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7]])
    with torch.no_grad():
        logits, _ = policy(items)
    assert torch.isfinite(logits[..., 1:]).all()


def test_left_padding_does_not_change_the_next_item_logits():
    policy = tiny_policy().eval()
    with torch.no_grad():
        short = policy.next_item_logits(torch.tensor([[3, 4, 5]]))
        padded = policy.next_item_logits(torch.tensor([[0, 0, 0, 3, 4, 5]]))
        longer = policy.next_item_logits(torch.tensor([[9, 9, 9, 9, 3, 4, 5]]))  # only the last max_len count
    torch.testing.assert_close(short[:, 1:], padded[:, 1:])
    assert torch.isfinite(longer[:, 1:]).all()


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    policy = tiny_policy(seed=1).eval()
    path = save_checkpoint(tmp_path / "policy.pt", policy, policy.cfg)
    payload = load_checkpoint(path)
    fresh = GenerativePolicy(PolicyConfig(**payload["config"]))
    fresh.load_state_dict(payload["state_dict"])
    fresh.eval()
    items = torch.tensor([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(items)[0], policy(items)[0])
    assert not torch.equal(tiny_policy(seed=2).tok_emb.weight, policy.tok_emb.weight)


def test_bad_head_count_is_rejected():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
        tiny_policy(d_model=10, n_heads=4)


def test_seen_bias_moves_the_items_already_in_the_window_once_per_occurrence():
    policy = tiny_policy(seen_bias=True).eval()
    items = torch.tensor([[0, 3, 4, 3, 5, 6]])
    with torch.no_grad():
        policy.seen_logit.fill_(-0.3)
        biased = policy.next_item_logits(items)[0]
        plain = policy.logits(policy.hidden(items)[:, -1])[0]  # no seen items given: no bias
        bias = SEEN_BIAS_SCALE * -0.3
        expected = torch.zeros(12)
        expected[[3, 4, 5, 6]] = torch.tensor([2 * bias, bias, bias, bias])
        torch.testing.assert_close((biased - plain)[1:], expected[1:])
        # each position only counts the items up to it, in the full forward and at the target positions alike
        full, _ = policy(items)
        targets = torch.tensor([[0, 4, 3, 5, 6, 7]])
        torch.testing.assert_close(policy.target_logits(items, targets), full[0, 1:])
        at_two = policy.logits(policy.hidden(items)[:, 2])[0]
        torch.testing.assert_close((full[0, 2] - at_two)[[3, 4, 5]], torch.tensor([bias, bias, 0.0]))


def test_a_policy_saved_before_the_seen_bias_loads_without_it(tmp_path):
    """Checkpoints written before `seen_bias` existed (no such config key, no seen_logit weight) still load."""
    from recmodels.storage.model_io import load_policy

    old = tiny_policy(seen_bias=False).eval()
    config = {k: v for k, v in vars(old.cfg).items() if k != "seen_bias"}
    path = save_checkpoint(tmp_path / "policy.pt", old, config)
    loaded = load_policy(path)
    assert loaded.cfg.seen_bias is False and not hasattr(loaded, "seen_logit")
    items = torch.tensor([[0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(items)[0], old(items)[0])
