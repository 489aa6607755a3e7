"""The RL post-training methods (ips, dpo, ppo, grpo, nll_grpo) and their RL contexts, on tiny hand-made data."""
import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch

from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.post_training.contexts import context_log_probs, contexts_at, ranker_rewards, select_contexts
from recmodels.post_training.dpo import DPOParams, dpo_loss, preference_margins
from recmodels.post_training.grpo import GRPOParams, clipped_surrogate, group_advantages, grpo_loss, kl_k3
from recmodels.post_training.ips import IPSParams, ips_loss
from recmodels.post_training.loop import MethodContext, PostTrainConfig, post_train
from recmodels.post_training.ppo import PPOParams, ppo_loss
from recmodels.post_training.registry import MethodNotApplicable, get_method
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.decoding.rollouts import history_mask, sample_from_log_probs
from recmodels.data.sequences import TrainingWindows, build_user_sequences, training_windows
from tests.synthetic import cyclic_interactions

N_USERS, N_ITEMS, EVENTS, MAX_LEN = 40, 30, 10, 8


def make_interactions(seed: int = 0, propensity: bool = True) -> pd.DataFrame:
    """Users walk the catalog in cyclic order from a random start (learnable next item); random rewards."""
    df = cyclic_interactions(N_USERS, N_ITEMS, EVENTS, (-1.0, 0.0, 1.0), seed, propensity=True)
    return df if propensity else df.drop(columns="propensity")


def tiny_policy(seed: int = 0, dropout: float = 0.0) -> GenerativePolicy:
    torch.manual_seed(seed)
    return GenerativePolicy(PolicyConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN, d_model=16, n_layers=1,
                                         n_heads=1, dropout=dropout))


def item_ranker(scores=None) -> RewardRanker:
    """A tiny RewardRanker whose score is (up to a per-history constant) its item bias: R(x, i) = scores[i]."""
    torch.manual_seed(0)
    ranker = RewardRanker(RankerConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN, d_model=2, dropout=0.0))
    scores = torch.linspace(-1, 1, N_ITEMS + 1) if scores is None else scores
    with torch.no_grad():
        ranker.item_bias.weight[:, 0] = scores
        ranker.cand_emb.weight.zero_()
    return ranker.eval()


def make_ctx(params, ranker=None, reference=None, seed: int = 0) -> MethodContext:
    return MethodContext(params=params, reference=(reference or tiny_policy()).eval(),
                         ranker=ranker if ranker is not None else item_ranker(), state={},
                         device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))


def grads(loss_fn, policy, batch, ctx) -> tuple[torch.Tensor, dict, torch.Tensor]:
    policy.zero_grad()
    loss, tele = loss_fn(policy, batch, ctx)
    loss.backward()
    g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in policy.parameters()])
    assert torch.isfinite(g).all()
    return loss, tele, g


@pytest.fixture(scope="module")
def interactions():
    return make_interactions()


@pytest.fixture(scope="module")
def windows(interactions):
    return training_windows(build_user_sequences(interactions), max_len=MAX_LEN)


# --- RL contexts -------------------------------------------------------------------------------------------

def one_user_windows(n_train: int, max_len: int, stride=None) -> TrainingWindows:
    """One user: train items 1..n_train with reward i / 10 for item i, then a valid and a test event."""
    n = n_train + 2
    df = pd.DataFrame({"user_idx": np.zeros(n, np.int32), "item_idx": np.arange(1, n + 1, dtype=np.int32),
                       "timestamp": np.arange(n, dtype=np.int64), "reward": np.arange(1, n + 1, dtype=np.float32) / 10,
                       "split": ["train"] * n_train + ["valid", "test"]})
    return training_windows(build_user_sequences(df), max_len=max_len, stride=stride)


