"""RL contexts cut from training windows, and the ranker rewards of items generated for them.

Which positions are contexts. Position t of a window holds the input item `inputs[t]` and the
logged next item `targets[t]` (0 = nothing to predict). A context is a real target position t;
its history x is the window prefix `inputs[:t+1]`, right-aligned and left-padded to the window
length T, exactly like an evaluation history, and its ground truth a is `targets[t]`.
- `"last"` (default): one context per window, its last real target position. With the default
  stride that is position T-1, so x is the whole window and the policy's logits for it are the
  last row of the window's own forward pass (methods that also compute the NLL reuse them).
- `"random"`: one real target position per window drawn uniformly (seeded generator).
- `"every"`: every real target position of every window, so an RL step sees as many contexts as an NLL
  step sees targets (~B·T instead of B). Each context off the window end gets its own policy
  forward pass (its history is right-aligned, unlike the window's rows), and the ranker scores
  rollouts for all of them: a step costs about T times a `"last"` step.
Windows without a real target give no context.

History rewards (the ranker reads them). Window rewards are aligned with targets: `rewards[t]` is
the reward of `targets[t]`, which is the input item at t+1. So the reward of the input item at
position j is `rewards[j-1]`; the window's first real input has no reward in the window (it
was the target of an earlier window or is the user's first event) and gets 0, neutral on the
(rating - 3) / 2 scale.

Rollouts are generated from, and log-probs computed under, the masked next-item distribution of
`recmodels.decoding.rollouts` (padding and the context's history items at -inf; with semantic IDs the
history items' code tuples are excluded): the items older than the window are not in x and are
not masked. How x becomes tokens is the tokenization's business (`recmodels/tokenization/`); it may memoize
that encoding in `RLContexts.encodings`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from recmodels.decoding.rollouts import masked_log_probs
from recmodels.data.sequences import TrainingWindows
from recmodels.runtime import eval_mode

ContextChoice = Literal["last", "random", "every"]  # the `contexts` knob of the RL methods
CONTEXT_CHOICES = get_args(ContextChoice)
# the `rollouts` knob of grpo (and nll_grpo, adagrpo) and ppo: a context's group drawn i.i.d. from pi (with
# replacement: an unbiased sample, the default) or as distinct items (without replacement: the most likely
# item counts at most once instead of about G·pi times, which tilts the group, and the gradient, to the tail)
RolloutSampling = Literal["iid", "distinct"]

# What a step learned from, in every method's telemetry (the report's "Signal per step"): logged targets in an
# NLL term, RL contexts newly drawn for the step, and rollouts (generated items scored by the ranker) for them.
SIGNAL_KEYS = ("targets", "contexts", "rollouts")


def signal_seen(targets: int = 0, contexts: int = 0, rollouts: int = 0) -> dict[str, float]:
    """The step's signal as telemetry (see SIGNAL_KEYS)."""
    return dict(zip(SIGNAL_KEYS, (float(targets), float(contexts), float(rollouts))))


@dataclass
class RLContexts:
    rows: torch.Tensor  # [N] window row of each context in the batch
    positions: torch.Tensor  # [N] target position t in the window
    history: torch.Tensor  # [N, T] inputs[:t+1], right-aligned, left-padded with 0
    history_rewards: torch.Tensor  # [N, T] observed reward of each history item (0 for padding / unknown)
    truth: torch.Tensor  # [N] logged next item a = targets[t]
    truth_reward: torch.Tensor  # [N] its observed reward
    encodings: dict = field(default_factory=dict, repr=False, compare=False)  # a tokenization's memo of x

    def __len__(self) -> int:
        return self.truth.shape[0]

    @property
    def at_window_end(self) -> bool:
        """Every context is the whole window (t = T-1): its logits are the window forward's last row."""
        return bool((self.positions == self.history.shape[1] - 1).all())


