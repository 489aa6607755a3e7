"""The tokenization interface is the one place that knows how a policy sees an item: every registered
tokenization round-trips a checkpoint and ranks through the same calls, and a new tokenization registered
with one line is picked up by checkpoint loading, pretraining, evaluation and promotion alike."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import recmodels.tokenization.items as items
from recmodels.data.sequences import build_user_sequences, eval_examples
from recmodels.evaluation.evaluate import evaluate_policies
from recmodels.evaluation.promotion import split_metrics
from recmodels.evaluation.ranking import rank_catalog, target_ranks
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.storage.checkpoints import CheckpointError, save_checkpoint
from recmodels.storage.model_io import load_policy
from recmodels.tokenization.interface import ItemTokenization, Ranking, decoding_record
from recmodels.tokenization.items import (TOKENIZATIONS, AtomicItems, SemanticItems, load_item_codes,
                                          tokenization_class, tokenization_for)
from recmodels.training.pretraining import PretrainConfig, pretrain_policy
from tests.synthetic import cyclic_interactions
from tests.test_semantic_policy import hand_ids

N_ITEMS, SIZES, MAX_LEN = 30, (5, 4, 3), 6
KNOBS = dict(max_len=MAX_LEN, d_model=16, n_layers=1, n_heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def data():
    return cyclic_interactions(n_users=20, n_items=N_ITEMS, events=10, rewards=(1.0, -0.5), seed=0)


@pytest.fixture(scope="module")
def semantic_ids():
    return hand_ids(n_items=N_ITEMS, sizes=SIZES, seed=1)


def codes_of(kind, semantic_ids):
    """The item codes a registered tokenization reads, built by hand for the tests."""
    return {AtomicItems: None, SemanticItems: semantic_ids}[kind]


@pytest.mark.parametrize("name", list(TOKENIZATIONS))
def test_every_tokenization_round_trips_a_checkpoint_and_ranks_through_one_call(name, semantic_ids, data, tmp_path):
    kind = tokenization_class(name)
    tokenization = kind.with_codes(codes_of(kind, semantic_ids))
    config = kind.config_class(**tokenization.vocabulary(N_ITEMS), **KNOBS)
    torch.manual_seed(0)
    loaded = load_policy(save_checkpoint(tmp_path / "policy.pt", tokenization.build_policy(config), config))
    assert isinstance(loaded, kind.policy_class) and loaded.cfg == config
    assert tokenization_class(loaded) is tokenization_class(config) is kind
    assert tokenization_class(dataclasses.asdict(config)) is kind  # a checkpoint's config dict
    assert tokenization.n_items(loaded) == N_ITEMS

    examples = eval_examples(build_user_sequences(data), "test", MAX_LEN)
    ranking = tokenization_for(loaded, codes_of(kind, semantic_ids)).rank(loaded, examples)
    assert ranking.decoding["tokenization"] == name and ranking.ranks.shape == (len(examples),)
    assert ranking.top10.shape == (len(examples), 10) and (ranking.ranks >= 1).all()
    assert ranking.ranks_unmasked.shape == ranking.seen_in_top10_unmasked.shape == (len(examples),)
    only_masked = tokenization_for(loaded, codes_of(kind, semantic_ids)).rank(loaded, examples, unmasked=False)
    np.testing.assert_array_equal(only_masked.ranks, ranking.ranks)
    assert only_masked.ranks_unmasked is None


def test_records_and_model_bundles_name_the_item_codes_their_tokenization_reads(semantic_ids, tmp_path):
    path = semantic_ids.save(tmp_path / "item_tokens.npz")
    assert load_item_codes({"tokenization": "atomic"}) is None
    assert load_item_codes({}) is None  # records that name no tokenization are atomic
    loaded = load_item_codes({"tokenization": "semantic", "semantic_ids": str(path)})
    np.testing.assert_array_equal(loaded.codes, semantic_ids.codes)
    with pytest.raises(ValueError, match="reads its item codes from a 'semantic_ids' file, and none is named"):
        load_item_codes({"tokenization": "semantic"})
    with pytest.raises(ValueError, match=r"unknown tokenization 'bpe': use one of \['atomic', 'semantic'\]"):
        tokenization_class("bpe")


def test_codes_a_policy_does_not_read_are_an_error_only_when_strict(semantic_ids):
    atomic = AtomicItems.policy_class(AtomicItems.config_class(vocab_size=N_ITEMS + 1, **KNOBS))
    with pytest.raises(ValueError, match="semantic_ids were given but the pretrained policy is a GenerativePolicy"):
        tokenization_for(atomic, semantic_ids)
    assert isinstance(tokenization_for(atomic, semantic_ids, strict=False), AtomicItems)
    with pytest.raises(ValueError, match="no tokenization \\(atomic, semantic\\) speaks a Linear"):
        tokenization_for(torch.nn.Linear(2, 2))


# --- a third tokenization: one class, one registry entry --------------------------------------------------------

@dataclass
class PopularityConfig:
    n_items: int
    max_len: int = MAX_LEN


class PopularityPolicy(torch.nn.Module):
    """Scores every item by a learned popularity, whatever the history."""

    def __init__(self, cfg: PopularityConfig):
        super().__init__()
        self.cfg = cfg
        self.popularity = torch.nn.Parameter(torch.zeros(cfg.n_items + 1))

    def item_logits(self, n: int) -> torch.Tensor:
        logits = self.popularity.expand(n, -1).clone()
        logits[:, 0] = float("-inf")
        return logits

    def target_logits(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.item_logits(int((targets != 0).sum()))


class _CatalogScores:
    """A popularity policy seen through the catalog ranker's `next_item_logits`."""

    def __init__(self, policy: PopularityPolicy):
        self.policy = policy

    def next_item_logits(self, history: torch.Tensor) -> torch.Tensor:
        return self.policy.item_logits(history.shape[0])


