"""A semantic-ID policy warm-started from an atomic one (`recmodels.models.warm_start`): it reads items as the
atomic policy did, refuses policies it cannot start from without touching them, and pretraining starts from it."""
import numpy as np
import pytest
import torch

from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.models.semantic_policy import SemanticPolicyConfig
from recmodels.models.warm_start import start_from_atomic
from recmodels.tokenization import SemanticIdConfig, SemanticIds
from recmodels.tokenization.items import SemanticItems
from recmodels.training.pretraining import PretrainConfig, pretrain_fingerprint, pretrain_policy
from tests.synthetic import cyclic_interactions

N_ITEMS = 48
SIZES = (6, 4, 2)
SIZE = dict(max_len=6, d_model=32, n_layers=1, n_heads=2, dropout=0.0)


def shuffled_ids(seed: int = 0) -> SemanticIds:
    """Items 1..48 on the 48 tuples of the 6 x 4 x 2 grid, in a shuffled order (so that a row per item in
    tuple order is not the item order)."""
    order = np.random.default_rng(seed).permutation(N_ITEMS)
    codes = np.zeros((N_ITEMS + 1, 3), np.int64)
    for i, j in enumerate(order, start=1):
        codes[i] = (j // 8, (j // 2) % 4, j % 2)
    return SemanticIds(codes=codes, level_sizes=SIZES, config=SemanticIdConfig(n_levels=2, codebook_size=6))


def atomic_policy(n_items: int = N_ITEMS, seed: int = 1, **size) -> GenerativePolicy:
    torch.manual_seed(seed)
    policy = GenerativePolicy(PolicyConfig(vocab_size=n_items + 1, **{**SIZE, **size}))
    with torch.no_grad():
        policy.seen_logit.fill_(-0.3)
    return policy.eval()


def semantic_policy(ids: SemanticIds, **changes):
    torch.manual_seed(2)
    config = SemanticPolicyConfig(level_sizes=SIZES, n_items=N_ITEMS, **{**SIZE, **changes})
    return SemanticItems(ids).build_policy(config).eval()


def test_the_warm_started_trunk_reads_a_window_as_the_atomic_policy_did():
    ids, atomic = shuffled_ids(), atomic_policy()
    semantic = semantic_policy(ids)
    start_from_atomic(semantic, atomic)
    with torch.no_grad():  # leave only what the warm start copied in an item's input: its own row
        semantic.tok_emb.weight.zero_()
        semantic.prefix_emb.weight[:semantic.level_rows].zero_()  # level 1's prefix rows
    items = torch.tensor([[5, 17, 3, 48, 22, 9], [1, 2, 3, 4, 5, 6]])  # full windows of max_len items
    tokens = ids.items_to_tokens(items)  # [2, 6 * 3]
    with torch.no_grad():
        contexts = semantic.contexts(tokens)[:, 1:]  # the state after each item
        expected = atomic.hidden(items)
    torch.testing.assert_close(contexts, expected)
    assert semantic.seen_logit[-1].item() == pytest.approx(-0.3)  # an item's own earlier occurrences
    assert semantic.seen_logit[:-1].abs().sum().item() == 0.0


@pytest.mark.parametrize("changes, atomic_size, message", [
    ({}, {"n_items": 40}, "holds 48 items, the atomic one 40"),
    ({}, {"d_model": 16}, "d_model 32 vs 16"),
    ({"item_prefixes": False, "prefix_logits": False}, {}, "item_prefixes=False"),
    ({}, {"positions": "rotary"}, "positions='rotary'"),
    ({}, {"block": "hstu"}, "block='hstu'"),
])
def test_a_policy_it_cannot_start_from_is_refused_and_left_as_it_was(changes, atomic_size, message):
    semantic = semantic_policy(shuffled_ids(), **changes)
    before = {k: v.clone() for k, v in semantic.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        start_from_atomic(semantic, atomic_policy(**atomic_size))
    after = semantic.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretraining_starts_from_the_atomic_policy_and_keys_its_resumable_state_by_it():
    data = cyclic_interactions(n_users=30, n_items=N_ITEMS, events=10, rewards=(1.0, -0.5), seed=0)
    ids, atomic = shuffled_ids(), atomic_policy()
    config = SemanticPolicyConfig(level_sizes=SIZES, n_items=N_ITEMS, **SIZE)
    frozen = PretrainConfig(epochs=1, batch_size=8, lr=0.0, weight_decay=0.0, seed=0)  # no step moves a weight
    result = pretrain_policy(data, N_ITEMS, config, frozen, tokenization=SemanticItems(ids), device="cpu",
                             start_from=atomic)
    for name in ("blocks", "ln_f", "pos_emb"):
        got, want = getattr(result.policy, name).state_dict(), getattr(atomic, name).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)

    tokens = targets = torch.zeros(1, 3, dtype=torch.long)
    key = lambda start: pretrain_fingerprint(data, N_ITEMS, config, frozen, SemanticItems(ids), tokens,  # noqa: E731
                                             targets, torch.device("cpu"), start)
    assert key(atomic) == key(atomic_policy()) != key(atomic_policy(seed=3))
    assert key(None) not in {key(atomic), key(atomic_policy(seed=3))}
