"""TrainConfig: everything that defines a training run; saved into the run folder."""

from __future__ import annotations

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


@dataclass
class TrainConfig:
    model: LAMConfig = field(default_factory=LAMConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="runs/demo/data"))
    objectives: list[ObjectiveConfig] = field(default_factory=lambda: [ObjectiveConfig()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    batch_size: int = 32  # global: split evenly over DDP ranks
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    ema_decay: float = 0.0  # 0: no EMA weights
    seed: int = 0
    deterministic: bool = False  # bitwise-reproducible kernels (slower); needed for exact resume checks
    device: str = "auto"  # auto: cuda if available, else cpu
    out: str = "runs/train"
    log_every: int = 10
    preview_every: int = 200  # 0: only at the end
    eval_every: int = 0  # held-out reconstruction vs copy-last-frame; 0: only at the end
    eval_batches: int = 16
    probe_every: int = 0  # online linear probe of the latent on val episodes every N steps (and at the end); 0: off
    probe_pairs: int = 2048  # fixed train pairs the probe is fit on (and at most this many val pairs scored)
    ckpt_every: int = 500
    keep_last: int = 3
    time_limit_s: float = 0.0  # stop (with a checkpoint) after this much training time; 0: none

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch_size must be >= 1")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise ConfigError("log_every and ckpt_every must be >= 1")