class PopularItems(ItemTokenization):
    name = "popular"
    policy_class = PopularityPolicy
    config_class = PopularityConfig

    @classmethod
    def with_codes(cls, codes=None, strict: bool = True):
        return cls()

    def vocabulary(self, n_items: int) -> dict:
        return {"n_items": n_items}

    def check_config(self, config, n_items: int) -> None:
        assert config.n_items == n_items

    def n_items(self, policy) -> int:
        return policy.cfg.n_items

    def window_tokens(self, inputs, targets):
        return inputs, targets

    def valid_ranks(self, policy, examples, device=None):
        return target_ranks(_CatalogScores(policy), examples)

    def rank(self, policy, examples, beam_size=None, unmasked=True) -> Ranking:
        both = rank_catalog(_CatalogScores(policy), examples, k=10)
        return Ranking(ranks=both.ranks, decoding=decoding_record(self.name, None, 0.0, both.ranks, both.ranks),
                       top10=both.top_items, ranks_unmasked=both.ranks_unmasked,
                       seen_in_top10_unmasked=both.seen_in_top10_unmasked)


def test_a_third_tokenization_registered_with_one_line_serves_every_stage(monkeypatch, data, tmp_path):
    monkeypatch.setattr(items, "TOKENIZATIONS", {**TOKENIZATIONS, PopularItems.name: PopularItems})
    assert tokenization_class("popular") is PopularItems

    result = pretrain_policy(data, N_ITEMS, config=PretrainConfig(epochs=2, batch_size=16, lr=0.1), device="cpu",
                             tokenization=PopularItems())
    assert isinstance(result.policy, PopularityPolicy) and result.policy_config == PopularityConfig(N_ITEMS)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    policy = load_policy(save_checkpoint(tmp_path / "popular.pt", result.policy, result.policy_config))
    assert isinstance(policy, PopularityPolicy) and torch.equal(policy.popularity, result.policy.popularity)
    ranker = RewardRanker(RankerConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN)).eval()
    [evaluation] = evaluate_policies({"popular": (policy, None)}, data, ranker, MAX_LEN)
    assert evaluation.decoding["tokenization"] == "popular" and evaluation.ranks.shape == (len(evaluation.users),)
    frame = split_metrics(policy, data, MAX_LEN)
    assert frame.attrs["hallucination_rate"] == 0.0 and len(frame) == len(evaluation.users)


def test_a_checkpoint_no_tokenization_speaks_is_rejected_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "odd.pt", torch.nn.Linear(2, 2), {"width": 2})
    with pytest.raises(CheckpointError, match=r"odd.pt: no tokenization \(atomic, semantic\) speaks a config"):
        load_policy(path)
