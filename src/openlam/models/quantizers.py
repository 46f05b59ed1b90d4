"""Discrete bottlenecks for latent actions: VQ, EMA-VQ, NSVQ (LAPA) and FSQ.

All map continuous tokens z (B, K, D) to codes: `QuantOut.z_q` (B, K, D) goes to the decoder,
`indices` (B, K) are the latent action, `z_cont` (B, K, code_dim) is the continuous
pre-quantization embedding that labelling stores. Usage is tracked on the device (no host sync):
`counts` per step and an EMA of usage that drives dead-code restarts and the collapse alarm.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from openlam.models.config import QuantizerConfig
from openlam.models.global_rng import distributed, global_draw


@dataclass
class QuantOut:
    z_q: torch.Tensor  # (B, K, D) quantized tokens, in model dim
    indices: torch.Tensor  # (B, K) int64 codes
    z_cont: torch.Tensor  # (B, K, code_dim) continuous embedding before quantization
    loss: torch.Tensor  # scalar auxiliary loss (codebook/commitment, usage entropy); 0 for fsq, nsvq without entropy term
    counts: torch.Tensor  # (C,) code counts in this batch


def _gather(flat: torch.Tensor) -> torch.Tensor:
    """Rows of the global batch, in rank order; every rank then draws the same random picks (same
    RNG), so data-dependent codebook updates are identical across ranks and equal one process's."""
    if not distributed():
        return flat
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)


