"""Forward-model decoders: (context tokens of o_t, quantized action tokens) -> o_t+H.

cross_attn (LAPA): the current frame's patches are queries that cross-attend to the action tokens.
in_context (UniVLA / villa-x): action tokens and patches share one self-attention sequence.
additive (Genie): the action embedding is added to every patch token.
The head predicts pixels (P*P*3 per patch) or backbone features (F per patch).

Background tokens (Motion-Focused LAM) are read beside the action tokens, with a learned embedding
per background token (type and position); without a context (the background-only path) the patch
queries are the position embeddings alone.
"""

from __future__ import annotations

import torch
from torch import nn

from openlam.models.blocks import Block
from openlam.models.config import DecoderConfig


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, context_dim: int, action_dim: int, num_tokens: int, num_patches: int, out_dim: int,
                 background_tokens: int = 0):
        super().__init__()
        self.cfg = cfg
        self.kind = cfg.kind
        self.ctx_in = nn.Linear(context_dim, cfg.dim)
        self.act_in = nn.Linear(action_dim, cfg.dim)
        self.pos = nn.Parameter(torch.randn(1, num_patches, cfg.dim) * 0.02)
        if self.kind == "in_context":
            self.act_pos = nn.Parameter(torch.randn(1, num_tokens, cfg.dim) * 0.02)
        if self.kind == "additive":
            self.act_in = nn.Linear(action_dim * num_tokens, cfg.dim)
        if background_tokens:
            self.bg_pos = nn.Parameter(torch.randn(1, background_tokens, cfg.dim) * 0.02)
        cross = self.kind == "cross_attn"
        self.blocks = nn.ModuleList([Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cross=cross) for _ in range(cfg.layers)])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, out_dim)

    def forward(self, context: torch.Tensor | None, z_q: torch.Tensor | None, background: torch.Tensor | None = None) -> torch.Tensor:
        """context: (B, N, Dc) tokens of o_t, or None (background-only path); z_q: (B, K, Da) action
        tokens or None; background: (B, Kb, Da) background tokens or None. Returns (B, N, out_dim)."""
        if context is None:
            ref = z_q if z_q is not None else background
            assert ref is not None
            x = self.pos.expand(ref.shape[0], -1, -1)
        else:
            if self.cfg.stop_grad_context:
                context = context.detach()
            x = self.ctx_in(context) + self.pos
        N = x.shape[1]
        parts = []  # the latent tokens the cross-attention / in-context decoder reads
        if z_q is not None and self.kind != "additive":
            parts.append(self.act_in(z_q) + (self.act_pos if self.kind == "in_context" else 0))
        if background is not None:
            parts.append(self.act_in(background) + self.bg_pos)
        if self.kind == "cross_attn":
            a = torch.cat(parts, 1)
            for blk in self.blocks:
                x = blk(x, context=a)
        elif self.kind == "in_context":
            x = torch.cat([*parts, x], 1)
            for blk in self.blocks:
                x = blk(x)
            x = x[:, -N:]
        else:  # additive
            assert z_q is not None and background is None
            x = x + self.act_in(z_q.flatten(1))[:, None]
            for blk in self.blocks:
                x = blk(x)
        return self.head(self.norm(x))
