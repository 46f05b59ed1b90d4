"""Action supervision: a linear head on the continuous (pre-quantization) latent predicts the
action target over the gap, standardised per dim, with gradient into the LAM.

One module, two uses:
- `fraction: 1.0` as the only objective is the supervised inverse-dynamics reference, the ceiling
  of the evaluation: the same encoder, data, splits and training engine as the LAM it is compared
  with, trained on the true actions instead of reconstruction.
- a small `fraction` and weight beside reconstruction is light supervision (LAOM): only pairs from
  a fixed subset of training episodes, the labelled ones, carry this loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.objectives.base import Logs, Objective, ObjectiveContext
from openlam.objectives.reconstruction import pair_rows


@dataclass
class ActionConfig:
    fraction: float = 1.0  # share of training episodes whose actions are used (at least one episode)
    seed: int = 0  # which episodes are labelled
    views: Literal["all", "random", "first"] = "all"  # as in reconstruction

    def validate(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"action objective: fraction must be in (0, 1], got {self.fraction}")


def labelled_episodes(episodes: list[int], fraction: float, seed: int) -> list[int]:
    """max(1, round(fraction * n)) training episodes, drawn by a seeded permutation."""
    n = max(1, round(fraction * len(episodes)))
    return sorted(int(e) for e in np.random.default_rng(seed).permutation(sorted(episodes))[:n])


class ActionSupervision(Objective):
    name = "action"
    decodes = False

    def __init__(self, cfg: ActionConfig, context: ObjectiveContext | None):
        super().__init__()
        cfg.validate()
        if context is None or context.action_stats is None:
            raise ConfigError("objectives: kind 'action' needs training data with actions; this dataset has none")
        self.cfg = cfg
        self.labelled = labelled_episodes(context.episodes, cfg.fraction, cfg.seed)
        pairs = context.pairs_per_episode
        self.share = sum(pairs[e] for e in self.labelled) / sum(pairs.values())  # share of training pairs labelled
        mean, std = context.action_stats(self.labelled)  # only what the labelled episodes reveal
        mask = torch.zeros(max(context.episodes) + 1, dtype=torch.bool)
        mask[self.labelled] = True
        self.register_buffer("is_labelled", mask, persistent=False)
        std = np.where(std > 1e-8, std, 1.0)  # a constant dim adds nothing
        # persistent: saved with the run, so a resumed run keeps the statistics it started with
        self.register_buffer("action_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("action_std", torch.as_tensor(std, dtype=torch.float32))
        self.head = nn.Linear(context.latent_dim, len(mean))

    def forward(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        if batch.action is None:
            raise ConfigError("action objective: the batch has no action targets (dataset without actions)")
        ep = batch.episode
        labelled = (ep < len(self.is_labelled)) & self.is_labelled[ep.clamp_max(len(self.is_labelled) - 1)]
        x, per = pair_rows(batch, self.cfg.views)  # rows b * per + v
        # every row is encoded and the unlabelled ones weigh 0: no data-dependent branch or row
        # selection (no host sync, one graph under compile, every head parameter in DDP's graph)
        z = model.encode_continuous(x).flatten(1)  # (B * views, K * code_dim)
        target = ((batch.action - self.action_mean) / self.action_std).repeat_interleave(per, 0)
        w = labelled.repeat_interleave(per, 0).to(z.dtype)
        per_row = (self.head(z) - target).pow(2).mean(1)
        # normalised by the expected, not the actual, number of labelled rows: the loss is a sum over
        # rows, so DDP's average over equal per-rank batches equals one process's loss, and its
        # expectation is the mean error over labelled pairs (exactly that when fraction = 1)
        loss = (per_row * w).sum() / (len(w) * self.share)
        return loss, {"error": loss.detach(), "labelled_rows": w.sum().detach()}
