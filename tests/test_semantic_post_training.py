"""Post-training over semantic-ID code tuples: per-item NLL from codes, tuple rollouts, invalid tuples, GRPO per token."""
import copy
import math

import numpy as np
import pytest
import torch

from recmodels.decoding.beam_search import tuple_log_probs
from recmodels.evaluation.hallucination import evaluate_beams
from recmodels.evaluation.metrics import ndcg
from recmodels.post_training import dpo, grpo, ppo
from recmodels.post_training.contexts import ranker_rewards, select_contexts
from recmodels.post_training.dpo import DPOParams, dpo_loss
from recmodels.post_training.grpo import GRPOParams, grpo_terms
from recmodels.post_training.loop import MethodContext, PostTrainConfig, post_train
from recmodels.post_training.registry import METHODS
from recmodels.tokenization.items import SemanticItems
from recmodels.decoding.rollouts import (first_code_log_probs, history_exclusions, sample_rollouts, sequence_logprob,
                                tuple_token_log_probs)
from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig
from recmodels.data.rewards import RewardSpec
from recmodels.data.sequences import TrainingWindows, build_user_sequences, eval_examples, training_windows
from recmodels.tokenization import ItemTrie, SemanticIdConfig, SemanticIds
from tests.test_rl_methods import MAX_LEN, N_ITEMS, item_ranker, make_interactions
from tests.test_rl_methods import tiny_policy as atomic_policy

SIZES = (4, 4, 3)  # 48 code tuples for 30 items: 18 tuples are no item


def code_table(seed: int = 0) -> SemanticIds:
    """A random injective code table: every item gets its own tuple, 18 tuples stay unused."""
    rng = np.random.default_rng(seed)
    space = np.array(np.meshgrid(*(np.arange(s) for s in SIZES), indexing="ij")).reshape(len(SIZES), -1).T
    codes = np.vstack([np.zeros((1, len(SIZES)), np.int64), space[rng.choice(len(space), N_ITEMS, replace=False)]])
    return SemanticIds(codes=codes, level_sizes=SIZES, config=SemanticIdConfig(n_levels=len(SIZES) - 1))


def tiny_policy(seed: int = 0, dropout: float = 0.0) -> SemanticPolicy:
    torch.manual_seed(seed)
    return SemanticPolicy(SemanticPolicyConfig(level_sizes=SIZES, max_len=MAX_LEN, d_model=16, n_layers=1, n_heads=1,
                                               dropout=dropout, item_prefixes=False, prefix_logits=False))


def semantic_ctx(params, semantic_ids, reference=None, ranker=None, seed: int = 0) -> MethodContext:
    return MethodContext(params=params, reference=(reference or tiny_policy()).eval(),
                         ranker=ranker if ranker is not None else item_ranker(), state={},
                         device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
                         tokenization=SemanticItems(semantic_ids))


@pytest.fixture(scope="module")
def semantic_ids():
    return code_table()


@pytest.fixture(scope="module")
def interactions():
    return make_interactions()


@pytest.fixture(scope="module")
def windows(interactions):
    return training_windows(build_user_sequences(interactions), max_len=MAX_LEN)


