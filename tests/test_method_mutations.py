"""Behaviour the post-training losses must have, stated so that a one-line slip fails a test.

Each test names the slip it catches: a flipped DPO log-ratio, a flipped or detached GRPO k3 term, a
flipped PPO KL penalty, removed gradient clipping. The checks are on what training does (the policy's
expected ranker score, its KL to the reference), not on the loss value, which can fall either way.
"""
import copy

import torch

from recmodels.decoding.rollouts import history_mask, masked_log_probs
from recmodels.post_training.contexts import select_contexts
from recmodels.post_training.dpo import DPOParams, dpo_loss
from recmodels.post_training.grpo import GRPOParams, grpo_loss
from recmodels.post_training.loop import PostTrainConfig, post_train
from recmodels.post_training.ppo import PPOParams, _fresh_rollouts, ppo_loss
from recmodels.data.sequences import build_user_sequences, training_windows
from tests.test_rl_methods import MAX_LEN, N_ITEMS, item_ranker, make_ctx, make_interactions, tiny_policy

STEPS, LR = 25, 1e-2


def window_batches(seed: int = 0, batch_size: int = 16):
    windows = training_windows(build_user_sequences(make_interactions()), max_len=MAX_LEN)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    while True:
        for s in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[s:s + batch_size]
            yield type(windows)(**{k: None if v is None else v[idx] for k, v in vars(windows).items()})


def train(loss_fn, policy, ctx, steps: int = STEPS) -> None:
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    batches = window_batches()
    for step in range(steps):
        ctx.step = step
        loss, _ = loss_fn(policy, next(batches), ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def eval_histories() -> torch.Tensor:
    windows = training_windows(build_user_sequences(make_interactions(seed=1)), max_len=MAX_LEN)
    return select_contexts(windows, "last").history


@torch.no_grad()
def next_item_log_probs(policy, history: torch.Tensor) -> torch.Tensor:
    """[N, V] masked next-item log-probs (history and padding excluded), as the methods sample from."""
    policy.eval()
    return masked_log_probs(policy.next_item_logits(history), history_mask(history, policy.cfg.vocab_size))


def kl(policy, reference, history) -> float:
    """Exact mean KL(pi || pi_ref) over the catalog after each history."""
    logp, logq = next_item_log_probs(policy, history), next_item_log_probs(reference, history)
    p = logp.exp()
    return float(torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(dim=1).mean())


def expected_score(policy, scores: torch.Tensor, history) -> float:
    """E_{y ~ pi(.|x)}[R(y)] of an item-only ranker R(y) = scores[y], averaged over the histories."""
    return float((next_item_log_probs(policy, history).exp() * scores[None, :]).sum(dim=1).mean())


def test_dpo_raises_the_expected_ranker_score_above_the_reference():
    """Catches a flipped log-ratio: the policy would then learn the opposite preference."""
    scores = torch.linspace(-1, 1, N_ITEMS + 1)
    reference = tiny_policy(0)
    policy = copy.deepcopy(reference)
    ctx = make_ctx(DPOParams(beta=0.5, samples_per_context=4), ranker=item_ranker(scores), reference=reference)
    history = eval_histories()
    before = expected_score(reference, scores, history)
    train(dpo_loss, policy, ctx)
    assert expected_score(policy, scores, history) > before + 0.05


def zero_advantage_ranker():
    """Every item scores the same: group advantages are exactly 0, only the KL terms move the policy."""
    return item_ranker(torch.zeros(N_ITEMS + 1))


def test_grpo_kl_term_alone_pulls_the_policy_to_the_reference():
    """Catches a flipped k3 term (KL would grow) and a detached one (nothing would move)."""
    reference, policy = tiny_policy(0), tiny_policy(1)  # two inits: KL(pi || pi_ref) > 0 at the start
    history = eval_histories()
    start = kl(policy, reference, history)
    ctx = make_ctx(GRPOParams(group_size=4, beta=1.0), ranker=zero_advantage_ranker(), reference=reference)
    train(grpo_loss, policy, ctx)
    assert kl(policy, reference, history) < 0.7 * start


def test_ppo_kl_penalty_alone_pulls_the_policy_to_the_reference():
    """Catches a flipped KL penalty in PPO's shaped reward."""
    reference, policy = tiny_policy(0), tiny_policy(1)
    history = eval_histories()
    start = kl(policy, reference, history)
    ctx = make_ctx(PPOParams(beta=1.0, samples_per_context=4, inner_epochs=1), ranker=zero_advantage_ranker(),
                   reference=reference)
    train(ppo_loss, policy, ctx, steps=2 * STEPS)
    assert kl(policy, reference, history) < 0.8 * start


def test_ppo_shaped_reward_by_hand():
    """reward = R(x, y) - beta (log pi_old(y|x) - log pi_ref(y|x)); advantage = reward - its batch mean."""
    scores = torch.linspace(-1, 1, N_ITEMS + 1)
    reference, policy = tiny_policy(0), tiny_policy(1)
    beta = 0.3
    ctx = make_ctx(PPOParams(beta=beta, samples_per_context=3), ranker=item_ranker(scores), reference=reference)
    buffer, *_ = _fresh_rollouts(policy, next(window_batches()), ctx, ctx.params)
    items, history = buffer.rollouts.items, buffer.contexts.history
    logp_old = next_item_log_probs(policy, history).gather(1, items)
    logp_ref = next_item_log_probs(reference, history).gather(1, items)
    ranker_score = scores[items] + ctx.ranker.offset_scale * ctx.ranker.user_features(
        history, buffer.contexts.history_rewards.float())[0][:, None]  # item bias + the ranker's user offset
    reward = ranker_score - beta * (logp_old - logp_ref)
    torch.testing.assert_close(buffer.logp_old, logp_old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(buffer.advantages, reward - reward.mean(), atol=1e-5, rtol=1e-5)


def test_gradient_clipping_bounds_every_update(monkeypatch):
    """Catches removed clipping: the global gradient norm reaching the optimizer never exceeds grad_clip."""
    norms = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for clip in (1e-3, None):
        norms.clear()
        post_train("sft", tiny_policy(0), make_interactions(), PostTrainConfig(steps=4, eval_every=2, batch_size=8,
                                                                               max_len=MAX_LEN, grad_clip=clip))
        assert len(norms) == 4
        if clip is not None:
            assert max(norms) <= clip * (1 + 1e-4)
        else:
            assert max(norms) > 1e-2  # unclipped gradients are far larger: the bound above is not vacuous