def select_contexts(batch: TrainingWindows, how: str = "last", generator: torch.Generator | None = None) -> RLContexts:
    """Pick the contexts of a batch (one per window, or every real position: see the module docstring) and cut
    their histories and history rewards."""
    if how not in CONTEXT_CHOICES:
        raise ValueError(f"contexts must be one of {CONTEXT_CHOICES}, got {how!r}")
    real = batch.targets != 0  # [B, T]
    B, T = real.shape
    if not bool(real.any()):
        raise ValueError("the batch has no window with a real target: no RL context to train on")
    if how == "every":
        rows, positions = torch.nonzero(real, as_tuple=True)  # [N], [N]: window by window, in position order
        return contexts_at(batch, rows, positions)
    rows = torch.nonzero(real.any(dim=1)).squeeze(1)  # [N]
    real = real[rows]
    if how == "last":
        positions = torch.where(real, torch.arange(T, device=real.device), -1).max(dim=1).values  # [N]
    else:
        u = torch.rand(real.shape, generator=generator, device=real.device)
        positions = torch.where(real, u, -1.0).argmax(dim=1)
    return contexts_at(batch, rows, positions)


def contexts_at(batch: TrainingWindows, rows: torch.Tensor, positions: torch.Tensor) -> RLContexts:
    """The contexts at window `rows` [N], target `positions` [N]: right-aligned history and its rewards."""
    T = batch.inputs.shape[1]
    if bool((batch.targets[rows, positions] == 0).any()):
        raise ValueError("an RL context must sit at a real target position (targets != 0)")
    idx = torch.arange(T, device=batch.inputs.device)
    inputs, rewards = batch.inputs[rows], batch.rewards[rows]
    src = idx[None, :] - (T - 1 - positions)[:, None]  # [N, T] window position shown at each history slot
    inside = src >= 0
    history = torch.where(inside, inputs.gather(1, src.clamp(min=0)), 0)
    has_reward = (src >= 1) & (history != 0)
    history_rewards = torch.where(has_reward, rewards.gather(1, (src - 1).clamp(min=0)), 0.0)
    return RLContexts(rows=rows, positions=positions, history=history, history_rewards=history_rewards.float(),
                      truth=batch.targets[rows, positions], truth_reward=rewards.gather(1, positions[:, None]).squeeze(1))


def context_log_probs(policy, contexts: RLContexts, mask: torch.Tensor,
                      window_logits: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V] masked next-item log-probs of the policy for each context (grad flows).

    With `window_logits` [B, T, V] (the batch windows' own forward pass), contexts at the window
    end read its last row instead of running the policy again; the others get their own forward.
    """
    T = contexts.history.shape[1]
    if window_logits is None:
        logits = policy.next_item_logits(contexts.history)
    else:
        logits = window_logits[contexts.rows, -1]  # [N, V]
        elsewhere = torch.nonzero(contexts.positions != T - 1).squeeze(1)
        if len(elsewhere):
            logits = logits.index_put((elsewhere,), policy.next_item_logits(contexts.history[elsewhere]))
    return masked_log_probs(logits, mask)


@torch.no_grad()
def ranker_rewards(ranker, contexts: RLContexts, items: torch.Tensor, valid: torch.Tensor | None = None,
                   invalid_reward: float | None = None) -> torch.Tensor:
    """R(x, y) [N, K] of the frozen ranker for items [N, K]; items that are no real item (`valid` False) get
    `invalid_reward`, which the methods take from `MethodContext.invalid_reward` (the reward spec's lower bound)."""
    if ranker is None:
        raise ValueError("this post-training method needs the ranker reward model: pass ranker= to post_train")
    if valid is not None and invalid_reward is None:
        raise ValueError("ranker_rewards: items marked invalid need an invalid_reward (the reward spec's lower bound)")
    with eval_mode(ranker, no_grad=False):  # frozen: no parameter needs a gradient, none is recorded
        r_hat, _ = ranker(contexts.history, contexts.history_rewards, items)
    r_hat = r_hat.float()
    if valid is not None:
        r_hat = torch.where(valid, r_hat, torch.full_like(r_hat, invalid_reward))
    return r_hat


@contextlib.contextmanager
def dropout(policy, enabled: bool):
    """Run the policy's forward passes with dropout on (its training mode) or off (eval mode, like pi_ref).

    Gradients flow either way; the module's mode is restored afterwards.
    """
    was_training = policy.training
    policy.train(was_training and enabled)
    try:
        yield
    finally:
        policy.train(was_training)
