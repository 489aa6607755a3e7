"""RQ-VAE: residual quantization learned end to end with an autoencoder (TIGER's semantic-ID codebook).

An MLP encoder maps each item vector to a small latent; L codebooks quantize it residually (level l
quantizes what levels 0..l-1 left); an MLP decoder rebuilds the vector from the sum of the chosen code
vectors. The loss is the reconstruction error plus, per level, the codebook and commitment terms of
VQ-VAE (beta = 0.25), with the straight-through estimator carrying the gradient past the argmin.
Codebooks start from k-means over the untrained encoder's latents, and a code no item used over the last
`RQVAEConfig.restart_every` steps restarts at a random residual of its level, so few codes stay dead.

The inputs are standardized per column first (the item vectors mix SVD factors, genre flags and years
on different scales). Training is full batch: a catalog is a few thousand vectors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RQVAEConfig:
    n_levels: int = 3
    codebook_size: int = 32
    latent_dim: int = 32
    hidden: int = 256
    steps: int = 3000
    lr: float = 1e-3
    beta: float = 0.25  # weight of the commitment term
    restart_every: int = 200  # steps between two restarts of unused codes (0 = never)
    seed: int = 0


class ResidualQuantizer(nn.Module):
    """L codebooks [V, latent] applied one after another to what the levels before left."""

    def __init__(self, config: RQVAEConfig):
        super().__init__()
        self.codebooks = nn.Parameter(torch.zeros(config.n_levels, config.codebook_size, config.latent_dim))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """z [n, latent] -> (quantized [n, latent], codes [L, n], residual entering each level [L] x [n, latent])."""
        residual, quantized, codes, inputs = z, torch.zeros_like(z), [], []
        for codebook in self.codebooks:
            inputs.append(residual)
            code = torch.cdist(residual, codebook).argmin(dim=1)  # [n]
            quantized = quantized + codebook[code]
            residual = residual - codebook[code]
            codes.append(code)
        return quantized, torch.stack(codes), inputs


class RQVAE(nn.Module):
    """Encoder [d_in -> latent], residual quantizer, decoder [latent -> d_in]."""

    def __init__(self, d_in: int, config: RQVAEConfig):
        super().__init__()
        self.config = config
        h, latent = config.hidden, config.latent_dim
        self.encoder = nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, h), nn.ReLU(), nn.Linear(h, d_in))
        self.quantizer = ResidualQuantizer(config)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, d] -> (loss, codes [L, n])."""
        z = self.encoder(x)
        quantized, codes, inputs = self.quantizer(z)
        vq = sum(F.mse_loss(codebook[code], r.detach()) + self.config.beta * F.mse_loss(r, codebook[code].detach())
                 for codebook, code, r in zip(self.quantizer.codebooks, codes, inputs))
        straight_through = z + (quantized - z).detach()
        return F.mse_loss(self.decoder(straight_through), x) + vq, codes

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """Each level's codebook from k-means over the residuals the levels before leave (sklearn)."""
        from sklearn.cluster import KMeans  # heavy import, only when building

        residual = self.encoder(x)
        for level, codebook in enumerate(self.quantizer.codebooks):
            k = min(codebook.shape[0], residual.shape[0])
            km = KMeans(n_clusters=k, random_state=seed + level, n_init=1).fit(residual.numpy())
            codebook[:k] = torch.as_tensor(km.cluster_centers_, dtype=codebook.dtype)
            residual = residual - codebook[torch.as_tensor(km.labels_, dtype=torch.long)]

    @torch.no_grad()
    def restart_unused(self, x: torch.Tensor, used: torch.Tensor, generator: torch.Generator) -> None:
        """Codes with used[level, code] == False move to the residual of a random item at their level."""
        _, _, inputs = self.quantizer(self.encoder(x))
        for level, codebook in enumerate(self.quantizer.codebooks):
            dead = (~used[level]).nonzero().flatten()
            if len(dead):
                rows = torch.randint(len(x), (len(dead),), generator=generator)
                codebook[dead] = inputs[level][rows]


def rq_vae_codes(x: np.ndarray, config: RQVAEConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Item vectors [n, d] -> (codes per level, each [n]; latent residual after each level, each [n, latent])."""
    if config.n_levels < 1 or config.codebook_size < 2 or config.steps < 1:
        raise ValueError(f"need n_levels >= 1, codebook_size >= 2 and steps >= 1, got {config}")
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream where it was
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        data = torch.as_tensor(x, dtype=torch.float32)
        data = (data - data.mean(dim=0)) / data.std(dim=0).clamp_min(1e-6)
        model = RQVAE(data.shape[1], config)
        model.init_codebooks(data, config.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        used = torch.zeros(config.n_levels, config.codebook_size, dtype=torch.bool)
        for step in range(1, config.steps + 1):
            loss, codes = model.loss(data)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            used.scatter_(1, codes, True)
            if config.restart_every and step % config.restart_every == 0 and step < config.steps:
                model.restart_unused(data, used, generator)
                used.zero_()
        with torch.no_grad():
            z = model.encoder(data)
            quantized, codes, inputs = model.quantizer(z)
        after = inputs[1:] + [z - quantized]  # what each level leaves is what the next one receives
        return [c.numpy().astype(np.int64) for c in codes], [r.numpy().astype(np.float64) for r in after]
