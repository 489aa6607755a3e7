"""The generative policy: shapes, the padding logit, left padding, checkpoints."""
import pytest
import torch

from recmodels.storage.checkpoints import load_checkpoint, save_checkpoint
from recmodels.models.policy import SEEN_BIAS_SCALE, GenerativePolicy, PolicyConfig, rotary_angles, rotate


def tiny_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=12, max_len=6, d_model=16, n_layers=2, n_heads=2, dropout=0.1)
    return GenerativePolicy(PolicyConfig(**{**cfg, **overrides}))


ARCHITECTURES = [{"positions": "learned"}, {"positions": "rotary"}, {"block": "hstu"}]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_shapes_padding_logit_and_loss(architecture):
    policy = tiny_policy(**architecture)
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


@pytest.mark.parametrize("bf16", [False, True])
def test_padding_bias_gives_the_logits_and_gradients_of_masking_column_0(bf16):
    """The output projection's -inf bias on padding equals projecting, then setting column 0 to -inf."""
    policy = tiny_policy(dropout=0.0)
    with torch.no_grad():
        policy.seen_logit.fill_(-0.3)
    items = torch.tensor([[0, 0, 3, 4, 3, 6], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7]])

    def masked_after(hidden, seen):
        logits = (hidden @ policy.tok_emb.weight.T).float()
        logits.scatter_add_(-1, seen, (SEEN_BIAS_SCALE * policy.seen_logit).expand(seen.shape))
        logits[..., 0] = float("-inf")
        return logits

    results = []
    for logits_of in (policy.logits, masked_after):
        policy.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = logits_of(policy.hidden(items), policy._seen_so_far(items))
        torch.nn.functional.cross_entropy(logits[targets != 0], targets[targets != 0]).backward()
        results.append((logits.detach(), [p.grad.clone() for p in policy.parameters()]))
    (logits, grads), (expected_logits, expected_grads) = results
    assert torch.equal(logits, expected_logits) and torch.isneginf(logits[..., 0]).all()
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads))
    assert "padding_bias" not in policy.state_dict()  # rebuilt from the config, not saved


def test_padded_rows_are_finite_in_eval_mode():
    """Left padding (and an all-padding row) must not turn attention into NaN at inference."""
    policy = tiny_policy().eval()
    items = torch.tensor([[0, 0, 0, 3, 4, 5], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7]])
    with torch.no_grad():
        logits, _ = policy(items)
    assert torch.isfinite(logits[..., 1:]).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_left_padding_does_not_change_the_next_item_logits(architecture):
    policy = tiny_policy(**architecture).eval()
    with torch.no_grad():
        short = policy.next_item_logits(torch.tensor([[3, 4, 5]]))
        padded = policy.next_item_logits(torch.tensor([[0, 0, 0, 3, 4, 5]]))
        longer = policy.next_item_logits(torch.tensor([[9, 9, 9, 9, 3, 4, 5]]))  # only the last max_len count
    torch.testing.assert_close(short[:, 1:], padded[:, 1:])
    assert torch.isfinite(longer[:, 1:]).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, architecture):
    policy = tiny_policy(seed=1, **architecture).eval()
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


def test_unknown_positions_blocks_and_odd_rotary_heads_are_rejected():
    with pytest.raises(ValueError, match="positions must be one of .* got 'sinusoidal'"):
        tiny_policy(positions="sinusoidal")
    with pytest.raises(ValueError, match="block must be one of .* got 'mamba'"):
        tiny_policy(block="mamba")
    with pytest.raises(ValueError, match="even head width"):
        tiny_policy(positions="rotary", d_model=6, n_heads=2)


def test_rotary_scores_depend_on_the_distance_between_query_and_key_alone():
    """q at m, k at n: <rotate(q, m), rotate(k, n)> is the same for every shift of both, and changes with m - n."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 8)
    cos, sin = rotary_angles(12, 8, torch.device("cpu"))

    def score(m, n):
        rq = rotate(q.view(1, 1, 1, 8), cos[m:m + 1], sin[m:m + 1])
        rk = rotate(k.view(1, 1, 1, 8), cos[n:n + 1], sin[n:n + 1])
        return (rq * rk).sum()

    torch.testing.assert_close(score(5, 2), score(9, 6))
    torch.testing.assert_close(score(3, 3), q @ k)  # no distance, no rotation
    assert not torch.allclose(score(5, 2), score(5, 4))
    rq = rotate(q.view(1, 1, 1, 8), cos[7:8], sin[7:8])
    torch.testing.assert_close(rq.norm(), q.norm())  # a rotation keeps lengths


def test_an_hstu_block_attends_with_silu_weights_to_the_keys_it_may_see():
    """By hand for one head: SiLU(q.k + distance bias) / max_len over the allowed keys, gated by u after ln."""
    torch.manual_seed(0)
    policy = tiny_policy(block="hstu", n_heads=1, dropout=0.0).eval()
    block = policy.blocks[0]
    with torch.no_grad():
        block.distance_bias.copy_(torch.linspace(-1, 1, 6))
        x = torch.randn(1, 4, 16)
        allowed = torch.tril(torch.ones(4, 4, dtype=torch.bool))
        allowed[:, 1] = False  # position 1 is padding: no query sees it ...
        allowed[1, 1] = True  # ... but itself
        u, v, q, k = torch.nn.functional.silu(block.uvqk(block.ln(x[0]))).split(16, dim=1)
        expected = torch.zeros(4, 16)
        for t in range(4):
            for s in range(4):
                if allowed[t, s]:
                    w = torch.nn.functional.silu(q[t] @ k[s] + block.distance_bias[t - s]) / 6
                    expected[t] += w * v[s]
        expected = x[0] + block.proj(block.ln_attn(expected) * u)
        torch.testing.assert_close(block(x, allowed[None, None]), expected[None])


def test_a_rotary_policy_has_no_position_embedding():
    assert hasattr(tiny_policy(), "pos_emb")
    assert not hasattr(tiny_policy(positions="rotary"), "pos_emb")


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
