"""Distillation in pretraining: the policy also learns a trained teacher's next-item distributions.

A teacher is a trained atomic policy (`GenerativePolicy`) over the same catalog. At every target item of a
train window it gives a distribution over the catalog (softmax of its logits / temperature, padding 0 out);
the tokenization turns it into targets for the tokens the student predicts there
(`ItemTokenization.distillation_targets`: atomic, the distribution itself; semantic IDs, at each code level
the teacher's probability of each code among the items that share the target's codes before it). The loss is

    (1 - w) * NLL(true tokens) + w * cross-entropy(teacher's token distributions, student)

with w = `PretrainConfig.distill_weight`, averaged over the target tokens. The student then learns how the
teacher ranks the items it did not see next, not only which one came. Measured in docs/results-semantic-ids.md
("Distillation from the atomic policy"): a semantic-ID policy taught by the atomic one scored higher on valid
and not on test, so nothing uses it by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recmodels.models.policy import GenerativePolicy
from recmodels.runtime import eval_mode


def check_teacher(teacher: torch.nn.Module, n_items: int) -> None:
    """Raise ValueError unless `teacher` is an atomic policy over items 1..n_items."""
    if not isinstance(teacher, GenerativePolicy):
        raise ValueError(f"a distillation teacher must be an atomic GenerativePolicy, got {type(teacher).__name__}")
    if teacher.cfg.vocab_size != n_items + 1:
        raise ValueError(f"the distillation teacher covers {teacher.cfg.vocab_size - 1} items, the data "
                         f"{n_items}: they must share one catalog")


def teacher_item_probs(teacher: GenerativePolicy, inputs: torch.Tensor, targets: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """The teacher's next-item distributions [n, n_items + 1] at the n non-zero targets of item windows
    inputs / targets [B, T] (row-major order, as `target_logits`), padding item 0 at probability 0."""
    with eval_mode(teacher):
        logits = teacher.target_logits(inputs, targets).float() / temperature
    logits[:, 0] = float("-inf")
    return torch.softmax(logits, dim=-1)


def distilled_nll(logits: torch.Tensor, targets: torch.Tensor, soft: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * mean NLL of the true tokens `targets` [n] + weight * mean cross-entropy of the soft
    targets `soft` [n, V] under the student's `logits` [n, V] (which may hold -inf where soft is 0)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = F.nll_loss(logp, targets)
    soft_ce = -torch.where(soft > 0, soft * logp, 0.0).sum(dim=-1).mean()
    return (1.0 - weight) * nll + weight * soft_ce


def distilled_window_loss(policy, teacher: GenerativePolicy, tokenization, tokens: torch.Tensor,
                          targets: torch.Tensor, items: torch.Tensor, item_targets: torch.Tensor, weight: float,
                          temperature: float = 1.0) -> torch.Tensor:
    """The loss of a batch of train windows with a teacher: tokens / targets [B, S] the windows as the policy
    reads them (`tokenization.window_tokens`), items / item_targets [B, T] the same windows as items."""
    probs = teacher_item_probs(teacher, items, item_targets, temperature)
    soft = tokenization.distillation_targets(probs, item_targets[item_targets != 0])
    return distilled_nll(policy.target_logits(tokens, targets), targets[targets != 0], soft, weight)
