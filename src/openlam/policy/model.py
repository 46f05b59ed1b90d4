"""A small vision-language policy: a patch ViT over the current frame, the instruction as learned
word embeddings (no download), and a transformer trunk whose readout queries carry the intent. The
heads on top (policy/heads.py) are swapped between stages: latent tokens in stage 2, actions in 3.

Saved as model.safetensors + policy.json: the config, the instruction vocabulary, the tasks and
cameras it was trained on, and its heads' shapes, so a rollout can refuse what it never saw."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

import openlam
from openlam.artifacts import atomic_write_json
from openlam.config import from_dict, to_dict
from openlam.errors import ConfigError, DamagedFile
from openlam.models.blocks import Block, init_weights
from openlam.models.lam import normalize
from openlam.models.weights import load_strict, read_weights
from openlam.policy.config import ActionHeadConfig, PolicyModelConfig
from openlam.policy.heads import BinsHead, FlowHead, LatentTokenHead

WEIGHTS, META = "model.safetensors", "policy.json"
PAD, UNK = "<pad>", "<unk>"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def build_vocab(instructions: list[str]) -> list[str]:
    return [PAD, UNK] + sorted({w for s in instructions for w in words(s)})


@dataclass
class LatentSpec:
    num_tokens: int
    codebook_size: int


@dataclass
class ActionSpec:
    head: ActionHeadConfig
    names: list[str]
    state_dim: int = 0  # > 0 when head.state


@dataclass
class PolicySpec:
    """Everything a policy folder says about what the weights are and what they were trained on."""

    model: PolicyModelConfig
    vocab: list[str]
    tasks: dict[str, str]  # task -> instruction, every task it was trained on
    views: list[str]
    latent: LatentSpec | None = None
    action: ActionSpec | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the stages that made it (config, data, steps)


def _cnn_stem(dim: int, patch: int) -> nn.Sequential:
    """log2(patch) stride-2 convolutions, widening to `dim`: one token per patch x patch cell."""
    n = patch.bit_length() - 1
    widths = [3] + [max(dim >> (n - 1 - i), 8) for i in range(n)]
    widths[-1] = dim
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1)] + ([nn.GELU()] if i < n - 1 else [])
    return nn.Sequential(*layers)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: PolicyModelConfig):
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.dim, cfg.patch, cfg.patch) if cfg.stem == "vit" else _cnn_stem(cfg.dim, cfg.patch)
        n = (cfg.image_size // cfg.patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, n, cfg.dim))
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads) for _ in range(cfg.vision_layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> patch features (B, N, D)."""
        x = self.patch(normalize(image)).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Policy(nn.Module):
    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        c = spec.model
        self.vision = VisionEncoder(c)
        self.word = nn.Embedding(len(spec.vocab), c.dim, padding_idx=0)
        self.word_pos = nn.Parameter(torch.zeros(1, c.max_words, c.dim))
        self.queries = nn.Parameter(torch.zeros(1, c.readout, c.dim))
        self.trunk = nn.ModuleList([Block(c.dim, c.heads) for _ in range(c.trunk_layers)])
        self.norm = nn.LayerNorm(c.dim)
        nn.init.trunc_normal_(self.word_pos, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.latent_head = (LatentTokenHead(spec.latent.num_tokens, spec.latent.codebook_size, c.dim, c.heads, c.latent_layers)
                            if spec.latent is not None else None)
        self.perception: VisionEncoder | None = None
        self.action_head: BinsHead | FlowHead | None = None
        if spec.action is not None:
            h = spec.action.head
            cond = c.readout * c.dim + (c.dim if h.perception else 0) + (spec.action.state_dim if h.state else 0)
            A = len(spec.action.names)
            self.action_head = (BinsHead(cond, h.hidden, h.chunk, A, h.bins) if h.kind == "bins"
                                else FlowHead(cond, h.hidden, h.chunk, A, h.flow_steps))
            if h.perception:
                self.perception = VisionEncoder(c).requires_grad_(False)
            if h.state:
                self.register_buffer("state_mean", torch.zeros(spec.action.state_dim))
                self.register_buffer("state_std", torch.ones(spec.action.state_dim))
        init_weights(self)

    def train(self, mode: bool = True) -> Policy:
        super().train(mode)
        if self.perception is not None:
            self.perception.eval()  # frozen
        return self

    # -- inputs ------------------------------------------------------------------------------
    def encode_instructions(self, instructions: list[str]) -> torch.Tensor:
        """Word ids (B, max_words), 0-padded; an unknown word is <unk>."""
        index = {w: i for i, w in enumerate(self.spec.vocab)}
        W = self.spec.model.max_words
        ids = torch.zeros(len(instructions), W, dtype=torch.long)
        for b, s in enumerate(instructions):
            ws = [index.get(w, 1) for w in words(s)][:W]
            ids[b, : len(ws)] = torch.tensor(ws, dtype=torch.long)
        return ids

    def features(self, image: torch.Tensor, words_: torch.Tensor) -> torch.Tensor:
        """Trunk outputs (B, 1 + N + R, D): [instruction, patches, readout queries]."""
        B = len(image)
        patches = self.vision(image)
        mask = (words_ > 0).unsqueeze(-1).float()
        instr = ((self.word(words_) + self.word_pos) * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)
        x = torch.cat([instr, patches, self.queries.expand(B, -1, -1)], 1)
        for blk in self.trunk:
            x = blk(x)
        return self.norm(x)

    def action_condition(self, feats: torch.Tensor, image: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """What the action head reads: the readout (intent) features, the frozen perception
        encoder's pooled features, the normalised proprioception."""
        assert self.spec.action is not None
        R = self.spec.model.readout
        parts = [feats[:, -R:].flatten(1)]
        if self.perception is not None:
            with torch.no_grad():
                parts.append(self.perception(image).mean(1))
        if self.spec.action.head.state:
            if state is None:
                raise ConfigError("this policy's action head reads observation.state, but none was given")
            parts.append((state.float() - self.state_mean) / self.state_std)
        return torch.cat(parts, -1)

    # -- training ----------------------------------------------------------------------------
    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.features(batch.image, batch.words)
        if batch.tokens is not None:
            if self.latent_head is None:
                raise ConfigError("latent targets given, but this policy has no latent head")
            loss, logs = self.latent_head.loss(feats, batch.tokens)
        else:
            if self.action_head is None:
                raise ConfigError("action targets given, but this policy has no action head")
            loss, logs = self.action_head.loss(self.action_condition(feats, batch.image, batch.state), batch.actions)
        return loss, {"loss": loss.detach(), **logs}

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(batch)

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, image: torch.Tensor, instructions: list[str], state: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, S, S) uint8 frames -> (B, C, A) actions."""
        if self.action_head is None:
            raise ConfigError("this policy has no action head (a stage-2 latent policy): finetune it on actions first")
        words_ = self.encode_instructions(instructions).to(image.device)
        feats = self.features(image, words_)
        return self.action_head.act(self.action_condition(feats, image, state), generator)

    @torch.no_grad()
    def latent_tokens(self, image: torch.Tensor, instructions: list[str]) -> torch.Tensor:
        if self.latent_head is None:
            raise ConfigError("this policy has no latent head")
        return self.latent_head.generate(self.features(image, self.encode_instructions(instructions).to(image.device)))

    # -- stages ------------------------------------------------------------------------------
    def with_heads(self, latent: LatentSpec | None, action: ActionSpec | None, tasks: dict[str, str]) -> Policy:
        """A new policy with this one's vision, instruction and trunk weights and new heads (LAPA's
        stage 3 discards the latent head); the perception encoder starts as a frozen copy of this
        policy's vision encoder. Words new to the vocabulary get fresh embeddings."""
        vocab = list(self.spec.vocab)
        vocab += sorted({w for s in tasks.values() for w in words(s)} - set(vocab))
        merged = {**self.spec.tasks, **tasks}
        new = Policy(PolicySpec(self.spec.model, vocab, merged, self.spec.views, latent, action, list(self.spec.history)))
        shared = ("vision.", "word_pos", "queries", "trunk.", "norm.")
        own = {k: v for k, v in self.state_dict().items() if k.startswith(shared)}
        fresh = {k: v for k, v in new.state_dict().items() if not k.startswith(shared)}  # heads, words, perception, statistics
        load_strict(new, {**own, **fresh}, "the initial policy")  # every shared weight must fit exactly
        with torch.no_grad():
            new.word.weight[: len(self.spec.vocab)] = self.word.weight
        if new.perception is not None:
            new.perception.load_state_dict(copy.deepcopy(self.vision.state_dict()))
        return new

    # -- files -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{WEIGHTS}.tmp"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp),
                  metadata={"format": "pt", "openlam": openlam.__version__})
        tmp.replace(d / WEIGHTS)
        atomic_write_json(d / META, {"openlam_version": openlam.__version__, "policy": to_dict(self.spec),
                                     "num_parameters": sum(p.numel() for p in self.parameters())})
        return d

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Policy:
        """A policy folder, or a training run folder (its model/)."""
        d = Path(path)
        if not (d / META).is_file() and (d / "model" / META).is_file():
            d = d / "model"
        for p in (d / META, d / WEIGHTS):
            if not p.is_file():
                raise ConfigError(f"{p}: missing; expected a policy folder written by openlam pretrain/finetune")
        try:
            meta = json.loads((d / META).read_text())
        except ValueError as e:
            raise DamagedFile(f"{d / META}: not readable JSON ({e}); it is truncated or damaged") from e
        policy = cls(from_dict(PolicySpec, meta["policy"]))
        load_strict(policy, read_weights(d / WEIGHTS, device=str(map_location)), d / WEIGHTS)
        return policy.to(map_location)
