"""Objective protocol, per-objective configs and weighted composition."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from openlam.errors import ConfigError

Logs = dict[str, torch.Tensor]


@dataclass
class ObjectiveConfig:
    """kind selects the objective; options are that objective's own typed config (strict keys)."""

    kind: str = "reconstruction"
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveContext:
    """What the trainer tells objectives (they never load data nor build models): the training
    split's pairs per episode, the width of the model's continuous latent (num_tokens x the
    quantizer's code width) and, for data with actions, the per-dim mean / std of the action
    target over given episodes' pairs."""

    pairs_per_episode: dict[int, int]
    latent_dim: int
    action_stats: Callable[[list[int]], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def episodes(self) -> list[int]:
        return sorted(self.pairs_per_episode)


class Objective(nn.Module, metaclass=abc.ABCMeta):
    name = "objective"
    decodes = True  # False: the decoder gets no gradient from this objective (DDP must allow unused parameters)

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Logs]:
        """Scalar loss and detached logs (scalars, or per-code counts under '*code_counts')."""


class Composite(nn.Module):
    """Weighted sum of objectives; logs are prefixed with each objective's name."""

    def __init__(self, parts: list[tuple[float, Objective]]):
        super().__init__()
        self.weights = [w for w, _ in parts]
        self.parts = nn.ModuleList([o for _, o in parts])
        self.decodes = any(o.decodes for o in self.parts)

    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Logs]:
        total = None
        logs: Logs = {}
        for w, obj in zip(self.weights, self.parts):
            loss, part = obj(model, batch)
            total = w * loss if total is None else total + w * loss
            logs.update({f"{obj.name}/{k}": v for k, v in part.items()})
        assert total is not None
        logs["loss"] = total.detach()
        return total, logs


def build_objective(cfgs: list[ObjectiveConfig], context: ObjectiveContext | None = None) -> Composite:
    from openlam.config import from_dict
    from openlam.objectives.action import ActionConfig, ActionSupervision
    from openlam.objectives.cross_view import CrossView, CrossViewConfig
    from openlam.objectives.reconstruction import Reconstruction, ReconstructionConfig

    registry = {
        "reconstruction": (lambda c: Reconstruction(c), ReconstructionConfig),
        "cross_view": (lambda c: CrossView(c), CrossViewConfig),
        "action": (lambda c: ActionSupervision(c, context), ActionConfig),
    }
    if not cfgs:
        raise ConfigError("objectives: need at least one objective")
    parts = []
    for i, c in enumerate(cfgs):
        if c.kind not in registry:
            raise ConfigError(f"objectives[{i}].kind: '{c.kind}' is not known; choose one of {sorted(registry)}")
        make, cfg_cls = registry[c.kind]
        parts.append((c.weight, make(from_dict(cfg_cls, c.options, f"objectives[{i}].options"))))
    return Composite(parts)
