"""`openlam bench train CONFIG`: training throughput and hardware efficiency of one config.

Measured in one run, so the ratio holds on noisy shared machines:
- FLOPs per sample, counted by torch.utils.flop_counter over a real forward + backward;
- samples/s and achieved FLOP/s over timed optimizer steps (after warm-up);
- the machine's dense matmul peak (fp32 on CPU, bf16 on GPU), timed right before;
- efficiency = achieved / peak (MFU on GPU); peak memory.
Data is synthetic frames of the configured size: this measures the model, not the loader.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from openlam.data.pairs import PairBatch
from openlam.models.lam import LatentActionModel
from openlam.objectives import build_objective
from openlam.objectives.base import ObjectiveContext
from openlam.train.config import TrainConfig


def _count_cpu_attention() -> None:
    """torch's FlopCounterMode has formulas for the CUDA SDPA kernels but not the CPU flash kernel,
    so CPU attention would count as zero work; register the same formulas for it (once)."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd, bwd = aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in fc.flop_registry or fwd.default in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    @fc.register_flop_formula(bwd)
    def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 2.0) -> float:
    """Dense square matmul FLOP/s: the practical peak this process can reach right now."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(cfg: TrainConfig, device: torch.device, views: int = 1) -> PairBatch:
    g = torch.Generator().manual_seed(0)
    S, B = cfg.model.image_size, cfg.batch_size
    frames = {f"v{i}": torch.randint(0, 256, (B, 2, 3, S, S), generator=g, dtype=torch.uint8) for i in range(views)}
    masks = {v: torch.rand(B, 2, S, S, generator=g) < 0.1 for v in frames}  # for mask-guided objectives
    batch = PairBatch(frames=frames, masks=masks, action=None, language=[""] * B, episode=torch.arange(B),
                      t=torch.zeros(B, dtype=torch.long), gap=torch.ones(B, dtype=torch.long), views=list(frames))
    return batch.to(device)


def bench_train(cfg: TrainConfig, steps: int = 10, warmup: int = 3, device: str = "auto") -> dict[str, Any]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    torch.manual_seed(0)
    model = LatentActionModel(cfg.model).to(dev)
    m = cfg.model
    grid = model.encoder.grid
    context = ObjectiveContext({0: cfg.batch_size}, latent_dim=m.quantizer.num_tokens * model.quantizer.code_dim, batch_size=cfg.batch_size,
                               views=["v0"], num_tokens=m.quantizer.num_tokens,
                               target_shape=(3, m.image_size, m.image_size) if m.target == "pixels" else (grid[0] * grid[1], model.encoder.feat_dim))
    objective = build_objective(cfg.objectives, context).to(dev)
    # one optimiser over everything that trains (an objective's heads and discriminator too)
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    net = torch.compile(model) if cfg.compile else model
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    batch = synthetic_batch(cfg, dev)

    def step() -> torch.Tensor:
        with amp:
            loss, _ = objective(net, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    _count_cpu_attention()
    with FlopCounterMode(display=False) as fc:  # eager count, one forward + backward
        with amp:
            loss, _ = objective(model, batch)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops_step = fc.get_total_flops()
    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    peak_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    peaks = [matmul_peak(dev, peak_dtype, seconds=1.0) for _ in range(2)]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    peaks += [matmul_peak(dev, peak_dtype, seconds=1.0) for _ in range(2)]
    dt = float(sorted(times)[len(times) // 2])  # median step
    peak = max(peaks)  # the best the machine did around the run: a conservative denominator
    achieved = flops_step / dt
    mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    m = cfg.model
    return {
        "device": str(dev) + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else f" ({torch.get_num_threads()} threads)"),
        "model": f"{m.encoder.kind} enc dim {m.encoder.dim} x {m.encoder.layers} ST, dec {m.decoder.kind} dim {m.decoder.dim} x {m.decoder.layers}, "
                 f"{m.quantizer.kind} {m.quantizer.num_tokens}x{cfg.model.codebook_size}, image {m.image_size}",
        "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "batch": cfg.batch_size, "precision": cfg.precision, "compile": cfg.compile,
        "step time (s, median)": dt,
        "samples/s": cfg.batch_size / dt,
        "GFLOPs per sample (fwd+bwd, counted)": flops_step / cfg.batch_size / 1e9,
        "achieved TFLOP/s": achieved / 1e12,
        f"measured matmul peak TFLOP/s ({'bf16' if dev.type == 'cuda' else 'fp32'})": peak / 1e12,
        "efficiency (achieved / matmul peak)": achieved / peak,
        ("peak GPU memory (GiB)" if dev.type == "cuda" else "peak process RSS (GiB)"): mem,
        "final loss (finite)": bool(torch.isfinite(loss).item()),
    }
