"""A local-global discriminator (CycleMimic): a small transformer over the patches of a frame in the
decoder's target space (pixels, or backbone features), with one logit per patch (local: texture,
artefacts, an action "watermark" hidden in a corner) and one for the pooled frame (global: style,
layout). Trained by its own optimiser to tell real o_t+H from decoder outputs; the decoder is
trained to fool it with the non-saturating GAN loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from openlam.errors import ConfigError
from openlam.models.blocks import Block, init_weights


@dataclass
class DiscriminatorConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 4
    patch: int = 8  # pixel targets: patch size in pixels (feature targets use the backbone's patches)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # the usual GAN setting
    weight_decay: float = 0.0


Mode = Literal["local", "local_global"]


class LocalGlobalDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, target_shape: tuple[int, ...], mode: Mode = "local_global"):
        """target_shape: (3, S, S) for pixel targets, (N, F) for feature targets. mode local has no
        global head (a parameter no loss reaches would stall DDP's gradient reduction)."""
        super().__init__()
        self.pixels = len(target_shape) == 3
        if self.pixels:
            size = target_shape[-1]
            if size % cfg.patch:
                raise ConfigError(f"cycle objective: discriminator_net.patch {cfg.patch} does not divide the image size {size}")
            self.embed: nn.Module = nn.Conv2d(3, cfg.dim, cfg.patch, cfg.patch)
            num_patches = (size // cfg.patch) ** 2
        else:
            num_patches, feat_dim = target_shape
            self.embed = nn.Linear(feat_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, num_patches, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.local_head = nn.Linear(cfg.dim, 1)
        self.global_head = nn.Linear(cfg.dim, 1) if mode == "local_global" else None
        for m in self.children():
            init_weights(m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x: (B, 3, S, S) pixels or (B, N, F) features -> patch logits (B, P), and global logits
        (B,) in local_global mode."""
        h = self.embed(x).flatten(2).transpose(1, 2) if self.pixels else self.embed(x)
        h = h + self.pos
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        local = self.local_head(h)[..., 0]
        return (local,) if self.global_head is None else (local, self.global_head(h.mean(1))[..., 0])


def discriminator_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-log D(real) - log(1 - D(fake)) averaged over patches (and the global logit), as softplus of
    logits; fake must come detached (only the discriminator learns from this)."""
    lr, lf = disc(real), disc(fake)
    return sum(F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(lr, lf)) / len(lr)


def generator_loss(disc: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating -log D(fake), through a copy of the discriminator whose weights are detached:
    the gradient reaches the frames (and the decoder that made them) and never the discriminator."""
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    levels = torch.func.functional_call(disc, frozen, (fake,))
    return sum(F.softplus(-f).mean() for f in levels) / len(levels)
