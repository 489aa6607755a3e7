"""The "production ranker" (docs/design.md §3): a reward regressor over (history, candidate item).

An asymmetric-SVD-style model, small and fast, whose user side is built from the history only
(so it scores users it has never seen):

    r_hat(h, c) = mu + b_c + a * o(h) + q_c . u(h)

- `mu` the global mean train reward, `b_c` the candidate's item bias;
- `o(h)` the user's offset: a recency-weighted, shrunk mean of the history's residual rewards
  `r_j - mu - b_j` (how much this user rates above the items' means);
- `u(h)` a pooled history vector: recency-weighted sums of item vectors `y_j` (what was watched)
  and of `x_j` scaled by the residual reward (what was liked or disliked);
- `q_c` the candidate's embedding, so the last term is the history x candidate interaction.

Trained by MSE on logged rewards only, it inherits the logging policy's exposure bias. Candidate 0
(padding or unknown) has zero bias and embedding, so it gets the finite score `mu + a * o(h)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RankerConfig:
    vocab_size: int  # n_items + 1 (token 0 is padding)
    max_len: int = 50  # most recent history items read
    d_model: int = 16
    dropout: float = 0.1
    shrinkage: float = 5.0  # pseudo-count pulling short histories' user offset towards 0
    global_mean: float = 0.0  # mean train reward, set by the trainer


class RewardRanker(nn.Module):
    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        self.item_bias = nn.Embedding(cfg.vocab_size, 1, padding_idx=0)
        self.cand_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)  # q_c
        self.seen_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)  # y_j
        self.liked_emb = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=0)  # x_j
        # recency weights over history positions (last = most recent); softplus(0.5413) = 1
        self.recency = nn.Parameter(torch.full((cfg.max_len,), 0.5413))
        self.offset_scale = nn.Parameter(torch.ones(()))
        self.drop = nn.Dropout(cfg.dropout)
        nn.init.zeros_(self.item_bias.weight)
        for emb in (self.cand_emb, self.seen_emb, self.liked_emb):
            nn.init.normal_(emb.weight, std=0.01)
            with torch.no_grad():
                emb.weight[0].zero_()

    def user_features(self, history: torch.Tensor, history_rewards: torch.Tensor):
        """history, history_rewards [B, T] -> user offset o(h) [B] and history vector u(h) [B, d]."""
        history, history_rewards = history[:, -self.cfg.max_len:], history_rewards[:, -self.cfg.max_len:]
        T = history.shape[1]
        real = (history != 0).float()  # [B, T]
        weights = F.softplus(self.recency[-T:])[None, :] * real  # [B, T]
        denom = weights.sum(dim=1) + self.cfg.shrinkage  # [B]
        residual = (history_rewards - self.cfg.global_mean - self.item_bias(history).squeeze(-1).detach()) * real
        offset = (weights * residual).sum(dim=1) / denom  # [B]
        seen = (weights[..., None] * self.seen_emb(history)).sum(dim=1)  # [B, d]
        liked = ((weights * residual)[..., None] * self.liked_emb(history)).sum(dim=1)  # [B, d]
        return offset, self.drop((seen + liked) / denom.sqrt()[:, None])

    def forward(self, history: torch.Tensor, history_rewards: torch.Tensor, candidates: torch.Tensor,
                targets: torch.Tensor | None = None):
        """history, history_rewards [B, T], candidates [B, C] -> (r_hat [B, C], MSE over candidates != 0)."""
        if history.shape != history_rewards.shape or history.dim() != 2:
            raise ValueError(f"history {tuple(history.shape)} and history_rewards "
                             f"{tuple(history_rewards.shape)} must be the same [B, T] shape")
        if candidates.dim() != 2 or candidates.shape[0] != history.shape[0]:
            raise ValueError(f"candidates must be [B={history.shape[0]}, C], got {tuple(candidates.shape)}")
        offset, user_vec = self.user_features(history, history_rewards.float())
        r_hat = (self.cfg.global_mean + self.item_bias(candidates).squeeze(-1)
                 + self.offset_scale * offset[:, None]
                 + (self.cand_emb(candidates) * user_vec[:, None, :]).sum(dim=-1))  # [B, C]
        loss = None
        if targets is not None:
            if targets.shape != candidates.shape:
                raise ValueError(f"targets {tuple(targets.shape)} must match candidates {tuple(candidates.shape)}")
            real = candidates != 0
            loss = F.mse_loss(r_hat[real], targets[real].float())
        return r_hat, loss
