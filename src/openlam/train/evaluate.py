"""Held-out reconstruction: the model's error vs the copy-last-frame baseline, and code usage."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from openlam.data.pairs import PairBatch
from openlam.models.lam import LatentActionModel
from openlam.objectives.reconstruction import stack_views


@torch.no_grad()
def reconstruction_eval(model: LatentActionModel, batches: list[PairBatch], device: torch.device) -> dict[str, Any]:
    """Pixel MSE (in [-1, 1] units) of the prediction and of copying o_t, over the given batches,
    and usage / perplexity of the codes the encoder assigns. For a feature target the error is
    measured in (normalised) feature space and the baseline uses o_t's features.

    `shuffled_latent_mse`: the error when each pair is predicted from its own o_t but another pair's
    latent action (same camera, half a batch away). About equal to `recon_mse`: the decoder does
    without the latent, whatever the code usage says."""
    was = model.training
    model.eval()
    err = base = n = shuffled = 0.0
    counts = torch.zeros(model.cfg.codebook_size, device=device)
    for b in batches:
        b = b.to(device)
        x = stack_views(b, b.views)  # rows b * views + v
        other = torch.roll(torch.arange(x.shape[0], device=device), len(b.views) * max(1, len(b) // 2))
        out = model(x, swaps=[other])
        err += F.mse_loss(out.pred, out.target, reduction="sum").item()
        shuffled += F.mse_loss(out.swapped[0], out.target, reduction="sum").item()
        if model.cfg.target == "pixels":
            base += F.mse_loss(x[:, 0], out.target, reduction="sum").item()
        else:
            f0 = model.encoder.features(x[:, :1])[:, 0]
            base += F.mse_loss(F.layer_norm(f0, f0.shape[-1:]), out.target, reduction="sum").item()
        n += out.target.numel()
        counts += out.quant.counts
    model.train(was)
    p = counts / counts.sum()
    used = int((counts > 0).sum().item())
    return {
        "recon_mse": err / n,
        "copy_last_mse": base / n,
        "shuffled_latent_mse": shuffled / n,
        "beats_copy_last": err < base,
        "codes_used": used,
        "codebook_size": int(counts.numel()),
        "code_usage": used / counts.numel(),
        "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item()),
        "pairs": int(sum(len(b) * len(b.views) for b in batches)),
    }


@torch.no_grad()
def preview_png(model: LatentActionModel, batch: PairBatch, device: torch.device, max_rows: int = 8) -> bytes:
    """Rows of o_t | true o_t+H | predicted | |error| (pixel targets), or o_t | o_t+H | per-patch
    feature error (feature targets)."""
    was = model.training
    model.eval()
    b = batch.to(device)
    x = stack_views(b, b.views)[:max_rows]
    out = model(x)
    model.train(was)
    to_img = lambda t: ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
    o_t, o_th = to_img(x[:, 0]), to_img(x[:, 1])
    if model.cfg.target == "pixels":
        pred = to_img(out.pred.float())
        err = (out.pred.float() - out.target).abs().mean(1, keepdim=True).clamp(0, 1).mul(255).byte().repeat(1, 3, 1, 1)
        cols = [o_t, o_th, pred, err.permute(0, 2, 3, 1).cpu().numpy()]
    else:
        g = model.encoder.grid[0]
        e = (out.pred.float() - out.target).pow(2).mean(-1).view(-1, 1, g, g)
        e = F.interpolate(e / e.amax().clamp_min(1e-8), size=x.shape[-2:], mode="nearest")
        cols = [o_t, o_th, e.mul(255).byte().repeat(1, 3, 1, 1).permute(0, 2, 3, 1).cpu().numpy()]
    grid = np.concatenate([np.concatenate(list(c), 0) for c in cols], 1)
    scale = max(1, 128 // x.shape[-1])
    body = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    titles = ["o_t", "true o_t+H", "predicted", "|error|"] if model.cfg.target == "pixels" else ["o_t", "o_t+H", "feature error"]
    img = Image.new("RGB", (body.width, body.height + 16), (255, 255, 255))
    img.paste(body, (0, 16))
    draw = ImageDraw.Draw(img)
    for j, title in enumerate(titles):
        draw.text((j * body.width // len(titles) + 4, 2), title, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
