"""LatentActionModel: encoder -> quantizer -> decoder, with strict save/load.

    model.encode(o_t, o_tH) -> QuantOut (indices = latent action, z_cont = continuous embedding)
    model.decode(o_t, tokens_or_quant) -> prediction of o_t+H (pixels (B,3,S,S) or features (B,N,F))
    model(pair) -> LAMOutput(pred, target, quant)
    model(pair, swaps=[idx]) -> also predictions of row i's o_t+H from row i's o_t and row idx[i]'s
        latent (cross-view, cross-pair objectives), through forward so DDP/compile wrap it

Frames enter as float in [-1, 1] (`normalize` converts the uint8 the data layer serves). The model
does not know which objective trains it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import openlam
from openlam.artifacts import atomic_write_json
from openlam.config import from_dict, to_dict
from openlam.errors import ConfigError, DamagedFile
from openlam.models.blocks import init_weights
from openlam.models.config import LAMConfig
from openlam.models.decoders import Decoder
from openlam.models.encoders import BackboneEncoder, build_encoder
from openlam.models.quantizers import QuantOut, build_quantizer
from openlam.models.weights import load_strict, read_weights

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass
class LAMOutput:
    pred: torch.Tensor
    target: torch.Tensor
    quant: QuantOut
    swapped: list[torch.Tensor] = field(default_factory=list)  # one prediction per `swaps` index


@dataclass
class PairEncoding:
    """What one pass of the encoder gives: the latent action, the decoder's context (from o_t) and
    both frames in target space (pixels or normalised features). `predict` combines a context
    with any latent action: the latent of another view (MVP-LAM) or of another pair (CycleMimic)."""

    quant: QuantOut
    context: torch.Tensor
    space: torch.Tensor  # (B, 2, ...) target space of (o_t, o_t+H)
    background: QuantOut | None = None  # the background bottleneck's codes (Motion-Focused LAM)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return frames.float().div_(127.5).sub_(1.0)


class LatentActionModel(nn.Module):
    def __init__(self, cfg: LAMConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        e = cfg.encoder
        self.quantizer = build_quantizer(e.dim, cfg.quantizer)
        self.background_quantizer = build_quantizer(e.dim, cfg.background) if cfg.background is not None else None
        grid = self.encoder.grid
        self.patch = cfg.image_size // grid[0]
        out_dim = self.patch * self.patch * 3 if cfg.target == "pixels" else self.encoder.feat_dim
        self.decoder = Decoder(cfg.decoder, self.encoder.context_dim, e.dim, cfg.quantizer.num_tokens, grid[0] * grid[1], out_dim,
                               cfg.background_tokens)
        for m in (self.encoder, self.quantizer, self.background_quantizer, self.decoder):
            if m is None:
                continue
            for name, child in m.named_children():
                if name != "backbone":
                    init_weights(child)
        if cfg.predict_residual:
            nn.init.zeros_(self.decoder.head.weight)
            nn.init.zeros_(self.decoder.head.bias)

    @property
    def uses_backbone(self) -> bool:
        return isinstance(self.encoder, BackboneEncoder)

    # -- core -------------------------------------------------------------------------------
    def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        g, p = self.encoder.grid[0], self.patch
        return x.view(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)

    def _target_space(self, frames: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        """frames (B, T, 3, S, S) -> what the decoder predicts for each frame."""
        if self.cfg.target == "pixels":
            return frames
        assert feats is not None
        return F.layer_norm(feats, feats.shape[-1:])

    def _predict(self, context: torch.Tensor, z_q: torch.Tensor, base: torch.Tensor | None, background: torch.Tensor | None = None) -> torch.Tensor:
        out = self.decoder(context, z_q, background)
        out = self._unpatchify(out) if self.cfg.target == "pixels" else out
        return out + base if self.cfg.predict_residual else out

    def forward(self, pair: torch.Tensor, swaps: list[torch.Tensor] | tuple[torch.Tensor, ...] = ()) -> LAMOutput:
        """pair: (B, 2, 3, S, S) float in [-1, 1] -> prediction of o_t+H, its target, the codes.
        swaps: (B,) row indices; for each, row i is also predicted with row swaps[i]'s latent.
        With a background bottleneck the prediction reads both token sets (a swap exchanges the
        action tokens only) and quant.loss holds both quantizers' losses."""
        enc = self.encode_pair(pair)
        z = enc.quant.z_q
        quant = enc.quant if enc.background is None else replace(enc.quant, loss=enc.quant.loss + enc.background.loss)
        return LAMOutput(self.predict(enc, z), enc.space[:, 1], quant, [self.predict(enc, z[idx]) for idx in swaps])

    def _split(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder tokens -> (action tokens, background tokens or None)."""
        k = self.cfg.quantizer.num_tokens
        return (tokens, None) if self.background_quantizer is None else (tokens[:, :k], tokens[:, k:])

    @torch.no_grad()
    def restart_dead_codes(self, step: int) -> torch.Tensor:
        """After training step `step` (1-based): each bottleneck whose restart_every divides it
        restarts its dead codes. The number of codes restarted (a tensor: no host sync)."""
        n = torch.zeros((), device=self.quantizer.usage.device)
        for q in (self.quantizer, self.background_quantizer):
            if q is not None and q.cfg.restart_every > 0 and step % q.cfg.restart_every == 0:
                n = n + q.restart_dead_codes()
        return n

    def _encode_tokens(self, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Continuous action tokens, o_t's context tokens and the frozen features (backbone only)."""
        feats = self.encoder.features(pair) if self.uses_backbone else None
        tokens, ctx = self.encoder(pair, feats) if self.uses_backbone else self.encoder(pair)
        return tokens, ctx, feats

    def encode_pair(self, pair: torch.Tensor) -> PairEncoding:
        tokens, ctx, feats = self._encode_tokens(pair)
        action, background = self._split(tokens)
        bg = None
        if background is not None and self.background_quantizer is not None:
            bg = self._quantize(background, self.background_quantizer)
        return PairEncoding(self._quantize(action), ctx, self._target_space(pair, feats), bg)

    def encode_continuous(self, pair: torch.Tensor) -> torch.Tensor:
        """(B, K, code_dim) pre-quantization embedding of pairs, without the quantizer's side effects
        (usage counts, dead-code restarts, data init): for an objective that reads the latent of
        some rows beside the one that trains the quantizer on the whole batch."""
        tokens = self._split(self._encode_tokens(pair)[0])[0]
        with torch.autocast(tokens.device.type, enabled=False):
            return self.quantizer.continuous(tokens.float())

    def target_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) float frames -> what the decoder predicts for each: the frames, or their
        normalised backbone features (B, T, N, F)."""
        feats = self.encoder.features(frames) if self.uses_backbone else None
        return self._target_space(frames, feats)

    def encode_generated(self, o_t: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """(B, K, code_dim) pre-quantization embedding of (o_t, a generated o_t+H): the encoder
        re-reading what the decoder made (CycleMimic's cycle), without quantizer side effects.
        generated is in target space: pixels, or normalised features, which go back to the
        encoder's input scale with o_t's per-patch statistics (the residual prediction is made
        around o_t's features, so theirs is the scale it lives at)."""
        if not self.uses_backbone:
            return self.encode_continuous(torch.stack([o_t, generated], 1))
        f_t = self.encoder.features(o_t[:, None])[:, 0]
        mean, std = f_t.mean(-1, keepdim=True), f_t.var(-1, keepdim=True, unbiased=False).add(1e-5).sqrt()
        feats = torch.stack([f_t, generated * std + mean], 1)
        tokens = self._split(self.encoder(None, feats)[0])[0]
        with torch.autocast(tokens.device.type, enabled=False):
            return self.quantizer.continuous(tokens.float())

    def predict(self, enc: PairEncoding, z_q: torch.Tensor, background: bool = True) -> torch.Tensor:
        """Prediction of o_t+H from enc's o_t (context) and the quantized latent z_q (B, K, D), with
        enc's background tokens when the model has them and `background` (False: the action path)."""
        bg = enc.background.z_q if background and enc.background is not None else None
        return self._predict(enc.context, z_q, enc.space[:, 0], bg)

    def predict_background(self, enc: PairEncoding) -> torch.Tensor:
        """Prediction of o_t+H from the background tokens alone: no o_t, no action, no residual."""
        assert enc.background is not None, "the model has no background bottleneck (model.background)"
        out = self.decoder(None, None, enc.background.z_q)
        return self._unpatchify(out) if self.cfg.target == "pixels" else out

    def _quantize(self, tokens: torch.Tensor, quantizer: nn.Module | None = None) -> QuantOut:
        """Nearest-code search and codebook statistics in fp32, outside any autocast region
        (bf16 would mis-assign close codes and miscount usage); the action quantizer by default."""
        with torch.autocast(tokens.device.type, enabled=False):
            return (quantizer or self.quantizer)(tokens.float())

    def encode(self, o_t: torch.Tensor, o_tH: torch.Tensor) -> QuantOut:
        """The latent action of (o_t, o_t+H): the action tokens' codes."""
        return self.encode_with_background(o_t, o_tH)[0]

    def encode_with_background(self, o_t: torch.Tensor, o_tH: torch.Tensor) -> tuple[QuantOut, QuantOut | None]:
        """The latent action of (o_t, o_t+H) and, with a background bottleneck, its background
        codes (None without one): what labelling records, so the evaluation can ask which token
        set carries what (the action, the distractors)."""
        tokens, _ = self.encoder(torch.stack([o_t, o_tH], 1))
        action, background = self._split(tokens)
        bg = None if background is None or self.background_quantizer is None else self._quantize(background, self.background_quantizer)
        return self._quantize(action), bg

    def decode(self, o_t: torch.Tensor, action: QuantOut | torch.Tensor) -> torch.Tensor:
        """Predict o_t+H from o_t and a latent action (a QuantOut, or codes (B, K) int64); with a
        background bottleneck this is the action path (no background tokens)."""
        z_q = action.z_q if isinstance(action, QuantOut) else self.quantizer.embed_indices(action)
        feats = self.encoder.features(o_t[:, None]) if self.uses_backbone else None
        base = self._target_space(o_t[:, None], feats)[:, 0]
        return self._predict(self.encoder.context(o_t), z_q, base)

    # -- persistence ------------------------------------------------------------------------
    def architecture(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.state_dict().items()}

    def save_pretrained(self, directory: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """model.safetensors + config.json (config, architecture hash, version). Self-contained:
        a frozen backbone's weights and config are saved too, so loading never needs its source."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = to_dict(self.cfg)
        if self.uses_backbone:
            bc = self.encoder.backbone.config.to_dict()
            keep = {k: v for k, v in bc.items() if not k.startswith("_") and k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
            cfg["encoder"]["backbone_config"] = keep
            cfg["encoder"]["backbone_path"] = None
        arch = self.architecture()
        tensors = {k: v.detach().contiguous().cpu() for k, v in (state or self.state_dict()).items()}
        tmp = d / f".{WEIGHTS}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "openlam": openlam.__version__})
        tmp.replace(d / WEIGHTS)
        atomic_write_json(d / CONFIG, {
            "openlam_version": openlam.__version__,
            "model": cfg,
            "architecture_sha": _arch_hash(arch),
            "num_parameters": sum(p.numel() for p in self.parameters()),
        })
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> LatentActionModel:
        d = Path(directory)
        cfg_path, w_path = d / CONFIG, d / WEIGHTS
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ConfigError(f"{p}: missing; expected a directory written by LatentActionModel.save_pretrained")
        try:
            meta = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise DamagedFile(f"{cfg_path}: not readable JSON ({e}); it is truncated or damaged") from e
        model = cls(from_dict(LAMConfig, meta["model"]))
        arch = model.architecture()
        if meta.get("architecture_sha") != _arch_hash(arch):
            raise ConfigError(f"{cfg_path}: architecture_sha does not match the model built from its config (edited config or weights?)")
        try:
            state = read_weights(w_path, device=str(map_location))
        except DamagedFile as e:
            from openlam.train.checkpoint import last_intact

            intact = last_intact(d.parent)  # d is <run>/model when the model belongs to a run
            raise DamagedFile(f"{e}" + (f"; the run's last intact checkpoint is {intact[0]} (step {intact[1]}): its "
                                        f"model.safetensors holds this model's weights at that step; copy it to {w_path} "
                                        "to use them" if intact else "")) from e
        load_strict(model, state, w_path)
        return model.to(map_location)


def _arch_hash(arch: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(arch.items())).encode()).hexdigest()[:16]
