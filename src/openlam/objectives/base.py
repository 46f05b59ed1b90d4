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
# An objective that trains a module of its own by a separate optimiser (a discriminator) returns
# that module's loss in its logs under this key, with its graph; every other log is detached.
AUXILIARY = "auxiliary_loss"


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
    target over given episodes' pairs; the global batch size, the cameras each pair has and the
    number of latent tokens (for objectives that keep state per batch row)."""

    pairs_per_episode: dict[int, int]
    latent_dim: int
    action_stats: Callable[[list[int]], tuple[np.ndarray, np.ndarray]] | None = None
    batch_size: int = 0
    views: list[str] = field(default_factory=list)
    num_tokens: int = 0
    target_shape: tuple[int, ...] = ()  # one frame in the decoder's target space: (3, S, S) pixels or (N, F) features

    @property
    def episodes(self) -> list[int]:
        return sorted(self.pairs_per_episode)


class Objective(nn.Module, metaclass=abc.ABCMeta):
    name = "objective"
    decodes = True  # False: the decoder gets no gradient from this objective (DDP must allow unused parameters)

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Logs]:
        """Scalar loss and detached logs (scalars, or per-code counts under '*code_counts'); an
        objective with auxiliary modules adds their loss under AUXILIARY."""

    def auxiliary_param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups (params, lr, betas, weight_decay) of the modules this objective trains
        with its own optimiser step: kept out of the LAM's optimiser. None by default."""
        return []


class Composite(nn.Module):
    """Weighted sum of objectives; logs are prefixed with each objective's name."""

    def __init__(self, parts: list[tuple[float, Objective]]):
        super().__init__()
        self.weights = [w for w, _ in parts]
        self.parts = nn.ModuleList([o for _, o in parts])
        self.decodes = any(o.decodes for o in self.parts)

    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Logs]:
        """The weighted sum of the objectives' losses plus (unweighted) their auxiliary modules'
        losses, so one backward gives every parameter its gradient: an auxiliary module's loss
        only reaches that module (its inputs come detached) and the LAM's loss never reaches it
        (objectives read auxiliary modules through detached weights). logs['loss'] is the LAM's."""
        total, aux = None, None
        logs: Logs = {}
        for w, obj in zip(self.weights, self.parts):
            loss, part = obj(model, batch)
            total = w * loss if total is None else total + w * loss
            if AUXILIARY in part:
                a = part.pop(AUXILIARY)
                aux = a if aux is None else aux + a
                part[AUXILIARY] = a.detach()
            logs.update({f"{obj.name}/{k}": v for k, v in part.items()})
        assert total is not None
        logs["loss"] = total.detach()
        return (total if aux is None else total + aux), logs

    def auxiliary_param_groups(self) -> list[dict[str, Any]]:
        return [g for obj in self.parts for g in obj.auxiliary_param_groups()]


def build_objective(cfgs: list[ObjectiveConfig], context: ObjectiveContext | None = None) -> Composite:
    from openlam.config import from_dict
    from openlam.objectives.action import ActionConfig, ActionSupervision
    from openlam.objectives.cross_view import CrossView, CrossViewConfig
    from openlam.objectives.cycle import ActionCycle, CycleConfig
    from openlam.objectives.motion_focused import MotionFocused, MotionFocusedConfig
    from openlam.objectives.reconstruction import Reconstruction, ReconstructionConfig

    registry = {
        "reconstruction": (lambda c: Reconstruction(c), ReconstructionConfig),
        "cross_view": (lambda c: CrossView(c), CrossViewConfig),
        "action": (lambda c: ActionSupervision(c, context), ActionConfig),
        "cycle": (lambda c: ActionCycle(c, context), CycleConfig),
        "motion_focused": (lambda c: MotionFocused(c), MotionFocusedConfig),
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