def test_context_history_and_rewards_are_aligned():
    w = one_user_windows(5, max_len=4)  # inputs [1,2,3,4], targets [2,3,4,5], rewards [.2,.3,.4,.5]
    c = select_contexts(w, "last")
    assert c.history.tolist() == [[1, 2, 3, 4]] and c.truth.tolist() == [5]
    # the reward of input item j is rewards[j-1]; item 1 (the window's first input) has none in the window
    torch.testing.assert_close(c.history_rewards, torch.tensor([[0.0, 0.2, 0.3, 0.4]]))
    torch.testing.assert_close(c.truth_reward, torch.tensor([0.5]))
    c = contexts_at(w, torch.tensor([0]), torch.tensor([1]))  # predict item 3 after [1, 2]
    assert c.history.tolist() == [[0, 0, 1, 2]] and c.truth.tolist() == [3]
    torch.testing.assert_close(c.history_rewards, torch.tensor([[0.0, 0.0, 0.0, 0.2]]))
    with pytest.raises(ValueError, match="real target"):
        contexts_at(one_user_windows(2, max_len=4), torch.tensor([0]), torch.tensor([0]))


def test_last_context_skips_covered_targets_and_random_picks_real_ones():
    w = one_user_windows(8, max_len=4, stride=2)  # overlapping windows: covered targets are zeroed
    c = select_contexts(w, "last")
    assert (w.targets[c.rows, c.positions] != 0).all()
    assert not c.at_window_end  # some window's last real target is not at T-1
    for row, pos in zip(c.rows.tolist(), c.positions.tolist()):
        assert (w.targets[row, pos + 1:] == 0).all()
        assert c.history[c.rows.tolist().index(row), -1] == w.inputs[row, pos]
    g = torch.Generator().manual_seed(0)
    picked = torch.cat([select_contexts(w, "random", g).positions for _ in range(30)])
    assert (w.targets[c.rows.repeat(30), picked] != 0).all() and len(set(picked.tolist())) > 1


def test_every_context_is_each_real_target_once_with_its_own_history():
    w = one_user_windows(8, max_len=4, stride=2)
    every = select_contexts(w, "every")
    real = w.targets != 0
    assert len(every) == int(real.sum())  # as many contexts as an NLL step has targets
    assert sorted(zip(every.rows.tolist(), every.positions.tolist())) == sorted(map(tuple, real.nonzero().tolist()))
    assert every.truth.tolist() == w.targets[real].tolist()
    for i, (row, pos) in enumerate(zip(every.rows.tolist(), every.positions.tolist())):
        one = contexts_at(w, torch.tensor([row]), torch.tensor([pos]))
        assert torch.equal(every.history[i], one.history[0])
        assert torch.equal(every.history_rewards[i], one.history_rewards[0])
    last = select_contexts(w, "last")  # the window-end contexts are among them
    assert set(zip(last.rows.tolist(), last.positions.tolist())) <= set(zip(every.rows.tolist(),
                                                                            every.positions.tolist()))


def test_window_forward_serves_contexts_at_the_window_end(windows):
    policy = tiny_policy()
    w = one_user_windows(8, max_len=4, stride=2)
    policy4 = GenerativePolicy(PolicyConfig(vocab_size=N_ITEMS + 1, max_len=4, d_model=16, n_layers=1, n_heads=1,
                                            dropout=0.0))
    for pol, batch in ((policy, windows), (policy4, w)):
        c = select_contexts(batch, "last")
        mask = history_mask(c.history, N_ITEMS + 1)
        logits, _ = pol(batch.inputs)
        torch.testing.assert_close(context_log_probs(pol, c, mask, window_logits=logits),
                                   context_log_probs(pol, c, mask))


def test_ranker_rewards_read_the_ranker_and_floor_invalid_items(windows):
    c = select_contexts(windows, "last")
    items = torch.tensor([[3, 7]]).expand(len(c), 2)
    ranker = item_ranker()
    r = ranker_rewards(ranker, c, items, valid=torch.tensor([[True, False]]).expand(len(c), 2), invalid_reward=-5.0)
    expected, _ = ranker(c.history, c.history_rewards, items)
    torch.testing.assert_close(r[:, 0], expected[:, 0])
    assert (r[:, 1] == -5.0).all()
    with pytest.raises(ValueError, match="needs the ranker"):
        ranker_rewards(None, c, items)


