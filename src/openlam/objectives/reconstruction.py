"""Reconstruction (LAPA / Genie / UniVLA stage 1): predict o_t+H from o_t and the quantized latent
action inferred from (o_t, o_t+H), in pixel or backbone-feature space, plus the quantizer's own loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from openlam.data.pairs import PairBatch
from openlam.models.lam import normalize
from openlam.objectives.base import Logs, Objective


@dataclass
class ReconstructionConfig:
    # all: every view of every pair is a sample; random: one view per pair (hash of episode and t, so
    # deterministic), V times cheaper; first: always the first view
    views: Literal["all", "random", "first"] = "all"
    loss: Literal["mse", "l1"] = "mse"


def stack_views(batch: PairBatch, views: list[str]) -> torch.Tensor:
    """(B, 2, 3, S, S) uint8 per view -> (B*V, 2, 3, S, S) float in [-1, 1], view-major per sample."""
    x = torch.stack([batch.frames[v] for v in views], 1)
    return normalize(x.flatten(0, 1))


def select_views(batch: PairBatch, per_view: dict[str, torch.Tensor], views: Literal["all", "random", "first"]) -> torch.Tensor:
    """Rows of per-view tensors (B, ...) as an objective reads them: every view (view-major per
    pair), view (episode * 7919 + t) mod V of each pair, or the first view. One rule for frames and
    for anything aligned with them (masks)."""
    use = batch.views[:1] if views == "first" else batch.views
    x = torch.stack([per_view[v] for v in use], 1)
    if views == "random":
        pick = (batch.episode * 7919 + batch.t) % len(use)
        return x[torch.arange(x.shape[0], device=x.device), pick]
    return x.flatten(0, 1)


def one_view_per_pair(batch: PairBatch) -> torch.Tensor:
    """(B, 2, 3, S, S) float: view (episode * 7919 + t) mod V of each pair."""
    return normalize(select_views(batch, batch.frames, "random"))


def pair_rows(batch: PairBatch, views: Literal["all", "random", "first"]) -> tuple[torch.Tensor, int]:
    """The pairs an objective reads, (B * per, 2, 3, S, S) float, and `per` rows per pair: every
    view (view-major per pair), one view per pair, or the first view."""
    if views == "random":
        return one_view_per_pair(batch), 1
    chosen = batch.views if views == "all" else batch.views[:1]
    return stack_views(batch, chosen), len(chosen)


class Reconstruction(Objective):
    name = "recon"

    def __init__(self, cfg: ReconstructionConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        x, _ = pair_rows(batch, self.cfg.views)
        out = model(x)
        err = F.mse_loss(out.pred, out.target) if self.cfg.loss == "mse" else F.l1_loss(out.pred, out.target)
        loss = err + out.quant.loss
        return loss, {"error": err.detach(), "quant_loss": out.quant.loss.detach(), "code_counts": out.quant.counts}
