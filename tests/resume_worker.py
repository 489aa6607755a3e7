"""A tiny training run that tests/test_resume.py kills and resumes.

    python -m tests.resume_worker KIND RESUME_DIR [KILL_AT]

KIND is `pretrain` or a post-training method (`exp_rw_sft`, `grpo`, `ppo`). The run prints one line per
history row, `row <epoch or step>`, flushed; at the row KILL_AT it stops and waits to be killed (the
state saved before that row is on disk by then). The same `train` runs in the test process for the
uninterrupted and the resumed runs.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from recmodels.models.policy import GenerativePolicy, PolicyConfig
from recmodels.models.ranker import RankerConfig, RewardRanker
from recmodels.post_training.loop import PostTrainConfig, post_train
from recmodels.training.pretraining import PretrainConfig, pretrain_policy
from tests.synthetic import cyclic_interactions

N_USERS, N_ITEMS, EVENTS, MAX_LEN = 30, 20, 12, 8
PRETRAIN = PretrainConfig(epochs=8, batch_size=8, lr=1e-2, patience=100, eval_every=2, seed=3, checkpoint_every=1,
                          warmup_epochs=1.5, schedule="cosine")  # the resumed run must pick up the schedule
POST_TRAIN = PostTrainConfig(steps=16, batch_size=8, lr=1e-2, eval_every=4, max_len=MAX_LEN, seed=5,
                             checkpoint_every=3)
KILL_AT = {"pretrain": 5, "exp_rw_sft": 8, "grpo": 8, "ppo": 8}  # epoch / step of the row the worker dies at


def interactions():
    return cyclic_interactions(N_USERS, N_ITEMS, EVENTS, (-1.0, -0.5, 0.0, 0.5, 1.0), seed=1)


def policy_config() -> PolicyConfig:
    return PolicyConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN, d_model=16, n_layers=1, n_heads=2, dropout=0.1)


def start_policy() -> GenerativePolicy:
    """The post-training start: random weights, seeded (the same in every process)."""
    torch.manual_seed(0)
    return GenerativePolicy(policy_config())


def ranker() -> RewardRanker:
    torch.manual_seed(1)
    return RewardRanker(RankerConfig(vocab_size=N_ITEMS + 1, max_len=MAX_LEN, d_model=4, dropout=0.0)).eval()


def train(kind: str, resume_dir: Path | None, callback=None, **config):
    """The pretraining or post-training result of this tiny run (CPU)."""
    if kind == "pretrain":
        cfg = PretrainConfig(**{**vars(PRETRAIN), **config})
        return pretrain_policy(interactions(), N_ITEMS, policy_config(), cfg, callback=callback, device="cpu",
                               resume_dir=resume_dir)
    cfg = PostTrainConfig(**{**vars(POST_TRAIN), **config})
    return post_train(kind, start_policy(), interactions(), cfg, ranker=ranker(), callback=callback, device="cpu",
                      resume_dir=resume_dir)


def main(argv: list[str]) -> None:
    kind, resume_dir = argv[0], Path(argv[1])
    kill_at = int(argv[2]) if len(argv) > 2 else None
    torch.set_num_threads(1)

    def callback(row: dict) -> None:
        at = row.get("step", row.get("epoch"))
        print(f"row {at}", flush=True)
        if at == kill_at:
            time.sleep(600)  # the test kills this process now

    train(kind, resume_dir, callback)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
