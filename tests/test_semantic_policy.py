"""The semantic-ID policy, both trunks (the item trunk with and without prefix embeddings): level-aware logits, the
decoding cache against the full forward, learning."""
import numpy as np
import pytest
import torch

from recmodels.decoding.beam_search import beam_search
from recmodels.storage.checkpoints import load_checkpoint, save_checkpoint
from recmodels.storage.model_io import load_policy
from recmodels.models.policy import SEEN_BIAS_SCALE
from recmodels.models.semantic_policy import TRUNKS, SemanticPolicy, SemanticPolicyConfig
from recmodels.tokenization import ItemTrie, SemanticIdConfig, SemanticIds
from recmodels.tokenization.items import SemanticItems

SIZES = (3, 3, 2)  # offsets (1, 4, 7), vocab 9
# the policies every behaviour holds for; 9 prefix rows: level 1's 9 prefixes indexed as is, level 2's 18 hashed
VARIANTS = {"items": {"trunk": "items"}, "items_with_prefixes": {"trunk": "items", "prefix_buckets": 9},
            "items_with_prefix_logits": {"trunk": "items", "prefix_buckets": 9, "prefix_logits": True},
            # rows for the prefixes of hand_ids()'s 8 items only: the tests' sequences hold real and other prefixes
            "items_with_item_prefix_logits": {"trunk": "items", "item_prefixes": True, "n_items": 8,
                                              "prefix_logits": True},
            # the defaults: item prefix logits, the other-prefix logit and the seen bias
            "items_default": {"trunk": "items", "item_prefixes": True, "n_items": 8, "prefix_logits": True,
                              "other_prefix_logit": True, "seen_bias": True},
            "tokens": {"trunk": "tokens"}}
assert {v["trunk"] for v in VARIANTS.values()} == set(TRUNKS)


def random_policy(level_sizes=SIZES, seed=0, max_len=6, scale=0.4, **overrides):
    """A policy with large random weights, so that its logits are far from uniform (no near ties)."""
    torch.manual_seed(seed)
    cfg = dict(level_sizes=level_sizes, max_len=max_len, d_model=16, n_layers=2, n_heads=2, dropout=0.0,
               item_prefixes=False, prefix_logits=False, seen_bias=False)  # the plain code head unless asked
    policy = SemanticPolicy(SemanticPolicyConfig(**{**cfg, **overrides}))
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0.0, scale)
    if policy.cfg.item_prefixes:
        policy.set_items(hand_ids(n_items=policy.cfg.n_items, sizes=level_sizes).codes[1:])
    return policy.eval()


