"""Motion-Focused LAM's mask-guided reconstruction (seed 004) for a model with a background
bottleneck (model.background): one shared decoder, three paths.

- full: action + background tokens + o_t -> o_t+H, scored everywhere (the usual reconstruction);
- action: action tokens + o_t -> o_t+H, scored on the foreground (the robot), so the action
  tokens must carry how the manipulator moves;
- background: background tokens alone -> o_t+H, scored on the rest, so scene change has its own
  slots and need not leak into the action tokens;
plus both quantizers' losses. Foreground = the mask at t or at t+H (where the robot was or is).
Masks come from the dataset: LeRobot features observation.masks.<camera> (the Meta-World generator
writes robot masks), or mask videos beside a video folder's clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.models.global_rng import distributed
from openlam.objectives.base import Logs, Objective
from openlam.objectives.reconstruction import select_views


@dataclass
class MotionFocusedConfig:
    views: Literal["all", "random", "first"] = "random"  # as in reconstruction
    full_weight: float = 1.0
    action_weight: float = 1.0
    background_weight: float = 1.0

    def validate(self) -> None:
        if min(self.full_weight, self.action_weight, self.background_weight) < 0:
            raise ConfigError("motion_focused objective: full_weight, action_weight and background_weight must be >= 0")


def _rows(batch: PairBatch, views: Literal["all", "random", "first"]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (rows, 2, 3, S, S) uint8 and their masks (rows, 2, S, S) bool, chosen as
    reconstruction's pair_rows chooses them."""
    use = batch.views[:1] if views == "first" else batch.views
    missing = [v for v in use if v not in batch.masks]
    if missing:
        raise ConfigError(f"motion_focused objective: no foreground masks for camera(s) {missing} (masks for {sorted(batch.masks)}); "
                          "a LeRobot dataset carries them as video features observation.masks.<camera> (the Meta-World "
                          "generator writes them), a video folder as <clip>.mask.mp4 beside each clip")
    return select_views(batch, batch.frames, views), select_views(batch, batch.masks, views)


def _region_weights(mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(rows, S, S) foreground -> weights in target space: per pixel (rows, 1, S, S) for pixel
    targets, the foreground share of each patch (rows, N, 1) for feature targets."""
    m = mask.float()[:, None]
    if target.dim() == 4:
        return m
    n = target.shape[1]
    g = int(round(n**0.5))
    return F.adaptive_avg_pool2d(m, (g, g)).flatten(2).transpose(1, 2)


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the weighted region of the global batch (0 when it is empty). The
    region's size is summed over DDP ranks (it depends on the masks only, not on parameters), so
    the ranks' averaged gradient is one process's: a per-rank ratio of sums would not be."""
    err = (pred - target).pow(2) * w
    per = pred[0].numel() / w[0].numel()  # channels (or features) per weighted element
    size = (w.sum() * per).detach()
    if distributed():
        world = torch.distributed.get_world_size()
        size = size.clone()
        torch.distributed.all_reduce(size)
        size = size / world
    return err.sum() / size.clamp_min(1.0)


class MotionFocused(Objective):
    name = "mf"

    def __init__(self, cfg: MotionFocusedConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg

    def forward(self, model: torch.nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        if getattr(model, "background_quantizer", None) is None:
            raise ConfigError("motion_focused objective: the model has no background bottleneck; set model.background "
                              "(e.g. {kind: vq, num_tokens: 4, codebook_size: 16, code_dim: 32})")
        frames, masks = _rows(batch, self.cfg.views)
        x = frames.float().div(127.5).sub(1.0)
        enc = model.encode_pair(x)
        target = enc.space[:, 1]
        fg = _region_weights(masks[:, 0] | masks[:, 1], target)
        full = F.mse_loss(model.predict(enc, enc.quant.z_q), target)
        action = _weighted_mse(model.predict(enc, enc.quant.z_q, background=False), target, fg)
        background = _weighted_mse(model.predict_background(enc), target, 1 - fg)
        assert enc.background is not None
        quant = enc.quant.loss + enc.background.loss
        c = self.cfg
        loss = c.full_weight * full + c.action_weight * action + c.background_weight * background + quant
        return loss, {"full_error": full.detach(), "action_error": action.detach(), "background_error": background.detach(),
                      "foreground_share": fg.mean().detach(), "quant_loss": quant.detach(),
                      "code_counts": enc.quant.counts, "background/code_counts": enc.background.counts}
