"""MVP-LAM cross-viewpoint reconstruction (seed 000): on V synchronized views of the same
(t, t+H), infer z^v from each view's pair; the self-view loss predicts o_t+H^v from (o_t^v, z^v),
the cross-view loss predicts o_t+H^v from (o_t^v, z^ṽ), ṽ != v. A latent that only explains its
own camera's pixels pays the cross-view loss, so viewpoint-specific content is discouraged.

Works with any encoder / quantizer / decoder / target of the LAM core: it calls the model's
forward with `swaps` (the partner rows), so DDP and torch.compile wrap every prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.objectives.base import Logs, Objective
from openlam.objectives.reconstruction import stack_views


@dataclass
class CrossViewConfig:
    views_per_step: int | None = None  # V views drawn per step from the batch's cameras; None: all of them
    partners: int | None = None  # cross terms per view: None = every other view (the V x (V-1) grid), k = k partners
    self_weight: float = 1.0
    cross_weight: float = 1.0
    loss: Literal["mse", "l1"] = "mse"

    def validate(self) -> None:
        if self.views_per_step is not None and self.views_per_step < 2:
            raise ConfigError("cross_view: views_per_step must be >= 2 (or null for all views)")
        if self.partners is not None and self.partners < 1:
            raise ConfigError("cross_view: partners must be >= 1 (or null for every other view)")


def _batch_generator(batch: PairBatch) -> torch.Generator:
    """Randomness that depends only on the batch's pairs (a host-side key, no device sync): the
    same pairs draw the same views and partners whatever the resume point. Under DDP each rank
    draws for its own slice, so with views_per_step / partners N ranks are not bit-equal to one
    process (the full grid over all views is)."""
    return torch.Generator().manual_seed(batch.key)


class CrossView(Objective):
    name = "mvp"

    def __init__(self, cfg: CrossViewConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    def _err(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample error (B*V,)."""
        e = (pred - target) ** 2 if self.cfg.loss == "mse" else (pred - target).abs()
        return e.flatten(1).mean(1)

    def forward(self, model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        all_views = batch.views
        if len(all_views) < 2:
            raise ConfigError(f"cross_view objective needs >= 2 synchronized views per pair; the batch has {all_views} "
                              "(set data.views to 2+ cameras)")
        V = len(all_views) if self.cfg.views_per_step is None else min(self.cfg.views_per_step, len(all_views))
        g = _batch_generator(batch) if V < len(all_views) or self.cfg.partners is not None else None
        views = all_views if V == len(all_views) else [all_views[i] for i in sorted(torch.randperm(len(all_views), generator=g)[:V].tolist())]
        B = len(batch)
        offsets = list(range(1, V))  # partner of view v is view (v + o) mod V
        if self.cfg.partners is not None and self.cfg.partners < V - 1:
            offsets = [offsets[i] for i in torch.randperm(V - 1, generator=g)[: self.cfg.partners].tolist()]
        x = stack_views(batch, views)  # rows b * V + v
        rows = torch.arange(B * V, device=x.device).view(B, V)
        swaps = [torch.roll(rows, shifts=-o, dims=1).flatten() for o in offsets]  # row (b, v) -> (b, (v + o) % V)
        out = model(x, swaps=swaps)  # through forward: DDP and compile see every prediction
        self_err = self._err(out.pred, out.target).view(B, V)
        cross_err = torch.stack([self._err(p, out.target).view(B, V) for p in out.swapped]).mean(0)  # mean over partners
        self_loss, cross_loss = self_err.mean(), cross_err.mean()
        q = out.quant
        loss = self.cfg.self_weight * self_loss + self.cfg.cross_weight * cross_loss + q.loss
        logs: Logs = {"self_error": self_loss.detach(), "cross_error": cross_loss.detach(), "quant_loss": q.loss.detach(),
                      "code_counts": q.counts}
        idx = q.indices.view(B, V, -1)
        C = q.counts.shape[0]
        for v in all_views:  # fixed keys every step: zeros for a view not drawn this step
            if v in views:
                k = views.index(v)
                logs[f"{v}/code_counts"] = F.one_hot(idx[:, k].flatten(), C).sum(0).to(q.counts.dtype)
                if V == len(all_views):  # per-view errors only when every view is in every step (else no mean)
                    logs[f"self_error/{v}"] = self_err[:, k].mean().detach()
                    logs[f"cross_error/{v}"] = cross_err[:, k].mean().detach()
            else:
                logs[f"{v}/code_counts"] = torch.zeros_like(q.counts)
        return loss, logs