# --- every registered method through the shared loop ------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_over_semantic_ids(interactions, semantic_ids, method):
    start = tiny_policy(dropout=0.1)
    before = copy.deepcopy(start.state_dict())
    cfg = PostTrainConfig(steps=4, batch_size=16, lr=1e-2, eval_every=2)
    result = post_train(method, start, interactions, cfg, ranker=item_ranker(), device="cpu",
                        semantic_ids=semantic_ids)
    rows = result.history
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert all(math.isfinite(r["loss"]) for r in rows[1:])
    assert rows[0]["kl_to_reference"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl_to_reference"] > 0
    for r in rows:
        assert 0 <= r["valid_ndcg@10"] <= 1 and 0 <= r["valid_hallucination_rate"] <= 1
    if METHODS[method].needs_ranker:
        assert 0 <= rows[-1]["rollout_invalid_rate"] <= 1
    if method == "adagrpo":  # entropy of the level-0 codes, normalized by log V0
        assert 0 < rows[-1]["normalized_entropy"] <= 1
    for name, tensor in start.state_dict().items():  # the pretrained policy is untouched
        assert torch.equal(tensor, before[name]), name
    assert sum((p - before[k]).abs().sum().item() for k, p in result.policy.state_dict().items()) > 0


def test_valid_selection_uses_constrained_beams_and_reports_hallucination(interactions, semantic_ids):
    start = tiny_policy()
    cfg = PostTrainConfig(steps=4, batch_size=16, lr=1e-2, eval_every=2)
    result = post_train("sft", start, interactions, cfg, device="cpu", semantic_ids=semantic_ids)
    valid = eval_examples(build_user_sequences(interactions), "valid", MAX_LEN)
    trie = ItemTrie.from_semantic_ids(semantic_ids)
    ranked = evaluate_beams(result.policy, valid, semantic_ids, beam_size=10, trie=trie)
    assert ndcg(ranked.ranks, 10).mean() == pytest.approx(result.best_valid_ndcg10)
    free = evaluate_beams(start, valid, semantic_ids, beam_size=10)
    assert result.history[0]["valid_hallucination_rate"] == pytest.approx(free.hallucination_rate)
    assert free.hallucination_rate > 0  # the random start does emit tuples that are no item


def test_post_train_over_semantic_ids_is_seeded(interactions, semantic_ids):
    cfg = PostTrainConfig(steps=3, batch_size=16, lr=1e-2, eval_every=3, method_params={"G": 4})
    run = lambda: post_train("grpo", tiny_policy(), interactions, cfg, ranker=item_ranker(), device="cpu",  # noqa
                             semantic_ids=semantic_ids).history
    assert run() == run()


CLICKS = RewardSpec("click", center=0.0, scale=1.0, low=0.0, high=1.0)


@pytest.mark.parametrize("method, module", [("dpo", dpo), ("ppo", ppo), ("grpo", grpo), ("adagrpo", grpo)])
def test_generated_non_items_get_the_reward_specs_lower_bound(interactions, semantic_ids, monkeypatch, method, module):
    """Click rewards lie in [0, 1]: a tuple that is no item is scored 0 (never below the scale), not -1."""
    invalid_rewards = []

    def spy(ranker, contexts, items, valid=None, invalid_reward=None):
        rewards = ranker_rewards(ranker, contexts, items, valid, invalid_reward=invalid_reward)
        invalid_rewards.append(rewards[~valid])
        return rewards

    monkeypatch.setattr(module, "ranker_rewards", spy)
    cfg = PostTrainConfig(steps=2, batch_size=16, lr=1e-2, eval_every=2)
    result = post_train(method, tiny_policy(), interactions, cfg, ranker=item_ranker(), device="cpu",
                        semantic_ids=semantic_ids, reward_spec=CLICKS)
    scored = torch.cat(invalid_rewards)
    assert len(scored) > 0 and (scored == CLICKS.low).all()
    assert result.params["invalid_reward"] == CLICKS.low
    default = post_train(method, tiny_policy(), interactions, cfg, ranker=item_ranker(), device="cpu",
                         semantic_ids=semantic_ids)
    assert default.params["invalid_reward"] == RewardSpec().low == -1.0


def test_semantic_policy_needs_matching_semantic_ids(interactions, semantic_ids):
    cfg = PostTrainConfig(steps=1)
    with pytest.raises(ValueError, match="semantic_ids"):
        post_train("sft", tiny_policy(), interactions, cfg, device="cpu")
    other = SemanticIds(codes=semantic_ids.codes, level_sizes=(4, 4, 4), config=semantic_ids.config)
    with pytest.raises(ValueError, match=r"level sizes \(4, 4, 4\) differ from the policy's \(4, 4, 3\)"):
        post_train("sft", tiny_policy(), interactions, cfg, device="cpu", semantic_ids=other)
    with pytest.raises(ValueError, match="semantic_ids were given but the pretrained policy is a GenerativePolicy"):
        post_train("sft", atomic_policy(), interactions, cfg, device="cpu", semantic_ids=semantic_ids)
    too_many = interactions.assign(item_idx=interactions["item_idx"].where(interactions.index != 5, N_ITEMS + 1))
    with pytest.raises(ValueError, match=rf"'item_idx' holds item {N_ITEMS + 1}, but semantic_ids only cover"):
        post_train("sft", tiny_policy(), too_many, cfg, device="cpu", semantic_ids=semantic_ids)


# --- NLL over code tokens ------------------------------------------------------------------------------------

def test_item_nll_is_the_sum_of_its_code_nlls(semantic_ids):
    a, b, c, d = 3, 7, 11, 20
    T = MAX_LEN
    inputs, targets = torch.zeros(1, T, dtype=torch.long), torch.zeros(1, T, dtype=torch.long)
    inputs[0, -3:], targets[0, -3:] = torch.tensor([a, b, c]), torch.tensor([b, c, d])
    batch = TrainingWindows(users=torch.tensor([0]), inputs=inputs, targets=targets, rewards=torch.zeros(1, T))
    policy = tiny_policy().eval()
    nll, mask, _ = SemanticItems(semantic_ids).window_nll(policy, batch)
    assert nll.shape == (1, T) and mask[0].tolist() == [False] * (T - 3) + [True] * 3
    assert (nll[0, :T - 3] == 0).all()
    table = semantic_ids.token_table()  # [n_items + 1, 3] tokens of each item

    def by_hand(history: list[int], target: int) -> float:
        """-sum_l log p(code l | history tokens, codes < l) from the explicit unpadded sequence."""
        seq = torch.cat([table[history].flatten(), table[target]])[None]  # history items, then the target's codes
        with torch.no_grad():
            logits, _ = policy(seq)
        start = len(history) * 3 - 1  # the position that predicts the target's first code
        logp = torch.log_softmax(logits[0, start:start + 3], dim=-1)
        return -float(sum(logp[l, table[target, l]] for l in range(3)))

    assert nll[0, T - 1].item() == pytest.approx(by_hand([a, b, c], d), rel=1e-5)
    assert nll[0, T - 3].item() == pytest.approx(by_hand([a], b), rel=1e-5)


# --- tuple rollouts and invalid tuples -----------------------------------------------------------------------

def test_one_sampler_serves_semantic_policies(windows, semantic_ids):
    policy = tiny_policy().eval()
    history = select_contexts(windows, "last").history  # [N, T] item ids
    out = sample_rollouts(policy, history, 6, torch.Generator().manual_seed(0), semantic_ids=semantic_ids)
    N = len(history)
    assert out.tuples.shape == (N, 6, 3) and out.first_token_log_probs.shape == (N, SIZES[0])
    assert torch.equal(out.items, torch.as_tensor(semantic_ids.lookup(out.tuples)))
    assert torch.equal(out.valid, out.items > 0) and not out.valid.all()  # unconstrained: some are no item
    for row, tuples, items in zip(history.tolist(), out.tuples.tolist(), out.items.tolist()):
        assert len(set(map(tuple, tuples))) == 6  # distinct tuples
        assert not set(items) & set(row) - {0}  # no history item is generated
    real = torch.where(out.valid, out.items, 1)
    logp = sequence_logprob(policy, history, real, semantic_ids=semantic_ids)  # sum of the item's code log-probs
    torch.testing.assert_close(logp[out.valid], out.logp[out.valid], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pass semantic_ids="):
        sample_rollouts(policy, history, 6, torch.Generator())


def test_kv_cache_scorer_equals_the_teacher_forced_forward(windows, semantic_ids):
    """Without dropout, tuples are scored by encoding the history once: same log-probs and gradients."""
    policy = tiny_policy(seed=1).eval()
    history = select_contexts(windows, "last").history[:8]
    tokens, exclude = semantic_ids.items_to_tokens(history), history_exclusions(semantic_ids, history)
    tuples = sample_rollouts(policy, history, 5, torch.Generator().manual_seed(1), semantic_ids=semantic_ids).tuples
    cached, first = tuple_token_log_probs(policy, tokens, tuples, exclude)
    cached.sum().backward()
    g_cached = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()
    full = tuple_log_probs(policy, tokens, tuples, exclude=exclude)
    full.sum().backward()
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_cached, (p.grad for p in policy.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(first, first_code_log_probs(policy, tokens, exclude), rtol=1e-5, atol=1e-5)


def test_invalid_rollouts_get_the_invalid_reward(windows, semantic_ids):
    params = GRPOParams(group_size=8)
    ranker = item_ranker()
    ctx = semantic_ctx(params, semantic_ids, ranker=ranker)
    ctx.invalid_reward = -7.0  # post_train sets it to the reward spec's lower bound
    terms = grpo_terms(tiny_policy(), windows, ctx, params)
    valid, items = terms.rollouts.valid, terms.rollouts.items
    assert (~valid).any() and valid.any()
    assert (semantic_ids.lookup(terms.rollouts.tuples[~valid]) == 0).all()  # really no item
    assert (terms.rewards[~valid] == -7.0).all()
    expected, _ = ranker(terms.contexts.history, terms.contexts.history_rewards, items)
    torch.testing.assert_close(terms.rewards[valid], expected[valid])
    assert terms.telemetry["rollout_invalid_rate"] == pytest.approx((~valid).float().mean().item())
    assert terms.rollouts.token_logp.shape == (len(terms.contexts), 8, 3)


def test_grpo_gradient_is_token_averaged_at_ratio_one(windows, semantic_ids, monkeypatch):
    """One context, hand-set advantages, beta = 0: grad = -(1/G) sum_j (A_j / |o|) grad sum_t log pi(o_jt)."""
    G, n_codes = 4, len(SIZES)
    advantages = torch.tensor([[1.5, -0.5, 0.25, -1.0]])
    monkeypatch.setattr(grpo, "group_advantages", lambda rewards: advantages)
    one = TrainingWindows(*(t[:1] for t in (windows.users, windows.inputs, windows.targets, windows.rewards)))
    policy = tiny_policy()
    params = GRPOParams(group_size=G, beta=0.0)
    terms = grpo_terms(policy, one, semantic_ctx(params, semantic_ids), params)
    policy.zero_grad()
    terms.per_context_loss.mean().backward()
    got = [p.grad.clone() for p in policy.parameters()]

    tokens = semantic_ids.items_to_tokens(terms.contexts.history)
    exclude = [semantic_ids.codes[h[h != 0]] for h in terms.contexts.history.numpy()]  # the history's tuples
    policy.zero_grad()
    seq_logp = tuple_log_probs(policy, tokens, terms.rollouts.tuples, exclude=exclude).sum(dim=-1)  # [1, G]
    (-(advantages / n_codes) * seq_logp).mean().backward()
    for g, p in zip(got, policy.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)
    assert sum(g.abs().sum() for g in got) > 0


def test_dpo_over_tuples_starts_at_log_2(windows, semantic_ids):
    policy = tiny_policy()
    ctx = semantic_ctx(DPOParams(samples_per_context=6), semantic_ids, reference=copy.deepcopy(policy))
    loss, tele = dpo_loss(policy, windows, ctx)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert tele["kl"] == pytest.approx(0.0, abs=1e-6) and 0 < tele["rollout_invalid_rate"] < 1
