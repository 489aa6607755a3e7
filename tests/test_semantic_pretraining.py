"""Semantic-ID pretraining (`pretrain_policy` with `SemanticItems`): next-code NLL falls, constrained-beam valid
NDCG, seeds, checkpoint round trip."""
import numpy as np
import pytest
import torch

from recmodels.storage.checkpoints import CheckpointError, save_checkpoint
from recmodels.evaluation.hallucination import evaluate_beams
from recmodels.storage.model_io import load_policy
from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.training.pretraining import PretrainConfig, pretrain_policy, window_nll
from recmodels.models.semantic_policy import SemanticPolicy, SemanticPolicyConfig
from recmodels.tokenization.items import SemanticItems
from recmodels.data.sequences import build_user_sequences, eval_examples, training_windows
from recmodels.tokenization import ItemTrie, SemanticIdConfig, SemanticIds
from tests.synthetic import cyclic_interactions

N_ITEMS = 48
SIZES = (6, 4, 2)  # 48 tuples: every tuple is an item


def grid_ids() -> SemanticIds:
    """Item i (1..48) -> the (i-1)-th tuple of the 6 x 4 x 2 grid in mixed radix."""
    codes = np.zeros((N_ITEMS + 1, 3), np.int64)
    for i in range(1, N_ITEMS + 1):
        j = i - 1
        codes[i] = (j // 8, (j // 2) % 4, j % 2)
    return SemanticIds(codes=codes, level_sizes=SIZES, config=SemanticIdConfig(n_levels=2, codebook_size=6))


# the plain code head (no item prefixes, no prefix logits): its 10-epoch run below peaks before its last epoch
TINY = SemanticPolicyConfig(level_sizes=SIZES, max_len=6, d_model=32, n_layers=1, n_heads=2, dropout=0.0,
                            item_prefixes=False, prefix_logits=False)


def pretrain_on_semantic_ids(data, ids: SemanticIds, policy_config=None, config=None, **kwargs):
    """The one pretraining entry point, over the semantic IDs' code tokens."""
    return pretrain_policy(data, ids.n_items, policy_config, config, tokenization=SemanticItems(ids), **kwargs)


@pytest.fixture(scope="module")
def data():
    return cyclic_interactions(n_users=40, n_items=N_ITEMS, events=12, rewards=(1.0, -0.5), seed=0)


@pytest.fixture(scope="module")
def trained(data):
    rows = []
    cfg = PretrainConfig(epochs=10, batch_size=16, lr=3e-2, weight_decay=0.0, patience=10, seed=4)
    result = pretrain_on_semantic_ids(data, grid_ids(), TINY, cfg, callback=rows.append, device="cpu")
    return result, rows


def valid_ndcg10(policy, data) -> float:
    ids = grid_ids()
    valid = eval_examples(build_user_sequences(data), "valid", TINY.max_len)
    ranks = evaluate_beams(policy, valid, ids, beam_size=10, trie=ItemTrie.from_semantic_ids(ids)).ranks
    return float(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0.0).mean())


def test_code_nll_falls_and_constrained_valid_ndcg_beats_an_untrained_policy(trained, data):
    result, rows = trained
    assert [r["epoch"] for r in rows] == list(range(1, 11)) and rows == result.history
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert all(r["sequences_per_s"] > 0 and 0 <= r["valid_ndcg@10"] <= 1 for r in rows)
    torch.manual_seed(0)
    untrained = valid_ndcg10(SemanticPolicy(TINY), data)  # near-uniform codes
    assert result.best_valid_ndcg10 == max(r["valid_ndcg@10"] for r in rows) > max(0.9, untrained + 0.3)
    assert isinstance(result.policy, SemanticPolicy) and not result.policy.training


def test_best_weights_are_restored(trained, data):
    result, rows = trained
    assert rows[-1]["valid_ndcg@10"] < result.best_valid_ndcg10  # the last epoch is not the best one
    assert valid_ndcg10(result.policy, data) == pytest.approx(result.best_valid_ndcg10)


