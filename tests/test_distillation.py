"""Distillation in pretraining (`recmodels.training.distillation`): a teacher's item distributions become the
code distributions a semantic-ID policy learns, the loss mixes them with the true tokens, and pretraining with
a teacher pulls the student towards it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recmodels.data.sequences import build_user_sequences, training_windows
from recmodels.models.policy import PolicyConfig
from recmodels.models.semantic_policy import SemanticPolicyConfig
from recmodels.tokenization.items import AtomicItems, SemanticItems
from recmodels.training.distillation import distilled_nll, teacher_item_probs
from recmodels.training.pretraining import PretrainConfig, pretrain_fingerprint, pretrain_policy
from tests.synthetic import cyclic_interactions
from tests.test_warm_start import N_ITEMS, SIZE, SIZES, atomic_policy, shuffled_ids


def test_a_teachers_item_distribution_becomes_code_distributions_along_the_true_prefix():
    ids = shuffled_ids()
    probs = torch.distributions.Dirichlet(torch.ones(N_ITEMS)).sample((2,))
    probs = F.pad(probs, (1, 0))  # item 0 is padding
    targets = torch.tensor([5, 31])
    got = SemanticItems(ids).distillation_targets(probs, targets).view(2, 3, -1)  # [n, L+1, V]
    offsets = ids.layout.offsets
    for row, target in enumerate(targets.tolist()):
        true = ids.codes[target]
        for level in range(3):
            # by hand: the teacher's mass of each code of the level among the items that share codes 0..level-1
            expected = torch.zeros(ids.layout.vocab_size)
            for item in range(1, N_ITEMS + 1):
                if (ids.codes[item, :level] == true[:level]).all():
                    expected[offsets[level] + ids.codes[item, level]] += probs[row, item]
            torch.testing.assert_close(got[row, level], expected / expected.sum())
    assert torch.equal(AtomicItems().distillation_targets(probs, targets), probs)  # one token per item


def test_the_loss_mixes_the_true_tokens_and_the_teachers_distribution():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    logits[:, 0] = float("-inf")  # a token the policy cannot produce (another level, padding)
    targets = torch.tensor([1, 2, 3, 5])
    soft = torch.softmax(torch.randn(4, 6).masked_fill(torch.arange(6) == 0, float("-inf")), dim=-1)
    nll = F.cross_entropy(logits, targets)
    soft_ce = -(soft[:, 1:] * F.log_softmax(logits, dim=-1)[:, 1:]).sum(dim=-1).mean()
    torch.testing.assert_close(distilled_nll(logits, targets, soft, 0.0), nll)
    torch.testing.assert_close(distilled_nll(logits, targets, soft, 1.0), soft_ce)
    torch.testing.assert_close(distilled_nll(logits, targets, soft, 0.25), 0.75 * nll + 0.25 * soft_ce)
    logits.requires_grad_(True)
    distilled_nll(logits, targets, soft, 0.5).backward()
    assert torch.isfinite(logits.grad).all()


def kl_to_teacher(student, teacher, data) -> float:
    """Mean KL(teacher || student) of the next-item distributions at the train windows' targets."""
    windows = training_windows(build_user_sequences(data), SIZE["max_len"])
    p = teacher_item_probs(teacher, windows.inputs, windows.targets, 1.0)[:, 1:]
    with torch.no_grad():
        logq = F.log_softmax(student.eval().target_logits(windows.inputs, windows.targets)[:, 1:], dim=-1)
    return float((p * (p.clamp_min(1e-12).log() - logq)).sum(dim=-1).mean())


def test_pretraining_with_a_teacher_pulls_the_student_towards_it():
    data = cyclic_interactions(n_users=30, n_items=N_ITEMS, events=10, rewards=(1.0,), seed=0)
    teacher = atomic_policy(seed=5)  # untrained: its distributions are not the data's
    config = PolicyConfig(vocab_size=N_ITEMS + 1, **SIZE)
    train = PretrainConfig(epochs=20, batch_size=8, lr=3e-3, patience=100, seed=0)
    plain = pretrain_policy(data, N_ITEMS, config, train, device="cpu").policy
    taught = pretrain_policy(data, N_ITEMS, config, PretrainConfig(**{**vars(train), "distill_weight": 1.0}),
                             device="cpu", teacher=teacher).policy
    assert kl_to_teacher(taught, teacher, data) < 0.1 * kl_to_teacher(plain, teacher, data)  # 0.016 vs 0.79


def test_a_semantic_policy_pretrains_with_an_atomic_teacher_and_keys_its_state_by_it():
    data = cyclic_interactions(n_users=30, n_items=N_ITEMS, events=10, rewards=(1.0,), seed=0)
    ids = shuffled_ids()
    config = SemanticPolicyConfig(level_sizes=SIZES, n_items=N_ITEMS, **SIZE)
    train = PretrainConfig(epochs=2, batch_size=8, seed=0, distill_weight=0.5)
    result = pretrain_policy(data, N_ITEMS, config, train, tokenization=SemanticItems(ids), device="cpu",
                             teacher=atomic_policy())
    assert len(result.history) == 2 and np.isfinite([row["train_loss"] for row in result.history]).all()

    tokens = targets = torch.zeros(1, 3, dtype=torch.long)
    key = lambda teacher: pretrain_fingerprint(data, N_ITEMS, config, train, SemanticItems(ids), tokens,  # noqa: E731
                                               targets, torch.device("cpu"), None, teacher)
    assert key(atomic_policy()) == key(atomic_policy()) != key(atomic_policy(seed=3))


@pytest.mark.parametrize("weight, teacher, message", [
    (0.5, None, "needs both a teacher and PretrainConfig.distill_weight > 0"),
    (0.0, "atomic", "needs both a teacher and PretrainConfig.distill_weight > 0"),
    (1.5, "atomic", "distill_weight must lie in"),
    (0.5, "other catalog", "covers 40 items, the data 48"),
])
def test_distillation_without_a_fitting_teacher_is_refused(weight, teacher, message):
    data = cyclic_interactions(n_users=10, n_items=N_ITEMS, events=6, rewards=(1.0,), seed=0)
    teacher = {None: None, "atomic": atomic_policy(), "other catalog": atomic_policy(n_items=40)}[teacher]
    with pytest.raises(ValueError, match=message):
        pretrain_policy(data, N_ITEMS, PolicyConfig(vocab_size=N_ITEMS + 1, **SIZE),
                        PretrainConfig(epochs=1, distill_weight=weight), device="cpu", teacher=teacher)
