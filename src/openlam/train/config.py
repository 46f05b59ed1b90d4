"""TrainConfig: everything that defines a training run; saved into the run folder."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from openlam.data.pairs import GapConfig
from openlam.errors import ConfigError
from openlam.models.config import LAMConfig
from openlam.objectives.base import ObjectiveConfig


@dataclass
class DataConfig:
    dataset: str | None = None  # LeRobot dataset or video folder; decoded once into <out>/cache
    cache: str | None = None  # or an existing frame cache (openlam cache), used as is
    views: list[str] | None = None  # None: the split's cameras
    train_split: str = "train"
    val_split: str = "val"
    gap: GapConfig = field(default_factory=lambda: GapConfig(seconds=None, frames=4))
    # train on N episodes of the train split (task-balanced, nested: N + 1 adds one), for data-size
    # curves on one generated dataset; val/test are unchanged. None: every train episode
    train_episodes: int | None = None
    workers: int = 2
    fps: float | None = None  # for image-sequence folders

    def validate(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0 (0: load in the training process), got {self.workers}")
        if self.train_episodes is not None and self.train_episodes < 1:
            raise ConfigError(f"data.train_episodes must be >= 1 or null (all), got {self.train_episodes}")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"data.fps must be > 0 or null, got {self.fps}")
        if (self.dataset is None) == (self.cache is None):
            raise ConfigError("data: give exactly one of data.dataset (to cache) or data.cache (already cached)")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0: off

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"optim.lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0:
            raise ConfigError(f"optim.weight_decay, optim.grad_clip (0: off) and optim.warmup_steps must be >= 0, got "
                              f"{self.weight_decay}, {self.grad_clip}, {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class RunConfig:
    """What the training engine needs of any run (a LAM's, a policy's)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    batch_size: int = 32  # global: split evenly over DDP ranks
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    seed: int = 0
    deterministic: bool = False  # bitwise-reproducible kernels (slower); needed for exact resume checks
    device: str = "auto"  # auto: cuda if available, else cpu
    out: str = "runs/train"
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    time_limit_s: float = 0.0  # stop (with a checkpoint) after this much training time; 0: none

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise ConfigError("log_every and ckpt_every must be >= 1")
        for key in ("keep_last", "time_limit_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0 (0: {'keep all' if key == 'keep_last' else 'off'}), got {getattr(self, key)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass
class TrainConfig(RunConfig):
    """A LAM's training run (stage 1)."""

    model: LAMConfig = field(default_factory=LAMConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="runs/demo/data"))
    objectives: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    ema_decay: float = 0.0  # 0: no EMA weights
    preview_every: int = 200  # 0: only at the end
    eval_every: int = 0  # held-out reconstruction vs copy-last-frame; 0: only at the end
    eval_batches: int = 16
    probe_every: int = 0  # online linear probe of the latent on val episodes every N steps (and at the end); 0: off
    probe_pairs: int = 2048  # fixed train pairs the probe is fit on (and at most this many val pairs scored)

    def validate(self) -> None:
        super().validate()
        if self.eval_batches < 1 or self.probe_pairs < 1:
            raise ConfigError("eval_batches and probe_pairs must be >= 1")
        for key in ("preview_every", "eval_every", "probe_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0 (0: off), got {getattr(self, key)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no EMA weights), got {self.ema_decay}")
