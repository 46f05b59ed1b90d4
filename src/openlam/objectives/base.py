"""Objective protocol, per-objective configs and weighted composition."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

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


class Objective(nn.Module, metaclass=abc.ABCMeta):
    name = "objective"

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Logs]:
        """Scalar loss and detached logs (scalars, or per-code counts under '*code_counts')."""


class Composite(nn.Module):
    """Weighted sum of objectives; logs are prefixed with each objective's name."""

    def __init__(self, parts: list[tuple[float, Objective]]):
        super().__init__()
        self.weights = [w for w, _ in parts]
        self.parts = nn.ModuleList([o for _, o in parts])

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


def build_objective(cfgs: list[ObjectiveConfig]) -> Composite:
    from openlam.config import from_dict
    from openlam.objectives.cross_view import CrossView, CrossViewConfig
    from openlam.objectives.reconstruction import Reconstruction, ReconstructionConfig

    registry = {"reconstruction": (Reconstruction, ReconstructionConfig), "cross_view": (CrossView, CrossViewConfig)}
    if not cfgs:
        raise ConfigError("objectives: need at least one objective")
    parts = []
    for i, c in enumerate(cfgs):
        if c.kind not in registry:
            raise ConfigError(f"objectives[{i}].kind: '{c.kind}' is not known; choose one of {sorted(registry)}")
        cls, cfg_cls = registry[c.kind]
        parts.append((c.weight, cls(from_dict(cfg_cls, c.options, f"objectives[{i}].options"))))
    return Composite(parts)
