"""The shared rollout sampler and the reference log-prob cache: masking, distinctness, distribution, cost."""
import math

import pytest
import torch
import torch.nn.functional as F

from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.post_training.reference_cache import ReferenceCache
from recmodels.decoding.rollouts import (entropy, history_mask, kl_divergence, masked_log_probs, next_item_log_probs,
                                sample_from_log_probs, sample_rollouts, sequence_logprob, top_k_rollouts)

N_ITEMS, T = 20, 6


class CountingPolicy(GenerativePolicy):
    """The tiny policy, counting its transformer passes and the rows they encode."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls, self.rows = 0, 0

    def hidden(self, items):
        self.calls += 1
        self.rows += items.shape[0]
        return super().hidden(items)


def tiny_policy(seed: int = 0) -> CountingPolicy:
    torch.manual_seed(seed)
    return CountingPolicy(PolicyConfig(vocab_size=N_ITEMS + 1, max_len=T, d_model=16, n_layers=1, n_heads=1,
                                       dropout=0.0)).eval()


def histories(n: int = 32, seed: int = 1) -> torch.Tensor:
    """Left-padded histories of 1..T distinct items (so up to T of the 20 items are masked)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, T + 1, (1,), generator=g))
        out[i, T - k:] = torch.randperm(N_ITEMS, generator=g)[:k] + 1
    return out


def test_history_mask_by_hand():
    mask = history_mask(torch.tensor([[0, 0, 3, 5], [1, 2, 2, 4]]), vocab_size=7)
    assert mask.tolist() == [[True, False, False, True, False, True, False],
                             [True, True, True, False, True, False, False]]
    with pytest.raises(ValueError, match="outside 0..6"):
        history_mask(torch.tensor([[0, 7]]), vocab_size=7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampler_returns_distinct_unmasked_items(seed):
    policy, h = tiny_policy(), histories(seed=seed)
    G = N_ITEMS - T  # as many as the fullest history leaves
    out = sample_rollouts(policy, h, G, torch.Generator().manual_seed(seed))
    assert out.items.shape == (len(h), G) and out.valid.all()
    for row, items in zip(h.tolist(), out.items.tolist()):
        assert len(set(items)) == G  # distinct
        assert 0 not in items and not set(items) & set(row)  # neither padding nor history
    expected = masked_log_probs(policy.next_item_logits(h), history_mask(h, N_ITEMS + 1)).gather(1, out.items)
    torch.testing.assert_close(out.logp, expected)


def test_top_k_is_the_masked_top_k_in_order():
    policy, h = tiny_policy(), histories()
    out = top_k_rollouts(policy, h, 5)
    logp = next_item_log_probs(policy, h)
    assert torch.equal(out.items, logp.topk(5, dim=1).indices)
    assert (out.logp[:, :-1] >= out.logp[:, 1:]).all()
    assert not history_mask(h, N_ITEMS + 1).gather(1, out.items).any()


def test_gumbel_top_k_samples_the_distribution():
    """G=1 is one draw from the masked distribution; the first of G=3 too (sampling without replacement)."""
    logits = torch.tensor([[float("-inf"), 2.0, 1.0, 0.0, -1.0, 1.5]])
    mask = torch.tensor([[True, False, False, True, False, False]])  # item 3 masked
    log_probs = masked_log_probs(logits, mask).expand(40000, -1)
    p = log_probs[0].exp()
    for G in (1, 3):
        items = sample_from_log_probs(log_probs, G, torch.Generator().manual_seed(G)).items
        freq = torch.bincount(items[:, 0], minlength=6).float() / len(items)
        torch.testing.assert_close(freq, p, atol=0.01, rtol=0)
        assert (items != 3).all() and (items != 0).all()


def test_sampler_is_seeded():
    policy, h = tiny_policy(), histories()
    a = sample_rollouts(policy, h, 4, torch.Generator().manual_seed(7)).items
    b = sample_rollouts(policy, h, 4, torch.Generator().manual_seed(7)).items
    c = sample_rollouts(policy, h, 4, torch.Generator().manual_seed(8)).items
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_forward_pass_per_context_whatever_the_group_size():
    policy, h = tiny_policy(), histories(n=10)
    for G in (1, 8):
        policy.calls = policy.rows = 0
        sample_rollouts(policy, h, G, torch.Generator().manual_seed(0))
        assert (policy.calls, policy.rows) == (1, 10)
    policy.calls = policy.rows = 0
    sequence_logprob(policy, h, torch.randint(1, N_ITEMS + 1, (10, 8)))
    assert (policy.calls, policy.rows) == (1, 10)


def test_sequence_logprob_matches_the_sample_and_carries_gradient():
    policy, h = tiny_policy(), histories()
    out = sample_rollouts(policy, h, 3, torch.Generator().manual_seed(0))
    logp = sequence_logprob(policy, h, out.items)
    torch.testing.assert_close(logp, out.logp)
    logp.sum().backward()
    assert policy.tok_emb.weight.grad.abs().sum() > 0
    assert sequence_logprob(policy, h[:1], h[:1, -1:]).item() == float("-inf")  # a history item is masked


def test_group_larger_than_unmasked_catalog_is_rejected():
    h = torch.arange(1, T + 1)[None]  # masks 6 of 20 items
    with pytest.raises(ValueError, match=r"context row 0 leaves only 14 items unmasked, fewer than group_size=15"):
        sample_rollouts(tiny_policy(), h, 15, torch.Generator())


def test_entropy_and_kl_skip_masked_entries():
    inf = float("-inf")
    logp = torch.log(torch.tensor([[0.0, 0.5, 0.5, 0.0]]))
    logq = torch.log(torch.tensor([[0.0, 0.25, 0.75, 0.0]]))
    assert entropy(logp).item() == pytest.approx(math.log(2))
    assert kl_divergence(logp, logq).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert logp[0, 0] == inf and torch.isfinite(kl_divergence(logp, logp)).all()


def test_reference_cache_memoizes_and_stays_bounded():
    ref = tiny_policy(seed=3)
    h = histories(n=8)
    cache = ReferenceCache(ref)
    first = cache.log_probs(h)
    torch.testing.assert_close(first, F.log_softmax(ref.next_item_logits(h), dim=-1))
    ref.calls = ref.rows = 0
    again = cache.log_probs(torch.cat([h[:4], histories(n=2, seed=9)]))  # 4 hits, 2 misses
    assert (ref.calls, ref.rows) == (1, 2) and cache.last_hit_rate == pytest.approx(4 / 6)
    torch.testing.assert_close(again[:4], first[:4])
    assert cache.log_probs(h).shape == (8, N_ITEMS + 1) and (cache.hits, cache.misses) == (12, 10)

    small = ReferenceCache(ref, max_mib=3 * 4 * (N_ITEMS + 1) / 2**20)  # room for exactly 3 contexts
    small.log_probs(h[:3])
    small.log_probs(h[1:2])  # touch row 1: row 0 is now the least recently used
    small.log_probs(h[3:4])  # evicts row 0
    assert len(small) == 3 and small.table.shape[0] == 3
    ref.calls = 0
    torch.testing.assert_close(small.log_probs(h[1:4]), first[1:4])  # all hits
    assert ref.calls == 0
    small.log_probs(h[:1])
    assert ref.calls == 1  # row 0 had been evicted
