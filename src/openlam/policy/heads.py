"""What the policy's trunk is trained to predict: latent action tokens (stage 2) or real actions
(stage 3, and the action-pretraining upper bound) as discretised bins or a flow-matching chunk."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openlam.models.blocks import Block
from openlam.models.global_rng import global_draw


class LatentTokenHead(nn.Module):
    """Autoregressive over the K tokens of a latent action (LAPA's stage 2): token k is read from a
    causal decoder over [BOS, z_1 .. z_{k-1}] that cross-attends to the trunk's outputs."""

    def __init__(self, num_tokens: int, codebook_size: int, dim: int, heads: int, layers: int):
        super().__init__()
        self.num_tokens, self.codebook_size = num_tokens, codebook_size
        self.bos = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed = nn.Embedding(codebook_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, cross=True) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, codebook_size)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.bos, std=0.02)

    def logits(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, K, V) of `tokens` (B, K) given the trunk's outputs (B, L, D)."""
        prev = self.embed(tokens[:, :-1])
        x = torch.cat([self.bos.expand(len(tokens), -1, -1), prev], 1) + self.pos
        for blk in self.blocks:
            x = blk(x, context, causal=True)
        return self.out(self.norm(x))

    def loss(self, context: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lg = self.logits(context, tokens)
        loss = F.cross_entropy(lg.flatten(0, 1).float(), tokens.flatten())
        acc = (lg.argmax(-1) == tokens).float().mean()
        return loss, {"latent_ce": loss.detach(), "latent_token_acc": acc.detach()}

    @torch.no_grad()
    def generate(self, context: torch.Tensor) -> torch.Tensor:
        """Greedy decoding, one token at a time: (B, K) long."""
        B = context.shape[0]
        tokens = torch.zeros(B, self.num_tokens, dtype=torch.long, device=context.device)
        for k in range(self.num_tokens):
            tokens[:, k] = self.logits(context, tokens)[:, k].argmax(-1)
        return tokens


class BinsHead(nn.Module):
    """Each action dim (of each of C chunk steps) as a class among equal-frequency bins of the
    training actions (LAPA / OpenVLA style); decoded to the bin's median."""

    def __init__(self, cond_dim: int, hidden: int, chunk: int, action_dim: int, bins: int):
        super().__init__()
        self.chunk, self.action_dim, self.bins = chunk, action_dim, bins
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, chunk * action_dim * bins))
        self.register_buffer("edges", torch.zeros(action_dim, bins - 1))  # inner edges per dim
        self.register_buffer("centers", torch.zeros(action_dim, bins))

    def fit_bins(self, actions: torch.Tensor) -> None:
        """Inner edges at the i/bins quantiles of (N, A); each bin decodes to the median of the
        training values that fall in it. Values that repeat (a gripper at exactly -1 or +1) make
        edges coincide and bins empty; the median keeps such a value decoding to itself. An empty
        bin decodes to its quantile midpoint."""
        a = actions.double()
        q_edges = torch.arange(1, self.bins, dtype=torch.float64) / self.bins
        self.edges.copy_(torch.quantile(a, q_edges, dim=0).T.float())
        centers = torch.quantile(a, (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins, dim=0).T
        cls = self.classes(actions.float().unsqueeze(1)).squeeze(1)  # (N, A)
        for d in range(a.shape[1]):
            for b in cls[:, d].unique().tolist():
                centers[d, b] = a[cls[:, d] == b, d].median()
        self.centers.copy_(centers.float())

    def classes(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, C, A) actions -> (B, C, A) bin indices."""
        e = self.edges.unsqueeze(0).unsqueeze(0).expand(*actions.shape[:2], -1, -1)
        return torch.searchsorted(e.contiguous(), actions.unsqueeze(-1).contiguous(), right=True).squeeze(-1)

    def _logits(self, cond: torch.Tensor) -> torch.Tensor:
        return self.mlp(cond).view(len(cond), self.chunk, self.action_dim, self.bins)

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lg = self._logits(cond)
        target = self.classes(actions)
        loss = F.cross_entropy(lg.flatten(0, 2).float(), target.flatten())
        return loss, {"bins_ce": loss.detach(), "bins_acc": (lg.argmax(-1) == target).float().mean().detach()}

    @torch.no_grad()
    def act(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = self._logits(cond).argmax(-1)  # (B, C, A)
        return torch.gather(self.centers.expand(*idx.shape[:2], -1, -1), 3, idx.unsqueeze(-1)).squeeze(-1)


def _time_embedding(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float().unsqueeze(-1) * freqs * 1000.0
    return torch.cat([a.sin(), a.cos()], -1)


class FlowHead(nn.Module):
    """Flow matching over a chunk of C normalised actions (pi0 / Motion-Focused's action expert):
    x_t = (1 - t) noise + t a, the network predicts the velocity a - noise; inference integrates it
    from noise with Euler steps."""

    def __init__(self, cond_dim: int, hidden: int, chunk: int, action_dim: int, steps: int):
        super().__init__()
        self.chunk, self.action_dim, self.steps = chunk, action_dim, steps
        n = chunk * action_dim
        self.mlp = nn.Sequential(nn.Linear(n + 64 + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n))
        self.register_buffer("mean", torch.zeros(action_dim))
        self.register_buffer("std", torch.ones(action_dim))

    def fit_stats(self, actions: torch.Tensor) -> None:
        self.mean.copy_(actions.float().mean(0))
        self.std.copy_(actions.float().std(0).clamp_min(1e-3))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x.flatten(1), _time_embedding(t), cond], -1)).view_as(x)

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = (actions - self.mean) / self.std
        noise = global_draw(torch.randn, len(a), *a.shape[1:], device=a.device, dtype=a.dtype)  # the global batch's draws
        t = global_draw(torch.rand, len(a), device=a.device)
        x = (1 - t.view(-1, 1, 1)) * noise + t.view(-1, 1, 1) * a
        loss = F.mse_loss(self.velocity(x, t, cond).float(), (a - noise).float())
        return loss, {"flow_mse": loss.detach()}

    @torch.no_grad()
    def act(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn(len(cond), self.chunk, self.action_dim, device=cond.device, generator=generator)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((len(cond),), i * dt, device=cond.device)
            x = x + dt * self.velocity(x, t, cond)
        return x * self.std + self.mean
