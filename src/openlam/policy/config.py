"""Policy configs: the model (vision, instruction, trunk), its action head, and a training run of
stage 2 (`openlam pretrain`: latent tokens or, as the upper bound, real actions on many videos) or
stage 3 (`openlam finetune`: real actions on a few demos, from a pretrained policy or from scratch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from openlam.data.pairs import GapConfig
from openlam.errors import ConfigError
from openlam.train.config import RunConfig


@dataclass
class PolicyModelConfig:
    image_size: int = 64
    # patch tokens from a linear patch embedding (vit) or from log2(patch) stride-2 convolutions
    # (cnn: a locality prior; on the synthetic goal-squares task, image only, 1,000 steps, one seed,
    # it reached held-out NMSE 0.75 where the linear patch embedding stayed at 1.77)
    stem: Literal["vit", "cnn"] = "vit"
    patch: int = 8
    dim: int = 128
    heads: int = 4
    vision_layers: int = 2  # over the image patches alone (the part intent-perception decoupling freezes a copy of)
    trunk_layers: int = 2  # over [instruction, patches, readout queries]
    readout: int = 4  # learned readout queries: the trunk's intent features
    latent_layers: int = 1  # the autoregressive latent-token head (causal, cross-attends to the trunk)
    max_words: int = 16  # instruction words kept (the rest is cut, with a warning at training time)

    def validate(self) -> None:
        if self.image_size % self.patch:
            raise ConfigError(f"model.image_size {self.image_size} is not a multiple of model.patch {self.patch}")
        if self.stem == "cnn" and (self.patch < 2 or self.patch & (self.patch - 1)):
            raise ConfigError(f"model.stem=cnn downsamples by 2 per layer: model.patch must be a power of 2 >= 2, got {self.patch}")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim {self.dim} is not divisible by model.heads {self.heads}")
        if min(self.vision_layers, self.trunk_layers, self.readout, self.latent_layers, self.max_words) < 1:
            raise ConfigError("model.vision_layers, trunk_layers, readout, latent_layers and max_words must be >= 1")


@dataclass
class ActionHeadConfig:
    kind: Literal["bins", "flow"] = "bins"
    chunk: int = 1  # actions predicted per observation (executed open-loop, then the policy replans)
    bins: int = 32  # bins head: equal-frequency bins per action dim, edges from the training actions
    hidden: int = 256  # width of the head's MLP
    flow_steps: int = 10  # flow head: Euler steps from noise at inference
    # intent-perception decoupling (Motion-Focused LAM): a frozen copy of the initial policy's vision
    # encoder also feeds the head, so perception is not overwritten by the intent the trunk learns
    perception: bool = False
    state: bool = False  # proprioception (observation.state) to the head

    def validate(self) -> None:
        if self.chunk < 1 or self.bins < 2 or self.hidden < 1 or self.flow_steps < 1:
            raise ConfigError("head: need chunk >= 1, bins >= 2, hidden >= 1, flow_steps >= 1")


@dataclass
class PolicyDataConfig:
    labels: str | None = None  # target=latent: an `openlam label` folder (its frame cache comes with it)
    cache: str | None = None  # target=actions: a frame cache (`openlam cache`, or a run's <out>/cache)
    split: str = "train"
    views: list[str] | None = None  # cameras the policy learns from; None: every camera of the split
    episodes_per_task: int | None = None  # few demos: the first N (nested, seeded) of each task; None: all
    subset_seed: int = 0
    # a control for latent pretraining: the labels' token tuples permuted across the rows (seeded by
    # subset_seed), so stage 2 sees the same targets with no relation to the frames; any gain it gives
    # over scratch is the gain of pretraining as such, not of the latent actions
    shuffle_tokens: bool = False
    workers: int = 0

    def validate(self) -> None:
        if (self.labels is None) == (self.cache is None):
            raise ConfigError("data: give exactly one of data.labels (latent targets) or data.cache (action targets)")
        if self.shuffle_tokens and self.labels is None:
            raise ConfigError("data.shuffle_tokens permutes latent labels: it needs data.labels")
        if self.episodes_per_task is not None and self.episodes_per_task < 1:
            raise ConfigError(f"data.episodes_per_task must be >= 1 or null (all), got {self.episodes_per_task}")


@dataclass
class PolicyTrainConfig(RunConfig):
    model: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    head: ActionHeadConfig = field(default_factory=ActionHeadConfig)
    data: PolicyDataConfig = field(default_factory=lambda: PolicyDataConfig(cache="runs/demo/cache"))
    target: Literal["latent", "actions"] = "latent"
    init: str | None = None  # a pretrained policy (run or model folder) to start from; None: scratch
    # what the labels must be: refused before training when they were made otherwise
    expect_gap: GapConfig | None = None
    expect_lam: str | None = None  # the LAM (run or model folder) the labels must come from
    out: str = "runs/policy"

    def validate(self) -> None:
        super().validate()
        if (self.target == "latent") != (self.data.labels is not None):
            raise ConfigError(f"target={self.target}: latent targets come from data.labels, action targets from data.cache")