class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    def __init__(self, dim: int, cfg: QuantizerConfig, codebook_size: int, code_dim: int):
        super().__init__()
        self.cfg = cfg
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.proj_in = nn.Linear(dim, code_dim)
        self.proj_out = nn.Linear(code_dim, dim)
        self.register_buffer("usage", torch.full((codebook_size,), 1.0 / codebook_size))
        if cfg.warmup_steps:  # training steps seen (a buffer: saved with checkpoints, equal on every rank)
            self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        if cfg.lookup == "standardized":  # running statistics of z for evaluation, like batch norm's
            self.register_buffer("z_mean", torch.zeros(code_dim))
            self.register_buffer("z_var", torch.ones(code_dim))
        self._last_z: torch.Tensor | None = None

    def _track(self, indices: torch.Tensor) -> torch.Tensor:
        flat = indices.reshape(-1)  # index_add_, unlike bincount, never syncs with the host on CUDA
        counts = torch.zeros(self.codebook_size, device=flat.device, dtype=self.usage.dtype).index_add_(
            0, flat, torch.ones_like(flat, dtype=self.usage.dtype))
        if self.training:
            if distributed():  # usage over the global batch, identical on every rank
                counts = counts.clone()
                dist.all_reduce(counts)
            with torch.no_grad():
                share = counts / counts.sum().clamp_min(1)
                self.usage.mul_(self.cfg.usage_decay).add_(share, alpha=1 - self.cfg.usage_decay)
        return counts

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> QuantOut:
        """x: (B, K, dim) continuous action tokens."""

    def continuous(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-quantization embedding z_cont of tokens x (B, K, dim), with no side effects."""
        return self._normalized(self.proj_in(x), update=False)

    def _normalized(self, z: torch.Tensor, update: bool) -> torch.Tensor:
        """z as the lookup sees it. cosine: l2-normalised. standardized: each dim centred and scaled
        by the statistics of the (global) training batch, or by their running average in eval mode.
        That removes what every input shares, so codes seeded from the data spread over how inputs
        differ, however small that is early in training, and the common drift of an encoder's
        outputs cannot carry the whole batch into one code's cell (the usual small-VQ collapse)."""
        if self.cfg.lookup == "cosine":
            return F.normalize(z, dim=-1)
        if self.cfg.lookup != "standardized":
            return z
        if not self.training:
            return (z - self.z_mean) * torch.rsqrt(self.z_var + 1e-5)
        flat = z.reshape(-1, z.shape[-1])
        mean, sq = flat.mean(0), flat.pow(2).mean(0)
        if distributed():  # global statistics in the forward pass; each rank's gradient flows through its own rows
            total = torch.stack([mean, sq]).detach().clone()
            dist.all_reduce(total)
            total /= dist.get_world_size()
            mean, sq = mean + (total[0] - mean).detach(), sq + (total[1] - sq).detach()
        var = (sq - mean.pow(2)).clamp_min(0)
        if update:
            with torch.no_grad():
                self.z_mean.lerp_(mean.detach(), 1 - self.cfg.usage_decay)
                self.z_var.lerp_(var.detach(), 1 - self.cfg.usage_decay)
        return (z - mean) * torch.rsqrt(var + 1e-5)

    def _warm(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the decoder reads in training: z itself during the warm-up, `out` after (no host sync)."""
        if not (self.training and self.cfg.warmup_steps > 0):
            return out
        warming = (self.steps_seen < self.cfg.warmup_steps).to(z.dtype)
        self.steps_seen.add_(1)
        return warming * z + (1 - warming) * out

    @abc.abstractmethod
    def embed_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes (B, K) -> decoder-ready tokens (B, K, D): how a stored latent action is replayed."""

    @abc.abstractmethod
    def code_logits(self, z_cont: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(..., code_dim) pre-quantization embedding -> (..., codebook_size) logits -d(z, code) / T,
        d the squared distance the lookup uses, with the codes held fixed: argmax is the code z
        quantizes to, and a cross-entropy against a code index trains z (and what produced it)
        towards that code (CycleMimic's action-centric cycle)."""

    def usage_fraction(self) -> torch.Tensor:
        """Fraction of codes in recent use (EMA share above 1/10 of a uniform share)."""
        return (self.usage > 0.1 / self.codebook_size).float().mean()

    def perplexity(self, counts: torch.Tensor) -> torch.Tensor:
        p = counts / counts.sum().clamp_min(1)
        return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())

    @torch.no_grad()
    def restart_dead_codes(self) -> torch.Tensor:
        """Re-seed codes whose recent usage is below threshold with encoder outputs from the last
        training batch (plus a little noise). Identical on every DDP rank (rank 0's choice is
        broadcast). Returns the number of restarted codes (a tensor: no host sync). FSQ has no
        codebook to restart."""
        return torch.zeros((), device=self.usage.device)


class _CodebookQuantizer(Quantizer):
    """Shared nearest-neighbour machinery of VQ, EMA-VQ and NSVQ."""

    def __init__(self, dim: int, cfg: QuantizerConfig):
        super().__init__(dim, cfg, cfg.codebook_size, cfg.code_dim)
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, cfg.code_dim) / math.sqrt(cfg.code_dim))
        # codes are (re)initialised from the first training batch: with a random codebook at a
        # different scale than the encoder's first outputs, every input picks the same code and
        # the bottleneck collapses before training starts
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._init_checked = False

    def _data_init(self, z: torch.Tensor) -> None:
        if self._init_checked:
            return
        if not bool(self.initialized):  # one host sync, on the first training step only
            with torch.no_grad():
                flat = _gather(z.detach().reshape(-1, self.code_dim))
                pick = flat[torch.randperm(flat.shape[0], device=flat.device)[: self.codebook_size]]
                if pick.shape[0] < self.codebook_size:  # fewer rows than codes: reuse rows with noise
                    pick = pick[torch.randint(0, pick.shape[0], (self.codebook_size,), device=flat.device)]
                fresh = pick + 0.01 * flat.std() * torch.randn_like(pick)
                self._set_codes(torch.ones(self.codebook_size, dtype=torch.bool, device=flat.device), fresh.to(self._codes().dtype))
                self.initialized.fill_(True)
        self._init_checked = True

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._init_checked = False  # re-read the loaded flag
        super()._load_from_state_dict(*args, **kwargs)

    def _codes(self) -> torch.Tensor:
        if self.cfg.lookup == "cosine":
            return F.normalize(self.codebook, dim=-1)
        return self.codebook

    def _assign(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project, (first training batch: initialise codes from the data), find nearest codes."""
        z = self._normalized(self.proj_in(x), update=self.training)
        if self.training:
            self._data_init(z)
        idx, q = self.nearest(z)
        return z, idx, q

    def embed_indices(self, idx: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self._codes()[idx])

    def code_logits(self, z_cont: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        cb = self._codes().detach()
        d = z_cont.pow(2).sum(-1, keepdim=True) - 2 * z_cont @ cb.t() + cb.pow(2).sum(-1)
        return -d / temperature

    def _distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (rows of z, codes)."""
        cb = self._codes()
        flat = z.reshape(-1, z.shape[-1])
        return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]

    def nearest(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._distances(z).argmin(1)
        return idx.view(z.shape[:-1]), self._codes()[idx].view_as(z)

    def entropy_loss(self, z: torch.Tensor) -> torch.Tensor:
        """weight * (mean row entropy - entropy of the mean assignment), per token position, over
        the global batch. The temperature divides the squared distance: under cosine lookup that is
        2 - 2 cos, so T = 0.1 reads cosines on a scale of 0.05; under euclidean lookup it depends on
        the scale of z."""
        if not (self.training and self.cfg.entropy_weight > 0):
            return z.new_zeros(())
        B, K = z.shape[:2]
        p = torch.softmax(-self._distances(z).float() / self.cfg.entropy_temperature, -1).view(B, K, -1)
        row = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
        mean = p.mean(0)  # (K, C)
        if distributed():  # global mean in the forward pass; each rank's gradient flows through its own rows
            total = mean.detach().clone()
            dist.all_reduce(total)
            mean = mean + (total / dist.get_world_size() - mean).detach()
        batch = -(mean * torch.log(mean.clamp_min(1e-12))).sum(-1).mean()
        return self.cfg.entropy_weight * (row - batch)

    @torch.no_grad()
    def restart_dead_codes(self) -> torch.Tensor:
        if self._last_z is None or self.cfg.restart_every <= 0:
            return torch.zeros((), device=self.usage.device)
        flat = _gather(self._last_z.reshape(-1, self.code_dim))
        dead = self.usage < self.cfg.restart_threshold / self.codebook_size
        pick = flat[torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)]
        fresh = pick + 0.01 * flat.std() * torch.randn_like(pick)
        self._set_codes(dead, fresh.to(self._codes().dtype))
        self.usage.copy_(torch.where(dead, torch.full_like(self.usage, 1.0 / self.codebook_size), self.usage))
        return dead.sum()

    def _set_codes(self, dead: torch.Tensor, fresh: torch.Tensor) -> None:
        self.codebook.data.copy_(torch.where(dead[:, None], fresh, self.codebook.data))


class VQ(_CodebookQuantizer):
    """Classic VQ-VAE: straight-through estimator, codebook + beta * commitment loss."""

    def forward(self, x: torch.Tensor) -> QuantOut:
        z, idx, q = self._assign(x)
        loss = F.mse_loss(q, z.detach()) + self.cfg.beta * F.mse_loss(z, q.detach()) + self.entropy_loss(z)
        z_st = z + (q - z).detach()
        if self.training:
            self._last_z = z.detach()
        return QuantOut(self.proj_out(self._warm(z, z_st)), idx, z, loss, self._track(idx))


class EMAVQ(_CodebookQuantizer):
    """VQ whose codebook follows an EMA of assigned encoder outputs (no codebook gradient);
    statistics are summed over DDP ranks so every rank keeps the same codebook."""

    def __init__(self, dim: int, cfg: QuantizerConfig):
        super().__init__(dim, cfg)
        self.codebook.requires_grad_(False)
        self.register_buffer("cluster_size", torch.ones(cfg.codebook_size))
        self.register_buffer("embed_sum", self.codebook.detach().clone())

    def forward(self, x: torch.Tensor) -> QuantOut:
        z, idx, q = self._assign(x)
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx.reshape(-1), self.codebook_size).to(z.dtype)
                size = onehot.sum(0)
                embed = onehot.t() @ z.detach().reshape(-1, self.code_dim)
                if distributed():
                    dist.all_reduce(size)
                    dist.all_reduce(embed)
                d = self.cfg.ema_decay
                self.cluster_size.mul_(d).add_(size, alpha=1 - d)
                self.embed_sum.mul_(d).add_(embed, alpha=1 - d)
                n = self.cluster_size.sum()
                smoothed = (self.cluster_size + 1e-5) / (n + self.codebook_size * 1e-5) * n
                self.codebook.data.copy_(self.embed_sum / smoothed[:, None])
            self._last_z = z.detach()
        loss = self.cfg.beta * F.mse_loss(z, q.detach()) + self.entropy_loss(z)
        z_st = z + (q - z).detach()
        return QuantOut(self.proj_out(self._warm(z, z_st)), idx, z, loss, self._track(idx))

    def _set_codes(self, dead: torch.Tensor, fresh: torch.Tensor) -> None:
        # a restarted code gets a unit cluster so the next EMA update keeps it where it was put
        self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
        self.embed_sum.copy_(torch.where(dead[:, None], fresh * self.cluster_size[:, None], self.embed_sum))
        self.codebook.data.copy_(torch.where(dead[:, None], fresh, self.codebook.data))


