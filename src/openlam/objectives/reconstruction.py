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
    views: Literal["all", "first"] = "all"  # all: every view is an independent sample (single-view LAM)
    loss: Literal["mse", "l1"] = "mse"


def stack_views(batch: PairBatch, views: list[str]) -> torch.Tensor:
    """(B, 2, 3, S, S) uint8 per view -> (B*V, 2, 3, S, S) float in [-1, 1], view-major per sample."""
    x = torch.stack([batch.frames[v] for v in views], 1)
    return normalize(x.flatten(0, 1))


class Reconstruction(Objective):
    name = "recon"

    def __init__(self, cfg: ReconstructionConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        views = batch.views if self.cfg.views == "all" else batch.views[:1]
        out = model(stack_views(batch, views))
        err = F.mse_loss(out.pred, out.target) if self.cfg.loss == "mse" else F.l1_loss(out.pred, out.target)
        loss = err + out.quant.loss
        return loss, {"error": err.detach(), "quant_loss": out.quant.loss.detach(), "code_counts": out.quant.counts}
