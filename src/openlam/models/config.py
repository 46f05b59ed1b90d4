"""Typed configs of a latent action model. Every field is validated; the preset YAMLs in configs/
fill them for LAPA, Genie and UniVLA-style models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from openlam.errors import ConfigError


@dataclass
class EncoderConfig:
    kind: Literal["pixel", "backbone"] = "pixel"
    dim: int = 256
    layers: int = 4  # spatio-temporal blocks: one spatial + one (causal) temporal attention each
    heads: int = 8
    mlp_ratio: float = 4.0
    patch: int = 8  # pixel encoder patch size
    # difference: LAPA's e2 - e1 pooled to K regions; queries: learned action queries over both
    # frames' tokens (UniVLA); motion_queries: the queries read o_t's tokens and the differences
    # e2 - e1, so the motion is in what they attend to from the first step (plain queries start as
    # a near-uniform average of two nearly identical frames, which carries almost no motion)
    readout: Literal["difference", "queries", "motion_queries"] = "difference"
    # frozen backbone (kind = backbone): a DINOv2 ViT through transformers
    backbone_path: str | None = None  # local HF model dir or .safetensors file; None = random init (tests)
    backbone_config: dict[str, Any] = field(default_factory=dict)  # Dinov2Config fields for random init
    backbone_image_size: int = 224  # frames are resized to this before the backbone


@dataclass
class QuantizerConfig:
    kind: Literal["vq", "ema_vq", "nsvq", "fsq"] = "nsvq"
    num_tokens: int = 4
    codebook_size: int = 8
    code_dim: int = 32
    # nearest-code search: euclidean, or cosine (z and codes l2-normalised before the lookup, as in
    # ViT-VQGAN): the encoder cannot shrink z towards one code; or standardized (each dim of z
    # centred and scaled by batch statistics, running ones at evaluation): the drift every input
    # shares cannot carry the batch into one code's cell, the usual way a small VQ collapses
    lookup: Literal["euclidean", "cosine", "standardized"] = "euclidean"
    # codebook-usage entropy term (as in LFQ / MAGVIT-v2): weight * (mean per-row entropy of the soft
    # assignment softmax(-distance / temperature) - entropy of its batch mean). It rewards spreading
    # the batch over many codes, which a collapsing encoder (near-identical outputs for every input)
    # can only do by making its outputs depend on the input. 0: off
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.1
    beta: float = 0.25  # commitment weight (vq, ema_vq)
    ema_decay: float = 0.99  # ema_vq codebook decay
    fsq_levels: list[int] = field(default_factory=lambda: [8])  # fsq: levels per code dim; codebook = prod
    restart_every: int = 100  # dead-code restart period in steps (0: never); not for fsq
    restart_threshold: float = 0.03  # a code is dead if its recent usage < threshold * uniform share
    # for the first N training steps the decoder reads the continuous z instead of its code (codes
    # are still assigned, counted and trained): a decoder that learns to read the latent while it is
    # informative, and codes that settle on where the encoder's outputs are, before the bottleneck
    # closes. A straight-through VQ otherwise starts with near-identical codes for every input, and
    # its decoder learns to predict o_t+H without them. 0: off
    warmup_steps: int = 0
    usage_decay: float = 0.99  # EMA of per-code usage for restarts and the collapse alarm
    collapse_threshold: float = 0.25  # alarm when fewer than this fraction of codes are in use


@dataclass
class DecoderConfig:
    kind: Literal["cross_attn", "in_context", "additive"] = "cross_attn"
    dim: int = 256
    layers: int = 4
    heads: int = 8
    mlp_ratio: float = 4.0
    stop_grad_context: bool = True  # LAPA: no gradient into the current frame's patch embeddings


@dataclass
class LAMConfig:
    image_size: int = 64
    target: Literal["pixels", "features"] = "pixels"
    # predict o_t+H - o_t (in target space) with a zero-initialised head: training starts exactly at
    # the copy-last-frame baseline, so any gain over it must come through the latent action
    predict_residual: bool = False
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # a second bottleneck for what changes besides the action (Motion-Focused LAM's background
    # codebook): num_tokens learned queries read the same hidden states, quantized by their own
    # codebook, and the decoder reads them beside the action tokens. The latent action (labels,
    # evaluation) stays the action tokens. null: none
    background: QuantizerConfig | None = None

    def validate(self) -> None:
        e, d = self.encoder, self.decoder
        for name, q in (("quantizer", self.quantizer), ("background", self.background)):
            if q is not None:
                _validate_quantizer(q, f"model.{name}")
        if self.background is not None and d.kind == "additive":
            raise ConfigError("model.background needs a decoder that reads a variable set of tokens (cross_attn or in_context), not additive")
        if e.kind == "pixel" and self.image_size % e.patch:
            raise ConfigError(f"model.image_size ({self.image_size}) must be a multiple of model.encoder.patch ({e.patch})")
        if self.target == "features" and e.kind != "backbone":
            raise ConfigError("model.target=features needs model.encoder.kind=backbone (the frozen features are the target)")
        for name, dim, heads in (("encoder", e.dim, e.heads), ("decoder", d.dim, d.heads)):
            if dim % heads:
                raise ConfigError(f"model.{name}.dim ({dim}) must be divisible by model.{name}.heads ({heads})")

    @property
    def background_tokens(self) -> int:
        return self.background.num_tokens if self.background is not None else 0

    @property
    def codebook_size(self) -> int:
        q = self.quantizer
        if q.kind == "fsq":
            n = 1
            for level in q.fsq_levels:
                n *= level
            return n
        return q.codebook_size


def _validate_quantizer(q: QuantizerConfig, name: str) -> None:
    if q.entropy_weight < 0 or q.entropy_temperature <= 0:
        raise ConfigError(f"{name}: entropy_weight must be >= 0 and entropy_temperature > 0")
    if q.kind == "fsq" and (q.lookup != "euclidean" or q.entropy_weight):
        raise ConfigError(f"{name}.lookup (cosine, standardized) and entropy_weight need a codebook (vq, ema_vq, nsvq), not fsq")
    if q.kind == "fsq":
        if any(level < 2 for level in q.fsq_levels):
            raise ConfigError(f"{name}.fsq_levels must all be >= 2, got {q.fsq_levels}")
    elif q.codebook_size < 2:
        raise ConfigError(f"{name}.codebook_size must be >= 2, got {q.codebook_size}")
    if q.warmup_steps < 0 or (q.kind == "fsq" and q.warmup_steps):
        raise ConfigError(f"{name}.warmup_steps must be >= 0 and needs a codebook (vq, ema_vq, nsvq), got {q.warmup_steps} for {q.kind}")
    if q.num_tokens < 1:
        raise ConfigError(f"{name}.num_tokens must be >= 1")