class NSVQ(_CodebookQuantizer):
    """Noise-substitution VQ (Vali & Bäckström 2022; used by LAPA): during training the quantization
    error is replaced by noise of the same norm, z + ||z - q|| * n / ||n||, so gradients reach both
    the encoder and (through the norm) the codebook without a straight-through estimator."""

    def forward(self, x: torch.Tensor) -> QuantOut:
        z, idx, q = self._assign(x)
        if self.training:
            q = self._codes()[idx]  # differentiable w.r.t. the codebook
            err = (z - q).norm(dim=-1, keepdim=True)
            noise = global_draw(torch.randn, z.shape[0], *z.shape[1:], device=z.device, dtype=z.dtype)
            out = z + err * noise / noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self._last_z = z.detach()
        else:
            out = q
        return QuantOut(self.proj_out(self._warm(z, out)), idx, z, self.entropy_loss(z), self._track(idx))


class FSQ(Quantizer):
    """Finite scalar quantization (Mentzer et al. 2023): each code dim is bounded and rounded to
    `levels[i]` values with a straight-through estimator; the code is the mixed-radix index."""

    def __init__(self, dim: int, cfg: QuantizerConfig):
        levels = list(cfg.fsq_levels)
        super().__init__(dim, cfg, math.prod(levels), len(levels))
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.float32))
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.int64), 0)
        self.register_buffer("basis", basis)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        """Each dim squashed into an interval holding exactly L integers: (-L/2, L/2), shifted by
        1/2 for even L."""
        half = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.tan(offset / half)
        return torch.tanh(z + shift) * half - offset

    def _grid(self) -> torch.Tensor:
        """(codebook_size, dims) every code as its rounded values, in index order."""
        idx = torch.arange(self.codebook_size, device=self.levels.device)
        width = torch.div(self.levels, 2, rounding_mode="floor")
        return ((idx[:, None] // self.basis) % self.levels.long()) - width

    def code_logits(self, z_cont: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        b, grid = self._bounded(z_cont), self._grid()  # rounding each dim = the nearest grid point
        d = b.pow(2).sum(-1, keepdim=True) - 2 * b @ grid.t() + grid.pow(2).sum(-1)
        return -d / temperature

    def forward(self, x: torch.Tensor) -> QuantOut:
        z = self.proj_in(x)
        bounded = self._bounded(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        width = torch.div(self.levels, 2, rounding_mode="floor")
        digits = (torch.round(bounded) + width).long()  # 0 .. L-1 per dim
        idx = (digits * self.basis).sum(-1)
        out = rounded / width  # about [-1, 1]
        return QuantOut(self.proj_out(out), idx, z, z.new_zeros(()), self._track(idx))

    def embed_indices(self, idx: torch.Tensor) -> torch.Tensor:
        width = torch.div(self.levels, 2, rounding_mode="floor")
        digits = (idx[..., None] // self.basis) % self.levels.long()
        return self.proj_out((digits - width) / width)


def build_quantizer(dim: int, cfg: QuantizerConfig) -> Quantizer:
    return {"vq": VQ, "ema_vq": EMAVQ, "nsvq": NSVQ, "fsq": FSQ}[cfg.kind](dim, cfg)
