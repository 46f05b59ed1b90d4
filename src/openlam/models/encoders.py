"""Inverse-dynamics encoders: (o_t, o_t+H) -> K continuous action tokens.

Both encoders also expose `context(o_t)`: the current frame's tokens as the encoder's first stage
sees them, which the decoder reads (LAPA feeds the encoder's patch embedding of o_t to the decoder,
with a stop-gradient).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from openlam.errors import ConfigError
from openlam.models.blocks import Block, STBlock
from openlam.models.config import EncoderConfig, LAMConfig
from openlam.models.weights import load_strict, read_weights


def _grid(k: int) -> tuple[int, int]:
    """Factor k tokens into the most square (rows, cols) grid for pooling."""
    r = int(math.sqrt(k))
    while k % r:
        r -= 1
    return r, k // r


class Readout(nn.Module):
    """Turns per-frame token grids (B, 2, N, D) into K action tokens (B, K, D)."""

    def __init__(self, cfg: EncoderConfig, num_tokens: int, grid: tuple[int, int], kind: str | None = None):
        super().__init__()
        self.kind = kind or cfg.readout
        self.k = num_tokens
        self.grid = grid
        if self.kind in ("queries", "motion_queries"):
            self.queries = nn.Parameter(torch.randn(1, num_tokens, cfg.dim) * 0.02)
            self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cross=True) for _ in range(2)])
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, N, D = x.shape
        if self.kind == "difference":  # LAPA: d = e2 - e1, pooled to K regions of the patch grid
            d = (x[:, 1] - x[:, 0]).transpose(1, 2).reshape(B, D, *self.grid)
            (kh, kw), (gh, gw) = _grid(self.k), self.grid
            if gh % kh == 0 and gw % kw == 0:  # exact regions: a reshape-mean, deterministic on GPU too
                pooled = d.reshape(B, D, kh, gh // kh, kw, gw // kw).mean((3, 5))
            else:
                pooled = F.adaptive_avg_pool2d(d, (kh, kw))
            return self.norm(pooled.flatten(2).transpose(1, 2))
        q = self.queries.expand(B, -1, -1)
        ctx = x.reshape(B, T * N, D) if self.kind == "queries" else torch.cat([x[:, 0], x[:, 1] - x[:, 0]], 1)
        for blk in self.blocks:
            q = blk(q, context=ctx)
        return self.norm(q)


class STTrunk(nn.Module):
    """What both encoders share: position + time embeddings, spatio-temporal blocks, final norm and
    the action readout, applied to per-frame patch tokens (B, 2, N, D)."""

    def __init__(self, cfg: LAMConfig, grid: tuple[int, int]):
        super().__init__()
        e = cfg.encoder
        self.pos = nn.Parameter(torch.randn(1, 1, grid[0] * grid[1], e.dim) * 0.02)
        self.time = nn.Parameter(torch.randn(1, 2, 1, e.dim) * 0.02)
        self.blocks = nn.ModuleList([STBlock(e.dim, e.heads, e.mlp_ratio) for _ in range(e.layers)])
        # with the difference readout a bias would cancel exactly in e2 - e1 (a parameter with no
        # gradient but float noise, which Adam amplifies), so it has none
        self.norm = nn.LayerNorm(e.dim, bias=e.readout != "difference")
        self.readout = Readout(e, cfg.quantizer.num_tokens, grid)
        # Motion-Focused LAM: a second, learned query set for what changes besides the action
        self.background_readout = Readout(e, cfg.background_tokens, grid, kind="queries") if cfg.background_tokens else None

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (with position embedding) -> per-frame hidden states after the ST blocks."""
        x = tokens + self.time
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, K, D) action tokens, followed by the background tokens when the model has them."""
        h = self.norm(self.hidden(tokens))
        out = self.readout(h)
        return out if self.background_readout is None else torch.cat([out, self.background_readout(h)], 1)


class PixelSTEncoder(nn.Module):
    """LAPA/Genie C-ViViT-style encoder: patch embedding, spatial + causal temporal attention."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        e = cfg.encoder
        self.patch = e.patch
        g = cfg.image_size // e.patch
        self.grid = (g, g)
        self.patch_embed = nn.Conv2d(3, e.dim, e.patch, e.patch)
        self.trunk = STTrunk(cfg, self.grid)
        self.context_dim = e.dim

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [-1, 1] -> (B, T, N, D) patch tokens with position embedding."""
        B, T = frames.shape[:2]
        x = self.patch_embed(frames.flatten(0, 1)).flatten(2).transpose(1, 2)
        return x.view(B, T, -1, x.shape[-1]) + self.trunk.pos

    def context(self, o_t: torch.Tensor) -> torch.Tensor:
        return self.embed(o_t[:, None])[:, 0]

    def forward(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pair: (B, 2, 3, S, S). Returns (action tokens (B, K, D), context tokens of o_t (B, N, D))."""
        tokens = self.embed(pair)
        return self.trunk(tokens), tokens[:, 0]