def test_window_nll_over_code_tokens_equals_the_policy_loss(data):
    ids = grid_ids()
    windows = training_windows(build_user_sequences(data), TINY.max_len)
    tokens, targets = ids.window_tokens(windows.inputs[:8], windows.targets[:8])
    torch.manual_seed(0)
    policy = SemanticPolicy(TINY).eval()
    assert window_nll(policy, tokens, targets).item() == pytest.approx(policy(tokens, targets)[1].item(), rel=1e-5)


def test_same_seed_same_numbers_other_seed_other_numbers(data):
    cfg = PretrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=5)
    a = pretrain_on_semantic_ids(data, grid_ids(), TINY, cfg, device="cpu")
    b = pretrain_on_semantic_ids(data, grid_ids(), TINY, cfg, device="cpu")
    c = pretrain_on_semantic_ids(data, grid_ids(), TINY, PretrainConfig(epochs=2, batch_size=16, lr=1e-2, seed=6),
                                 device="cpu")
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "sequences_per_s")} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history) != strip(c.history)
    for (k, va), vb in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        assert torch.equal(va, vb), k


def test_checkpoint_round_trips_through_load_policy(trained, tmp_path, data):
    result, _ = trained
    path = save_checkpoint(tmp_path / "semantic.pt", result.policy, result.policy_config)
    loaded = load_policy(path)
    assert isinstance(loaded, SemanticPolicy) and loaded.cfg.level_sizes == SIZES and not loaded.training
    ids = grid_ids()
    windows = training_windows(build_user_sequences(data), TINY.max_len)
    tokens, _ = ids.window_tokens(windows.inputs[:4], windows.targets[:4])
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens)[0], result.policy.eval()(tokens)[0])
    atomic_cfg = PolicyConfig(vocab_size=N_ITEMS + 1, max_len=4, d_model=8, n_heads=1, n_layers=1)
    atomic = save_checkpoint(tmp_path / "atomic.pt", GenerativePolicy(atomic_cfg), atomic_cfg)
    assert type(load_policy(atomic)) is GenerativePolicy


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_rejected_naming_the_file(trained, tmp_path):
    result, _ = trained
    wrong = SemanticPolicyConfig(level_sizes=(6, 4, 3), max_len=6, d_model=32, n_layers=1, n_heads=2, n_items=N_ITEMS)
    path = save_checkpoint(tmp_path / "wrong.pt", result.policy, wrong)
    with pytest.raises(CheckpointError, match="wrong.pt does not fit SemanticPolicy"):
        load_policy(path)


def test_bad_configs_and_input_are_rejected_with_the_reason(data):
    ids = grid_ids()
    with pytest.raises(ValueError, match=r"level_sizes=\(6, 4, 3\) differ from the semantic IDs' level sizes"):
        pretrain_on_semantic_ids(data, ids, SemanticPolicyConfig(level_sizes=(6, 4, 3), max_len=6, n_items=N_ITEMS),
                                 PretrainConfig(epochs=1))
    with pytest.raises(ValueError, match="PretrainConfig.max_len=5 differs from SemanticPolicyConfig.max_len=6"):
        pretrain_on_semantic_ids(data, ids, TINY, PretrainConfig(epochs=1, max_len=5))
    bad = data.copy()
    bad.loc[3, "item_idx"] = N_ITEMS + 1
    with pytest.raises(ValueError, match="column item_idx must lie in 1..n_items=48; row 3"):
        pretrain_on_semantic_ids(bad, ids, TINY, PretrainConfig(epochs=1))


def test_a_policy_with_item_prefixes_holds_the_codes_it_was_trained_on(data):
    """Pretraining gives a policy with item_prefixes (the default) the semantic IDs' tuples; another codebook is
    refused."""
    config = SemanticPolicyConfig(level_sizes=SIZES, max_len=6, d_model=16, n_layers=1, n_heads=2, dropout=0.0,
                                  n_items=N_ITEMS)
    cfg = PretrainConfig(epochs=1, batch_size=16, seed=0)
    policy = pretrain_on_semantic_ids(data, grid_ids(), config, cfg, device="cpu").policy
    assert torch.equal(policy.item_codes, torch.from_numpy(grid_ids().codes[1:]))
    shuffled = grid_ids()
    shuffled.codes[1:] = shuffled.codes[1:][::-1]
    with pytest.raises(ValueError, match="holds other item code tuples"):
        SemanticItems(shuffled).check(policy)