def hand_ids(n_items=8, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    space = np.array(np.meshgrid(*(np.arange(s) for s in sizes), indexing="ij")).reshape(len(sizes), -1).T
    codes = np.vstack([np.zeros((1, len(sizes)), np.int64), space[rng.choice(len(space), n_items, replace=False)]])
    return SemanticIds(codes=codes, level_sizes=sizes, config=SemanticIdConfig(n_levels=len(sizes) - 1))


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_forward_masks_every_level_but_the_next_one(variant):
    policy = random_policy(**variant)
    tokens = torch.tensor([[0, 0, 0, 1, 4, 7, 2, 6], [3, 5, 8, 1, 4, 7, 2, 5]])
    logits, loss = policy(tokens)
    assert logits.shape == (2, 8, 9) and loss is None
    level_of_next = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2, 7: 0, 8: 0}
    ranges = {0: range(1, 4), 1: range(4, 7), 2: range(7, 9)}
    for b in range(2):
        for s in range(8):
            finite = torch.isfinite(logits[b, s]).nonzero().flatten().tolist()
            assert finite == list(ranges[level_of_next[int(tokens[b, s])]])


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_kv_cache_step_logits_equal_the_full_forward(variant):
    policy = random_policy(max_len=4, **variant)
    history = torch.tensor([[0, 0, 0, 1, 4, 7, 3, 6, 8], [2, 5, 7, 1, 4, 8, 3, 4, 7]])
    generated = torch.tensor([[2, 5, 8, 1, 6], [3, 6, 7, 2, 4]])  # one item and two codes of the next
    full, _ = policy(torch.cat([history, generated], dim=1))
    cache = policy.prefill(history)
    torch.testing.assert_close(cache.logits, full[:, 8], atol=1e-5, rtol=1e-5)
    for j in range(generated.shape[1]):
        logits, cache = policy.step(generated[:, j], cache)
        torch.testing.assert_close(logits, full[:, 9 + j], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_kv_cache_beams_share_the_history_and_follow_reordering(variant):
    policy = random_policy(max_len=4, **variant)
    history = torch.tensor([[0, 0, 0, 1, 4, 7], [2, 5, 7, 1, 4, 8]])
    cache = policy.prefill(history).expand(3)  # rows: (history 0: beams 0..2), (history 1: beams 0..2)
    first = torch.tensor([1, 2, 3, 3, 2, 1])
    _, cache = policy.step(first, cache)
    parents = torch.tensor([[2, 2, 0], [1, 0, 0]])
    second = torch.tensor([4, 5, 6, 6, 5, 4])
    logits, cache = policy.step(second, cache.select(parents))
    for b in range(2):
        for k in range(3):
            seq = torch.cat([history[b], first[b * 3 + parents[b, k]].view(1), second[b * 3 + k].view(1)])
            expected = policy.next_token_logits(seq[None])[0]
            torch.testing.assert_close(logits[b * 3 + k], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_left_padding_does_not_change_the_next_token_logits(variant):
    policy = random_policy(**variant)
    short = policy.next_token_logits(torch.tensor([[1, 4, 7, 3, 6, 8]]))
    padded = policy.next_token_logits(torch.tensor([[0, 0, 0, 0, 0, 0, 1, 4, 7, 3, 6, 8]]))
    torch.testing.assert_close(short, padded)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_loss_falls_on_a_learnable_pattern_and_beam_search_then_finds_the_next_item(variant):
    torch.manual_seed(0)
    ids = hand_ids(n_items=8)
    config = dict(max_len=5, d_model=32, n_layers=2, n_heads=2, dropout=0.0, item_prefixes=False, prefix_logits=False)
    policy = SemanticItems(ids).build_policy(SemanticPolicyConfig(ids.level_sizes, **{**config, **variant}))
    starts = torch.arange(40) % 8
    seq = (starts[:, None] + torch.arange(6)) % 8 + 1  # item i is always followed by item i % 8 + 1
    tokens, targets = ids.window_tokens(seq[:, :5], seq[:, 1:])
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        _, loss = policy(tokens, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    history = ids.items_to_tokens(torch.tensor([[2, 3, 4], [6, 7, 8]]))
    tuples, _ = beam_search(policy, history, beam_size=3, trie=ItemTrie.from_semantic_ids(ids))
    assert ids.lookup(tuples[:, 0]).tolist() == [5, 1]


def test_prefix_embeddings_tell_apart_items_whose_codes_alone_do_not():
    """Items (0,1,0) and (1,0,0): with the code embeddings of levels 0 and 1 made equal, their sums of code
    embeddings are equal, so only the prefix embeddings can tell the two apart."""
    for buckets, differ in ((0, False), (9, True)):
        policy = random_policy(prefix_buckets=buckets)
        with torch.no_grad():
            policy.tok_emb.weight[4:7] = policy.tok_emb.weight[1:4]  # level-1 code c embeds as level-0 code c
        a = policy.next_token_logits(torch.tensor([[1, 5, 7]]))  # item (0, 1, 0)
        b = policy.next_token_logits(torch.tensor([[2, 4, 7]]))  # item (1, 0, 0)
        assert (not torch.allclose(a, b)) == differ


def test_prefix_logits_score_one_code_apart_under_two_prefixes():
    """Level-1 code 0 completes the prefixes (0, 0) and (1, 0): with prefix logits its logit after level-0 code 0
    differs from its logit after code 1, less what the prefix embeddings change in the state itself."""
    history = torch.tensor([[1, 4, 7, 2, 5, 8]])
    for prefix_logits in (False, True):
        policy = random_policy(prefix_buckets=9, prefix_logits=prefix_logits)
        for first in (1, 2):  # level-0 codes 0 and 1
            tokens = torch.cat([history, torch.tensor([[first]])], dim=1)
            logits = policy.next_token_logits(tokens)
            h = policy.hidden(tokens)[:, -1]  # the state that predicts the level-1 code
            code_alone = (h @ policy.tok_emb.weight[4]).item()  # level-1 code 0 (token 4), without its prefix
            row = policy.prefix_rows(1, torch.tensor(first - 1) * 3)[0]  # the prefix (first - 1, 0)
            expected = code_alone + (h @ policy.prefix_emb.weight[row]).item() if prefix_logits else code_alone
            assert logits[0, 4].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("other_prefix_logit", [True, False])
def test_item_prefix_logits_score_real_prefixes_by_their_rows_and_the_others_by_row_0(other_prefix_logit):
    """With item_prefixes, a code's logit adds state . (its prefix's row) where the code completes a prefix of one
    of the policy's items; rows are the real prefixes in order, row 0 of a level standing for the others, which
    add state . (row 0) with other_prefix_logit and nothing without. Checked at level 1 (scored by one matmul)
    and level 2 (scored per real child)."""
    policy = random_policy(item_prefixes=True, n_items=8, prefix_logits=True, other_prefix_logit=other_prefix_logit)
    codes = hand_ids(n_items=8).codes[1:]
    history = torch.tensor([[1, 4, 7, 2, 5, 8]])
    n_other = 0
    for prefix in ([0], [1], [2], [0, 0], [1, 2], [2, 1]):  # the codes so far of the next item
        level = len(prefix)
        real = sorted({tuple(t[:level + 1]) for t in codes.tolist()})
        offset = policy.layout.offsets[level]
        tokens = torch.cat([history, torch.tensor([[policy.layout.offsets[l] + c for l, c in enumerate(prefix)]])],
                           dim=1)
        logits = policy.next_token_logits(tokens)[0]
        h = policy.hidden(tokens)[0, -1]
        for c in range(SIZES[level]):
            expected = (h @ policy.tok_emb.weight[offset + c]).item()  # the code alone
            if (*prefix, c) in real:
                row = (level - 1) * (8 + 1) + 1 + real.index((*prefix, c))
                expected += (h @ policy.prefix_emb.weight[row]).item()
            elif other_prefix_logit:
                expected += (h @ policy.prefix_emb.weight[(level - 1) * (8 + 1)]).item()
                n_other += 1
            assert logits[offset + c].item() == pytest.approx(expected, abs=1e-5)
    assert n_other >= 2 or not other_prefix_logit  # the prefixes above hold other prefixes at both levels


def test_seen_bias_adds_its_level_logit_once_per_history_item_a_code_would_repeat_up_to_its_level():
    """A code of level l gets SEEN_BIAS_SCALE * seen_logit[l] for each history item whose codes 0..l it would
    repeat: level 0 counts the items that start with it, the last level an item's earlier occurrences."""
    with_bias = random_policy(seen_bias=True)
    without = random_policy(seen_bias=False)
    without.load_state_dict({k: v for k, v in with_bias.state_dict().items() if k != "seen_logit"})
    bias = SEEN_BIAS_SCALE * with_bias.seen_logit.detach()
    history = [1, 4, 7, 1, 5, 8, 1, 4, 8, 3, 6, 7]  # codes (0,0,0), (0,1,1), (0,0,1), (2,2,0)
    # the codes so far of the next item -> {token: seen items it would repeat up to its level}
    expected = {(): {1: 3, 3: 1}, (1,): {4: 2, 5: 1}, (1, 4): {7: 1, 8: 1}, (3, 6): {7: 1}, (2,): {}}
    for so_far, counts in expected.items():
        tokens = torch.tensor([history + list(so_far)])
        level = len(so_far)
        added = with_bias.next_token_logits(tokens)[0] - without.next_token_logits(tokens)[0]
        codes = range(with_bias.layout.offsets[level], with_bias.layout.offsets[level] + SIZES[level])
        torch.testing.assert_close(added[list(codes)], torch.tensor([counts.get(t, 0) * bias[level] for t in codes]))


def test_bad_input_is_rejected_with_a_clear_message():
    policy = random_policy(max_len=2)
    with pytest.raises(ValueError, match="target token 4 at row 0, position 1 is not of the level"):
        policy(torch.tensor([[1, 4, 7]]), torch.tensor([[4, 4, 0]]))
    with pytest.raises(ValueError, match="tokens hold ids outside 0..8"):
        policy(torch.tensor([[1, 9]]))
    with pytest.raises(ValueError, match="a row holds 4 whole items, more than max_len=2"):
        policy(torch.tensor([[1, 4, 7] * 4]))
    with pytest.raises(ValueError, match="token 4 at row 0, position 0 is not of level 0"):
        policy(torch.tensor([[4, 1, 7]]))
    with pytest.raises(ValueError, match="more than the 9 positions"):
        random_policy(max_len=2, trunk="tokens")(torch.tensor([[1, 4, 7] * 4]))
    with pytest.raises(ValueError, match=r"trunk must be one of \('items', 'tokens'\), got 'codes'"):
        SemanticPolicyConfig(SIZES, trunk="codes")
    with pytest.raises(ValueError, match="prefix_buckets must be >= 0 and needs trunk='items', got 4 with trunk='tokens'"):
        SemanticPolicyConfig(SIZES, trunk="tokens", prefix_buckets=4, item_prefixes=False)
    with pytest.raises(ValueError, match="prefix_logits needs prefix embeddings: set prefix_buckets > 0"):
        SemanticPolicyConfig(SIZES, item_prefixes=False, prefix_logits=True)
    with pytest.raises(ValueError, match=r"item_prefixes \(on by default\) needs trunk='items', prefix_buckets=0 and "
                                         "n_items >= 1, got trunk='items', prefix_buckets=0, n_items=0: pass n_items"):
        SemanticPolicyConfig(SIZES)
    with pytest.raises(ValueError, match=r"set_items expects codes of shape \(8, 3\)"):
        random_policy(item_prefixes=True, n_items=8).set_items(hand_ids(n_items=7).codes[1:])
    cache = policy.prefill(torch.tensor([[1, 4, 7]]))
    with pytest.raises(ValueError, match=r"last_tokens must be \[1\]"):
        policy.step(torch.tensor([1, 2]), cache)
    with pytest.raises(ValueError, match="step 1 after the history appends codes of level 0"):
        policy.step(torch.tensor([4]), cache)
    with pytest.raises(ValueError, match="multiple of 3 tokens"):
        policy.prefill(torch.tensor([[1, 4]]))


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_bf16_autocast_gives_the_float32_loss_and_gradients(variant):
    """`PretrainConfig.cpu_bf16` trains under CPU autocast: the loss is the float32 one up to bf16 rounding."""
    policy = random_policy(scale=0.1, **variant)
    tokens = torch.tensor([[0, 0, 0, 1, 4, 7, 2, 6], [3, 5, 8, 1, 4, 7, 2, 5]])
    targets = torch.tensor([[0, 0, 1, 4, 7, 2, 6, 8], [5, 8, 1, 4, 7, 2, 5, 7]])
    exact = policy(tokens, targets)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = policy(tokens, targets)[1]
    loss.backward()
    assert loss.item() == pytest.approx(exact.item(), rel=0.05)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in policy.parameters())


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=list(VARIANTS))
def test_checkpoint_round_trip_gives_the_same_outputs(variant, tmp_path):
    policy = random_policy(seed=3, **variant)
    path = save_checkpoint(tmp_path / "semantic.pt", policy, policy.cfg)
    payload = load_checkpoint(path)
    fresh = SemanticPolicy(SemanticPolicyConfig(**payload["config"])).eval()
    fresh.load_state_dict(payload["state_dict"])
    tokens = torch.tensor([[0, 0, 0, 1, 4, 7, 2, 6]])
    torch.testing.assert_close(fresh(tokens)[0], policy(tokens)[0])
    assert fresh.cfg.level_sizes == SIZES


def test_a_checkpoint_written_before_trunks_existed_loads_as_the_token_trunk(tmp_path):
    policy = random_policy(seed=2, trunk="tokens")
    config = {k: v for k, v in vars(policy.cfg).items() if k != "trunk"}  # what such a checkpoint holds
    path = save_checkpoint(tmp_path / "old.pt", policy, config)
    loaded = load_policy(path)
    assert type(loaded).__name__ == "TokenTrunkSemanticPolicy" and loaded.cfg.trunk == "tokens"
    tokens = torch.tensor([[0, 0, 0, 1, 4, 7, 2, 6]])
    torch.testing.assert_close(loaded(tokens)[0], policy(tokens)[0])


def test_a_checkpoint_with_item_prefixes_written_before_other_prefix_logit_scores_other_prefixes_as_before(tmp_path):
    """An item-prefix checkpoint whose config lacks other_prefix_logit added nothing for other prefixes."""
    policy = random_policy(seed=4, item_prefixes=True, n_items=8, prefix_logits=True, other_prefix_logit=False)
    config = {k: v for k, v in vars(policy.cfg).items() if k != "other_prefix_logit"}
    loaded = load_policy(save_checkpoint(tmp_path / "old.pt", policy, config))
    assert loaded.cfg.item_prefixes and not loaded.cfg.other_prefix_logit
    tokens = torch.tensor([[1, 4, 7, 2, 5, 8, 3]])
    torch.testing.assert_close(loaded.next_token_logits(tokens), policy.next_token_logits(tokens))


def test_a_checkpoint_written_before_prefix_logits_and_item_prefixes_loads_without_them(tmp_path):
    """Both are on by default now; a checkpoint whose config lacks them was trained without them."""
    policy = random_policy(seed=4, prefix_buckets=9)
    config = {k: v for k, v in vars(policy.cfg).items()
              if k not in ("prefix_logits", "item_prefixes", "n_items", "other_prefix_logit")}
    loaded = load_policy(save_checkpoint(tmp_path / "old.pt", policy, config))
    assert not loaded.cfg.prefix_logits and not loaded.cfg.item_prefixes and loaded.cfg.prefix_buckets == 9
    tokens = torch.tensor([[0, 0, 0, 1, 4, 7, 2, 6]])
    torch.testing.assert_close(loaded(tokens)[0], policy(tokens)[0])