def load_backbone(cfg: EncoderConfig) -> nn.Module:
    """A DINOv2 ViT from transformers: from a local directory / .safetensors file the user gives, or
    randomly initialised from `backbone_config` (tests, smoke runs). Never touches the network."""
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConfigError("model.encoder.kind=backbone needs the 'backbone' extra: pip install 'openlam[backbone]'") from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = cfg.backbone_path
    if path is None:
        return Dinov2Model(Dinov2Config(**({"image_size": cfg.backbone_image_size} | cfg.backbone_config)))
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p}: model.encoder.backbone_path: expected a transformers model dir with config.json")
        return Dinov2Model.from_pretrained(str(p), local_files_only=True)
    if p.is_file() and p.suffix == ".safetensors":
        model = Dinov2Model(Dinov2Config(**({"image_size": cfg.backbone_image_size} | cfg.backbone_config)))
        # a classification checkpoint's head is not part of the backbone; everything else must fit
        state = {k.removeprefix("dinov2."): v for k, v in read_weights(p).items() if not k.startswith(("head", "classifier"))}
        state.setdefault("embeddings.mask_token", model.embeddings.mask_token.detach())  # pretraining-only, unused here
        load_strict(model, state, p)
        return model
    raise ConfigError(f"{p}: model.encoder.backbone_path: expected a transformers model dir or a .safetensors file")


class BackboneEncoder(nn.Module):
    """UniVLA-style encoder: frozen DINOv2 patch features of both frames, a trainable projection and
    spatio-temporal transformer on top, and an action readout (queries by default)."""

    def __init__(self, cfg: LAMConfig):
        super().__init__()
        e = cfg.encoder
        self.backbone = load_backbone(e)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        bc = self.backbone.config
        self.feat_dim = bc.hidden_size
        self.image_size = e.backbone_image_size
        g = self.image_size // bc.patch_size
        self.grid = (g, g)
        self.n_prefix = 1 + getattr(bc, "num_register_tokens", 0)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.proj = nn.Linear(self.feat_dim, e.dim)
        self.trunk = STTrunk(cfg, self.grid)
        self.context_dim = e.dim

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / stochastic depth ever
        return self

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) in [-1, 1] -> frozen patch features (B, T, N, F)."""
        B, T = frames.shape[:2]
        x = frames.flatten(0, 1)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        h = self.backbone(pixel_values=x).last_hidden_state[:, self.n_prefix :]
        return h.reshape(B, T, h.shape[1], h.shape[2])

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats) + self.trunk.pos

    def context(self, o_t: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(o_t[:, None]))[:, 0]

    def forward(self, pair: torch.Tensor | None, feats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """From the frames (B, 2, 3, S, S), or from their backbone features when given."""
        if feats is None:
            assert pair is not None
            feats = self.features(pair)
        tokens = self.embed(feats)
        return self.trunk(tokens), tokens[:, 0]


def build_encoder(cfg: LAMConfig) -> nn.Module:
    return PixelSTEncoder(cfg) if cfg.encoder.kind == "pixel" else BackboneEncoder(cfg)
