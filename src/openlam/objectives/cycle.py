"""Action-centric cycle consistency (CycleMimic's AC3, seed 003).

Reconstruction lets a tokenizer memorise each (o_t, o_t+H) pair. The cycle breaks that pairing:
sample a latent action z_s from a buffer of recent latents, generate o_g = D(o_c, z_s) from a
dataset frame o_c it was not inferred from, re-encode E(o_c, o_g), and score the pre-quantization
embedding against z_s's code index with a cross-entropy over -distance / temperature to every code
(per token). The tokenizer succeeds only if a latent means the same change whatever frame it is
applied to. A local-global discriminator on the generated frames keeps them on the data
distribution and keeps the decoder from hiding the code in the pixels.

Composes with reconstruction (which still trains the pair's own latent): list both objectives.

Buffer: the codes of the last `buffer_batches` global batches (this one included), sampled
uniformly; 1 = the current batch only, the paper's collapse ablation. The buffer holds the global
batch in rank order and every rank draws the global sample and keeps its rows, so N DDP ranks
equal one process; it is a persistent buffer, so resume is exact. The codes pushed are the nearest
codes of the pairs' pre-quantization embedding, which is the quantizer's own assignment for the
euclidean and cosine lookups; with the standardized lookup they are normalised by the cycle's own
rows, and EMA-VQ has already moved its codes this step, so a few can differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.models.global_rng import global_draw
from openlam.models.quantizers import _gather
from openlam.objectives.base import AUXILIARY, Logs, Objective, ObjectiveContext
from openlam.objectives.discriminator import DiscriminatorConfig, LocalGlobalDiscriminator, discriminator_loss, generator_loss
from openlam.objectives.reconstruction import pair_rows


@dataclass
class CycleConfig:
    views: Literal["all", "random", "first"] = "random"  # as in reconstruction
    buffer_batches: int = 4
    temperature: float = 1.0
    # training steps before the cycle's cross-entropy counts: reconstruction first teaches the decoder
    # to read the latent, so generated frames differ by the sampled code before the encoder is asked
    # to tell them apart (else it can only learn the codes' marginal, which collapses the codebook)
    start: int = 0
    discriminator: Literal["none", "local", "local_global"] = "local_global"
    adversarial_weight: float = 0.1  # of the decoder's GAN loss on generated frames, beside the cycle's cross-entropy
    adversarial_start: int = 0  # training steps before the decoder's GAN loss counts (the discriminator trains from step 0)
    discriminator_net: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)  # its size and optimiser

    def validate(self) -> None:
        if self.buffer_batches < 1:
            raise ConfigError(f"cycle objective: buffer_batches must be >= 1 (1: the current batch only), got {self.buffer_batches}")
        if not self.temperature > 0:
            raise ConfigError(f"cycle objective: temperature must be > 0, got {self.temperature}")
        if self.adversarial_weight < 0 or self.adversarial_start < 0 or self.start < 0:
            raise ConfigError("cycle objective: adversarial_weight, adversarial_start and start must be >= 0")


class LatentActionBuffer(nn.Module):
    """Ring buffer of code tuples (capacity rows x K tokens), global over DDP ranks."""

    def __init__(self, capacity: int, num_tokens: int):
        super().__init__()
        self.register_buffer("codes", torch.zeros(capacity, num_tokens, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("pos", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, codes: torch.Tensor) -> None:
        """codes: (n, K) of this rank's rows; all ranks store the global batch, in rank order."""
        rows = _gather(codes)
        cap = self.codes.shape[0]
        if rows.shape[0] > cap:
            raise ValueError(f"latent action buffer: {rows.shape[0]} rows do not fit its {cap}")
        at = (self.pos + torch.arange(rows.shape[0], device=rows.device)) % cap  # no host sync
        self.codes.index_copy_(0, at, rows)
        self.pos.copy_((self.pos + rows.shape[0]) % cap)
        self.filled.copy_(torch.clamp(self.filled + rows.shape[0], max=cap))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """(n, K) codes drawn uniformly from the filled rows: the global draw, this rank's slice."""
        u = global_draw(torch.rand, n, device=self.codes.device)
        slot = (u * self.filled).long().clamp_max(self.codes.shape[0] - 1)
        return self.codes[slot]


class ActionCycle(Objective):
    name = "cycle"

    def __init__(self, cfg: CycleConfig, context: ObjectiveContext | None):
        super().__init__()
        cfg.validate()
        if context is None or not context.batch_size or not context.num_tokens or not context.target_shape:
            raise ConfigError("cycle objective: needs the trainer's context (global batch size, latent tokens, target shape)")
        self.cfg = cfg
        per = len(context.views) if cfg.views == "all" else 1
        self.buffer = LatentActionBuffer(cfg.buffer_batches * context.batch_size * per, context.num_tokens)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.disc: LocalGlobalDiscriminator | None = None
        if cfg.discriminator != "none":
            self.disc = LocalGlobalDiscriminator(cfg.discriminator_net, context.target_shape, cfg.discriminator)

    def auxiliary_param_groups(self) -> list[dict]:
        if self.disc is None:
            return []
        d = self.cfg.discriminator_net
        return [{"params": list(self.disc.parameters()), "lr": d.lr, "betas": tuple(d.betas), "weight_decay": d.weight_decay}]

    def forward(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, Logs]:
        x, _ = pair_rows(batch, self.cfg.views)
        q = model.quantizer
        fp32 = torch.autocast(x.device.type, enabled=False)  # code distances in fp32, as the quantizer's lookup
        with torch.no_grad():  # this batch's codes, for the buffer only
            z_own = model.encode_continuous(x)
            with fp32:
                own = q.code_logits(z_own.float()).argmax(-1)
            self.buffer.push(own)
        sampled = self.buffer.sample(x.shape[0])  # (n, K)
        o_c = x[:, 0]
        generated = model.decode(o_c, sampled)  # target space: pixels or normalised features
        z = model.encode_generated(o_c, generated)  # (n, K, code_dim)
        with fp32:
            logits = q.code_logits(z.float(), self.cfg.temperature)
        ce = F.cross_entropy(logits.flatten(0, 1), sampled.flatten())
        recovered = (logits.argmax(-1) == sampled).float().mean()
        # recovered: share of tokens whose generated frame re-encodes to the sampled code;
        # foreign: share of rows whose sampled tuple is not the row's own (the cycle is not just
        # a second reconstruction)
        logs: Logs = {"cross_entropy": ce.detach(), "recovered": recovered.detach(),
                      "foreign": (sampled != own).any(-1).float().mean().detach()}
        if self.training:
            self.steps_seen.add_(1)
        loss = (self.steps_seen > self.cfg.start).to(ce.dtype) * ce  # a factor, not a branch: no host sync
        if self.disc is not None:
            real = model.target_frames(x[:, 1:2])[:, 0]
            on = (self.steps_seen > self.cfg.adversarial_start).to(ce.dtype)  # a factor, not a branch: no host sync
            g = generator_loss(self.disc, generated)
            loss = loss + on * self.cfg.adversarial_weight * g
            logs["generator_loss"] = g.detach()
            logs[AUXILIARY] = discriminator_loss(self.disc, real.detach(), generated.detach())
        return loss, logs