# --- GRPO pieces ---------------------------------------------------------------------------------------------

def test_group_advantages_are_standardized_within_each_group():
    rewards = torch.randn(16, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    a = group_advantages(rewards)
    torch.testing.assert_close(a.mean(dim=1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.std(dim=1, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert torch.equal(group_advantages(torch.full((2, 8), 0.7)), torch.zeros(2, 8))
    torch.testing.assert_close(group_advantages(torch.tensor([[0.0, 2.0]])), torch.tensor([[-1.0, 1.0]]) / 1.0001)


@pytest.mark.parametrize("advantage, ratio, zero_grad", [
    (1.0, 1.5, True),     # positive advantage, ratio above 1+eps: clipped, no push further up
    (-1.0, 0.5, True),    # negative advantage, ratio below 1-eps: clipped, no push further down
    (1.0, 0.5, False),    # positive advantage, ratio below 1-eps: still pulled up
    (-1.0, 1.5, False),   # negative advantage, ratio above 1+eps: still pushed down
    (1.0, 1.1, False), (-1.0, 0.9, False), (1.0, 1.0, False),  # inside the clip range
])
def test_clipped_surrogate_gradient(advantage, ratio, zero_grad):
    logp = torch.tensor([math.log(0.3)], requires_grad=True)
    logp_old = logp.detach() - math.log(ratio)
    clipped_surrogate(logp, logp_old, torch.tensor([advantage]), eps=0.2).sum().backward()
    if zero_grad:
        assert logp.grad.item() == 0.0
    else:
        assert logp.grad.item() == pytest.approx(ratio * advantage)  # d(rho A)/d logp


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([0.2, 0.5]))
    assert torch.equal(kl_k3(logp, logp), torch.zeros(2))
    assert (kl_k3(logp, torch.log(torch.tensor([0.4, 0.1]))) > 0).all()


def test_equal_rewards_give_zero_policy_gradient(windows):
    policy = tiny_policy()
    const = make_ctx(GRPOParams(beta=0.0), ranker=item_ranker(torch.full((N_ITEMS + 1,), 0.3)))
    _, tele, g = grads(grpo_loss, policy, windows, const)
    assert g.abs().max() == 0.0 and tele["group_reward_std"] == 0.0
    _, _, g = grads(grpo_loss, policy, windows, make_ctx(GRPOParams(beta=0.0)))  # the item ranker separates them
    assert g.abs().max() > 0


def test_grpo_at_initialization_has_no_kl(windows):
    policy = tiny_policy()
    loss, tele = grpo_loss(policy, windows, make_ctx(GRPOParams(), reference=copy.deepcopy(policy)))
    assert tele["kl"] == pytest.approx(0.0, abs=1e-6) and tele["kl_k3"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)  # ratio 1: sum of a group's advantages is 0


# --- DPO and PPO ---------------------------------------------------------------------------------------------

def test_preference_margins_by_hand():
    log_ratio = torch.tensor([[0.5, -0.5, 1.0]])
    rewards = torch.tensor([[1.0, 0.0, 1.0]])  # pairs (0,1): 0 wins, (0,2): tie, (1,2): 2 wins
    margins, preferred = preference_margins(log_ratio, rewards, beta=0.1)
    torch.testing.assert_close(margins, torch.tensor([[0.1, 0.0, 0.15]]))
    assert preferred.tolist() == [[True, False, True]]


def test_dpo_loss_at_initialization_is_log_2(windows):
    policy = tiny_policy()
    loss, tele = dpo_loss(policy, windows, make_ctx(DPOParams(), reference=copy.deepcopy(policy)))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert tele["kl"] == pytest.approx(0.0, abs=1e-6)


def test_ppo_kl_penalty_is_zero_at_initialization_and_rollouts_are_reused(windows):
    policy = tiny_policy()
    ctx = make_ctx(PPOParams(inner_epochs=2), reference=copy.deepcopy(policy))
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    batches = [TrainingWindows(*(t[s:s + 12] for t in (windows.users, windows.inputs, windows.targets,
                                                        windows.rewards))) for s in (0, 12, 24)]
    fresh, buffers = [], []
    for step, batch in enumerate(batches):
        loss, tele = ppo_loss(policy, batch, ctx)
        if step == 0:
            assert tele["kl_penalty"] == pytest.approx(0.0, abs=1e-6)
            assert tele["shaped_reward"] == pytest.approx(tele["rollout_reward"], abs=1e-6)
            assert tele["clip_fraction"] == 0.0
        if step == 1:
            assert tele["clip_fraction"] > 0  # the policy moved since the rollouts were drawn
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        fresh.append(tele["fresh_rollouts"])
        buffers.append(ctx.memory["ppo_rollouts"])
    assert fresh == [1.0, 0.0, 1.0]  # inner epoch 2 reuses step 0's rollouts; step 2 draws new ones
    assert buffers[0] is buffers[1] is not buffers[2]
    assert torch.equal(buffers[1].contexts.history, select_contexts(batches[0], "last").history)
    assert torch.equal(buffers[2].contexts.history, select_contexts(batches[2], "last").history)


# --- IPS -----------------------------------------------------------------------------------------------------

def test_training_windows_carry_propensities_aligned_with_targets(interactions):
    w = training_windows(build_user_sequences(interactions), max_len=MAX_LEN)
    user0 = interactions[(interactions.user_idx == 0) & (interactions.split == "train")]
    assert w.propensities is not None and w.propensities.shape == w.targets.shape
    row = int(torch.nonzero(w.users == 0)[0])
    real = w.targets[row] != 0
    torch.testing.assert_close(w.propensities[row][real], torch.tensor(user0.propensity.to_numpy()[1:], dtype=torch.float32))
    assert (w.propensities[row][~real] == 1.0).all()
    assert training_windows(build_user_sequences(interactions.drop(columns="propensity")), MAX_LEN).propensities is None


def test_ips_loss_without_negative_weights_by_hand():
    batch = TrainingWindows(users=torch.tensor([0]), inputs=torch.tensor([[0, 1, 2, 3]]),
                            targets=torch.tensor([[0, 2, 3, 4]]), rewards=torch.tensor([[0.0, 1.0, -1.0, 0.5]]),
                            propensities=torch.tensor([[1.0, 0.5, 0.2, 0.01]]))
    policy = GenerativePolicy(PolicyConfig(vocab_size=5, max_len=4, d_model=8, n_layers=1, n_heads=1, dropout=0.0))
    loss, tele = ips_loss(policy, batch, make_ctx(IPSParams(clip=10.0, signed=False), reference=policy))
    logits, _ = policy(batch.inputs)
    nll = -torch.log_softmax(logits[0], -1)[[1, 2, 3], [2, 3, 4]]
    w = torch.tensor([2.0, 0.0, 10.0])  # 1/0.5, negative reward -> 0, 0.5/0.01 = 50 clipped at 10
    assert loss.item() == pytest.approx(float((w * nll.detach()).sum() / w.sum()), rel=1e-5)
    assert tele["ess"] == pytest.approx(144 / 104 / 3, rel=1e-5) and tele["clipped_rate"] == pytest.approx(1 / 3)


def test_signed_ips_keeps_disliked_items_as_negative_weights_clipped_both_ways():
    batch = TrainingWindows(users=torch.tensor([0]), inputs=torch.tensor([[0, 1, 2, 3]]),
                            targets=torch.tensor([[0, 2, 3, 4]]), rewards=torch.tensor([[0.0, 1.0, -1.0, 0.5]]),
                            propensities=torch.tensor([[1.0, 0.5, 0.02, 0.01]]))
    # no seen bias: that one shared logit lowers every NLL of the batch at once (the liked targets outweigh the
    # disliked one), which would hide the per-item direction this test is about; a small step, so that the
    # first-order direction shows (tied embeddings couple the items)
    torch.manual_seed(0)
    policy = GenerativePolicy(PolicyConfig(vocab_size=5, max_len=4, d_model=8, n_layers=1, n_heads=1, dropout=0.0,
                                           seen_bias=False))
    loss, tele = ips_loss(policy, batch, make_ctx(IPSParams(clip=10.0), reference=policy))  # signed: the default
    logits, _ = policy(batch.inputs)
    nll = -torch.log_softmax(logits[0], -1)[[1, 2, 3], [2, 3, 4]]
    w = torch.tensor([2.0, -10.0, 10.0])  # 1/0.5; -1/0.02 = -50 clipped at -10; 0.5/0.01 = 50 clipped at 10
    assert loss.item() == pytest.approx(float((w * nll.detach()).sum() / w.abs().sum()), rel=1e-5)
    assert tele["negative_weight_share"] == pytest.approx(1 / 3) and tele["clipped_rate"] == pytest.approx(2 / 3)
    loss.backward()  # minimizing it lowers the disliked item's log-probability
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.01 * p.grad
        after = -torch.log_softmax(policy(batch.inputs)[0][0], -1)[[1, 2, 3], [2, 3, 4]]
    assert after[1] > nll[1].detach()


def test_ips_without_propensities_is_not_applicable(interactions):
    with pytest.raises(MethodNotApplicable, match="^skipped: the logs carry no propensities$") as err:
        post_train("ips", tiny_policy(), interactions.drop(columns="propensity"), PostTrainConfig(steps=1),
                   device="cpu")
    assert isinstance(err.value, ValueError)


# --- every method through the shared loop ----------------------------------------------------------------

@pytest.mark.parametrize("method, params, improves", [
    ("ips", {"c": 20.0}, "loss"),
    ("dpo", {}, "loss"),
    ("ppo", {}, "rollout_reward"),
    ("grpo", {}, "rollout_reward"),
    ("nll_grpo", {"alpha": 0.3}, "loss"),
    ("grpo", {"contexts": "random", "G": 4}, "rollout_reward"),
    ("grpo", {"contexts": "every", "G": 4}, "rollout_reward"),
])
def test_each_rl_method_improves_its_objective_and_moves_weights(interactions, method, params, improves):
    start = tiny_policy(dropout=0.1)
    before = copy.deepcopy(start.state_dict())
    cfg = PostTrainConfig(steps=30, batch_size=16, lr=1e-2, eval_every=10, method_params=params)
    result = post_train(method, start, interactions, cfg, ranker=item_ranker(), device="cpu")
    rows = result.history
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    if improves == "loss":
        assert rows[-1]["loss"] < rows[1]["loss"]
    else:
        assert rows[-1][improves] > rows[1][improves] + 0.05
    if method != "ips":
        assert {"kl", "rollout_reward"} <= set(rows[-1]) and rows[-1]["kl"] > 0
    if method == "dpo":
        assert rows[1]["loss"] < math.log(2) and rows[-1]["pair_accuracy"] > 0.5
    for name, tensor in start.state_dict().items():  # the pretrained policy is untouched
        assert torch.equal(tensor, before[name]), name
    assert sum((p - before[k]).abs().sum().item() for k, p in result.policy.state_dict().items()) > 0


def test_rollout_methods_need_a_ranker_and_check_their_knobs(interactions):
    with pytest.raises(ValueError, match="'grpo' takes its rewards from the ranker"):
        post_train("grpo", tiny_policy(), interactions, PostTrainConfig(steps=1), device="cpu")
    with pytest.raises(ValueError, match=r"parameter 'G' of post-training method 'grpo': Input should be greater "
                                         r"than or equal to 2, got 1"):
        get_method("grpo").parse_params({"G": 1})
    with pytest.raises(ValueError, match=r"parameter 'contexts' of post-training method 'ppo': Input should be "
                                         r"'last', 'random' or 'every', got 'first'"):
        get_method("ppo").parse_params({"contexts": "first"})
    with pytest.raises(ValueError, match=r"parameter 'samples_per_context' of post-training method 'dpo'"):
        get_method("dpo").parse_params({"samples_per_context": 1})
    assert get_method("grpo").parse_params({"G": 4, "epsilon": 0.1}).group_size == 4


# --- signal per step and rollout sampling ---------------------------------------------------------------------

@pytest.mark.parametrize("method, targets, contexts, rollouts", [
    ("sft", "M", 0, 0), ("exp_rw_sft", "M", 0, 0), ("ips", "M", 0, 0),
    ("dpo", 0, "N", "N*4"), ("grpo", 0, "N", "N*8"), ("nll_grpo", "M", "N", "N*8"), ("adagrpo", "M", "N", "N*8")])
def test_each_method_reports_the_signal_its_step_learned_from(windows, method, targets, contexts, rollouts):
    """Logged targets in an NLL term (M real targets), RL contexts (N: one per window with a target) and the
    rollouts scored for them (dpo: 4 reference samples per context, grpo's family: G = 8)."""
    batch = TrainingWindows(*(t[:12] for t in (windows.users, windows.inputs, windows.targets, windows.rewards,
                                               windows.propensities)))
    sizes = {"M": int((batch.targets != 0).sum()), "N": int((batch.targets != 0).any(dim=1).sum())}
    sizes["N*4"], sizes["N*8"] = 4 * sizes["N"], 8 * sizes["N"]
    expected = {k: float(sizes.get(v, v)) for k, v in zip(("targets", "contexts", "rollouts"),
                                                          (targets, contexts, rollouts))}
    spec = get_method(method)
    _, tele = spec.loss(tiny_policy(), batch, make_ctx(spec.parse_params({})))
    assert {k: tele[k] for k in expected} == expected


def test_ppo_counts_new_contexts_only_on_the_steps_that_draw_them(windows):
    policy, ctx = tiny_policy(), make_ctx(PPOParams(inner_epochs=2))
    batch = TrainingWindows(*(t[:12] for t in (windows.users, windows.inputs, windows.targets, windows.rewards)))
    n = int((batch.targets != 0).any(dim=1).sum())
    seen = [ppo_loss(policy, batch, ctx)[1] for _ in range(3)]
    assert [t["contexts"] for t in seen] == [n, 0, n] and [t["rollouts"] for t in seen] == [4 * n, 0, 4 * n]


@pytest.mark.parametrize("sampling", ["iid", "distinct"])
def test_grpo_groups_are_iid_draws_by_default_and_distinct_items_on_request(windows, sampling):
    """A distribution with ~all its mass on one item: i.i.d. groups repeat it, distinct groups hold it once."""
    assert GRPOParams().rollouts == "iid" and PPOParams().rollouts == "iid"
    params = GRPOParams(rollouts=sampling)
    batch = TrainingWindows(*(t[:12] for t in (windows.users, windows.inputs, windows.targets, windows.rewards)))
    contexts = select_contexts(batch, "last")
    mask = history_mask(contexts.history, N_ITEMS + 1)
    favourite = (~mask).float().argmax(dim=1)  # [N] the first item outside each history
    logits = torch.full(mask.shape, -30.0)
    logits[torch.arange(len(contexts)), favourite] = 0.0
    log_probs = torch.log_softmax(logits.masked_fill(mask, float("-inf")), dim=1)
    drawn = sample_from_log_probs(log_probs, 8, make_ctx(params).generator,
                                  distinct=params.rollouts == "distinct").items
    copies = (drawn == favourite[:, None]).sum(dim=1)
    assert (copies == (8 if sampling == "iid" else 1)).all()
    assert not mask.gather(1, drawn).any()  # never an item of the history
