"""The stage-1 training loop.

One code path for a single process and for `torchrun --nproc_per_node N -m openlam train ...`
(DDP: gloo on CPU, nccl on GPU). Each rank takes its slice of a global batch that depends only on
(seed, step), so N ranks see the samples one process would, and resume can restart at any step.
The hot loop does no host syncs: logs stay on the device and are fetched once per log interval,
where the non-finite-loss check and the codebook-collapse alarm run too.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openlam.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from openlam.config import dump_config
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.pairs import PairBatch, PairDataset
from openlam.errors import ConfigError, OpenLAMError
from openlam.models.lam import LatentActionModel
from openlam.models.weights import load_strict
from openlam.objectives import Composite, build_objective
from openlam.objectives.base import ObjectiveContext
from openlam.train import checkpoint, distributed
from openlam.train.config import TrainConfig
from openlam.train.evaluate import preview_png, reconstruction_eval
from openlam.train.logger import RunLogger
from openlam.train.online_probe import OnlineProbe
from openlam.train.run_record import cache_mismatch, check_inputs, check_resume
from openlam.train.sampler import StepBatchSampler


class NonFiniteLoss(OpenLAMError):
    pass


def _keep(b: PairBatch) -> PairBatch:
    return b


class Trainee(torch.nn.Module):
    """The model and its objective as one module, so DDP syncs, torch.compile traces, the
    optimiser updates and checkpoints keep every parameter that trains: an objective's own heads
    (action supervision) as well as the LAM's."""

    def __init__(self, model: LatentActionModel, objective: Composite):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.model, batch)


def objective_context(model: LatentActionModel, cache: FrameCache, train_ds: PairDataset, batch_size: int) -> ObjectiveContext:
    grid = model.encoder.grid
    shape = (3, model.cfg.image_size, model.cfg.image_size) if model.cfg.target == "pixels" else (grid[0] * grid[1], model.encoder.feat_dim)
    return ObjectiveContext(pairs_per_episode=train_ds.pairs_per_episode(),
                            latent_dim=model.cfg.quantizer.num_tokens * model.quantizer.code_dim,  # fsq: one dim per level
                            action_stats=train_ds.action_stats if cache.action_space is not None else None,
                            batch_size=batch_size, views=list(train_ds.views), num_tokens=model.cfg.quantizer.num_tokens,
                            target_shape=shape)


def resolve_cache(cfg: TrainConfig, out: Path, main: bool, resume: bool = False) -> FrameCache:
    """Use data.cache as is, or decode data.dataset once into <out>/cache (rank 0; others wait).
    A cache already in <out> is reused only if it decodes data.dataset as it is now, at the model's
    size and the configured cameras; otherwise a fresh run rebuilds it and a resumed one stops."""
    if cfg.data.cache is not None:
        return FrameCache(cfg.data.cache)
    from openlam.data.source import open_dataset

    path = out / "cache"
    src = open_dataset(cfg.data.dataset, fps=cfg.data.fps)  # every rank checks, so all raise or none
    cams = src.check_cameras(cfg.data.views)
    rebuild = False
    if (path / "cache.json").is_file():
        why = cache_mismatch(json.loads((path / "cache.json").read_text()), src.path, src.fingerprint(), cfg.model.image_size, cams,
                             [e.fps for e in src.episodes])
        if why and resume:
            raise ConfigError(f"{path}: not the data this run was trained on: {'; '.join(why)}. "
                              "--resume continues a run on its own data; start a new run in another out")
        if why and main:
            warnings.warn(f"{path}: rebuilding the run's frame cache: {'; '.join(why)}", stacklevel=2)
        rebuild = bool(why)
    if main and (rebuild or not (path / "cache.json").is_file()):
        build_cache(src, path, CacheConfig(size=cfg.model.image_size, cameras=cfg.data.views, workers=cfg.data.workers),
                    overwrite=path.exists())
    distributed.barrier()
    return FrameCache(path)


def train_subset(cfg: TrainConfig, cache: FrameCache) -> list[int] | None:
    """data.train_episodes of the train split (nested, task-balanced), or None for all of it."""
    n = cfg.data.train_episodes
    if n is None:
        return None
    if cfg.data.train_split not in cache.splits:
        raise ConfigError(f"split '{cfg.data.train_split}' not in {cache.path}; available: {sorted(cache.splits)}")
    eps = cache.splits[cfg.data.train_split]["episodes"]
    if not 1 <= n <= len(eps):
        raise ConfigError(f"data.train_episodes: {n} is not in 1..{len(eps)} (the train split of {cache.path})")
    from openlam.data.splits import nested_subset

    tasks = cache.tasks
    return nested_subset(eps, [tasks[e] for e in eps], n, seed=0)


def check_data_fits_model(cfg: TrainConfig, cache: FrameCache, train: PairDataset) -> None:
    """Shape and view mismatches are config errors before any training step."""
    if cfg.model.encoder.kind == "pixel" and cache.size != cfg.model.image_size:
        raise ConfigError(f"{cache.path}: frames are {cache.size} px but model.image_size is {cfg.model.image_size}; "
                          f"re-cache at {cfg.model.image_size} px or set model.image_size={cache.size}")
    if not train.views:
        raise ConfigError(f"data.views: no camera selected from {cache.cameras}")


def _param_groups(model: torch.nn.Module, wd: float, exclude: frozenset[int] | set[int] = frozenset()) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        (decay if p.ndim >= 2 and "pos" not in name and "codebook" not in name and "queries" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _fixed_batches(ds: PairDataset, batch: int, count: int) -> list[PairBatch]:
    n = min(len(ds), batch * count)
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int).tolist()
    return [ds.__getitems__(idx[i : i + batch]) for i in range(0, n, batch)]


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    info, device = distributed.init(cfg.device)
    out = Path(cfg.out)
    try:
        result = _train(cfg, resume, info, device, out)
        distributed.finish()
        return result
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, resume: bool, info: distributed.DistInfo, device: torch.device, out: Path) -> dict[str, Any]:
    if not resume and checkpoint.latest(out) is not None:  # checked on every rank: no rank waits alone
        raise OpenLAMError(f"{out}: already has checkpoints; pass --resume to continue it, or choose another out")
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    if resume and checkpoint.latest(out) is None:
        raise OpenLAMError(f"{out}: --resume given but there is no checkpoint in {checkpoint.ckpt_dir(out)}")
    ckpt = None
    if resume:  # before anything is read or written: a refused resume leaves the run's record as it was
        ckpt = checkpoint.load_latest(out)
        check_resume(cfg, out, ckpt[1])
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    cache = resolve_cache(cfg, out, info.main, resume)
    if resume:
        check_inputs(out, cache.meta, cache.path)
    train_ds = PairDataset(cache, cfg.data.train_split, cfg.data.views, cfg.data.gap, seed=cfg.seed, episodes=train_subset(cfg, cache))
    check_data_fits_model(cfg, cache, train_ds)
    val_ds = None
    if cfg.data.val_split in cache.splits and cache.splits[cfg.data.val_split]["episodes"]:
        val_ds = PairDataset(cache, cfg.data.val_split, train_ds.views, cfg.data.gap, seed=cfg.seed + 1)
    model = LatentActionModel(cfg.model).to(device)
    objective = build_objective(cfg.objectives, objective_context(model, cache, train_ds, cfg.batch_size)).to(device)
    trainee = Trainee(model, objective)

    # modules an objective trains by its own optimiser step (a discriminator) stay out of the LAM's;
    # both step from one backward (their losses never reach each other's parameters)
    aux_groups = objective.auxiliary_param_groups()
    aux_params = [p for g in aux_groups for p in g["params"]]
    aux_ids = {id(a) for a in aux_params}
    params = [p for p in trainee.parameters() if p.requires_grad and id(p) not in aux_ids]
    opt = torch.optim.AdamW(_param_groups(trainee, cfg.optim.weight_decay, aux_ids), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    aux_opt = torch.optim.AdamW(aux_groups, fused=True) if aux_groups else None
    aux_sched = torch.optim.lr_scheduler.LambdaLR(aux_opt, lr_lambda(cfg)) if aux_opt is not None else None
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    start, resumed_time = 0, 0.0
    if ckpt is not None:
        path, start, weights, tstate = ckpt
        load_strict(model, weights["model"], path / "model.safetensors")
        if objective.state_dict() or "objective" in weights:
            load_strict(objective, weights.get("objective", {}), path / "objective.safetensors")
        if ema is not None:
            if "ema" not in weights:
                raise OpenLAMError(f"{path}: ema_decay > 0 but the checkpoint has no EMA weights")
            load_strict(ema.module, weights["ema"], path / "ema.safetensors")
            ema.n_averaged.fill_(tstate["ema_n"])
        opt.load_state_dict(tstate["optimizer"])
        sched.load_state_dict(tstate["scheduler"])
        if aux_opt is not None and aux_sched is not None:
            if "optimizer_aux" not in tstate:
                raise OpenLAMError(f"{path}: the objectives train an auxiliary module but the checkpoint has no state for its optimiser")
            aux_opt.load_state_dict(tstate["optimizer_aux"])
            aux_sched.load_state_dict(tstate["scheduler_aux"])
        torch.set_rng_state(tstate["rng_cpu"])
        resumed_time = float(tstate.get("train_time_s", 0.0))
        if device.type == "cuda" and "rng_cuda" in tstate:
            torch.cuda.set_rng_state(tstate["rng_cuda"])
    if info.main:  # the run's record, once its checkpoint (if any) has loaded
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        atomic_write_json(out / "inputs.json", {
            "cache": str(cache.path.resolve()), "source": cache.meta["source"],
            "source_fingerprint": cache.meta["source_fingerprint"], "views": train_ds.views,
            "gap": cfg.data.gap.describe(), "train_pairs": len(train_ds), "val_pairs": len(val_ds) if val_ds else 0,
            "train_episodes": sorted(train_ds.pairs_per_episode()),
        })
    net: torch.nn.Module = trainee
    if info.world > 1:  # an objective that never decodes leaves the decoder without gradient
        net = torch.nn.parallel.DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=not objective.decodes)
    if cfg.compile:
        net = torch.compile(net)

    sampler = StepBatchSampler(len(train_ds), cfg.batch_size, cfg.steps, cfg.seed, start, info.rank, info.world)
    # the loader gets its own generator: drawing its base seed from the global RNG would shift the
    # model's random stream (NSVQ noise, code restarts) after a resume
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.workers, collate_fn=_keep,
                                         pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    eval_ds = val_ds or train_ds
    eval_batches = _fixed_batches(eval_ds, min(cfg.batch_size, 64), cfg.eval_batches) if info.main else []
    preview_batch = _fixed_batches(eval_ds, 8, 1)[0] if info.main else None
    log = RunLogger(out, cfg.steps, start, info.main)
    probe, probed = None, (-1, {})
    if info.main and cfg.probe_every:
        if val_ds is None or cache.action_space is None:
            raise ConfigError(f"probe_every: the online probe needs actions and a '{cfg.data.val_split}' split with episodes in {cache.path}")
        n = -(-cfg.probe_pairs // 64)
        probe = OnlineProbe(_fixed_batches(train_ds, 64, n), _fixed_batches(val_ds, 64, n), cache.action_space.names, model.cfg.codebook_size)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bad = torch.zeros((), dtype=torch.bool, device=device)
    restarted = torch.zeros((), device=device)  # dead codes re-seeded since the last flush
    window: list[tuple[int, dict[str, torch.Tensor], float]] = []
    t_window, train_time, last_step, paused = time.perf_counter(), resumed_time, start, 0.0

    def write_checkpoint(step: int) -> None:
        if info.main:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(), "step": step}
            if aux_opt is not None and aux_sched is not None:
                state["optimizer_aux"], state["scheduler_aux"] = aux_opt.state_dict(), aux_sched.state_dict()
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state()
            if ema is not None:
                state["ema_n"] = int(ema.n_averaged.item())
            state["train_time_s"] = train_time  # the time budget spans resumes
            weights = {"model": model.state_dict()}
            if objective.state_dict():
                weights["objective"] = objective.state_dict()
            if ema is not None:
                weights["ema"] = ema.module.state_dict()
            checkpoint.save(out, step, weights, state, cfg.keep_last)
        distributed.barrier()

    def flush(step: int) -> bool:
        """Fetch the window's logs (one sync), check for non-finite loss, log, alarm. Returns stop?"""
        nonlocal t_window, train_time, window, restarted, paused
        if distributed.all_reduce_sum(bad.float()).item() > 0:  # every rank stops together
            losses = torch.stack([w[1]["loss"] for w in window]).float().cpu().numpy()
            norms = torch.stack([w[1]["grad_norm"] for w in window]).float().cpu().numpy()
            first = window[int(np.argmax(~np.isfinite(losses) | ~np.isfinite(norms)))][0]
            last = checkpoint.latest(out)
            raise NonFiniteLoss(f"non-finite loss or gradients at step {first}; training stopped. Last good checkpoint: "
                                f"{last if last else 'none (no checkpoint was written yet)'}; lower optim.lr or check the data")
        keys = [k for k in window[0][1] if not k.endswith("code_counts")]
        vals = torch.stack([torch.stack([w[1][k].float() for k in keys]) for w in window])
        vals = (distributed.all_reduce_sum(vals) / info.world).cpu().numpy()  # logs describe the global batch
        count_keys = [k for k in window[0][1] if k.endswith("code_counts")]
        counts = {k: torch.stack([w[1][k] for w in window]).sum(0) for k in count_keys}
        elapsed = time.perf_counter() - t_window - paused  # previews/evals do not count as training
        paused = 0.0
        train_time += elapsed
        sps = len(window) * cfg.batch_size / max(elapsed, 1e-9)
        rows = [{"step": s, "lr": lr, **{k: float(v) for k, v in zip(keys, row)}} for (s, _, lr), row in zip(window, vals)]
        log.rows(rows)
        mean = {k: float(v) for k, v in zip(keys, vals.mean(0))}
        usage = float(model.quantizer.usage_fraction().item())
        scal = {f"train/{k}": v for k, v in mean.items()} | {
            "train/lr": window[-1][2], "train/samples_per_s": sps, "codebook/usage_fraction": usage,
            "codebook/restarted_codes": float(restarted.item()),
        }
        restarted.zero_()
        for k, c in counts.items():
            p = c / c.sum().clamp_min(1)
            name = k.rsplit("/", 1)[0].replace("/", "_")  # recon/code_counts -> recon, mvp/corner/code_counts -> mvp_corner
            scal[f"codebook/{name}_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item())
            scal[f"codebook/{name}_codes_in_window"] = float((c > 0).float().mean().item())
        log.scalars(step, scal)
        log.progress(step, mean["loss"], sps)
        if usage < cfg.model.quantizer.collapse_threshold:
            msg = (f"codebook collapse alarm at step {step}: only {usage:.0%} of {model.cfg.codebook_size} codes in recent use "
                   f"(threshold {cfg.model.quantizer.collapse_threshold:.0%})")
            if info.main:
                warnings.warn(msg, stacklevel=2)
            log.text(step, "alarm/codebook_collapse", msg)
        window = []
        t_window = time.perf_counter()
        stop = torch.tensor(float(cfg.time_limit_s > 0 and train_time >= cfg.time_limit_s), device=device)
        return bool(distributed.all_reduce_sum(stop).item() > 0)

    model.train()
    stopped_early = False
    step = start
    for step, batch in zip(range(start, cfg.steps), loader):
        batch = batch.to(device, non_blocking=True)
        with amp:
            loss, logs = net(batch)
        loss.backward()
        # the norm is always computed: a finite loss with non-finite gradients must also stop training
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        lr = sched.get_last_lr()[0]
        sched.step()
        opt.zero_grad(set_to_none=True)
        if aux_opt is not None and aux_sched is not None:
            logs["grad_norm_auxiliary"] = torch.nn.utils.clip_grad_norm_(aux_params, clip)
            bad |= ~torch.isfinite(logs["grad_norm_auxiliary"])
            aux_opt.step()
            aux_sched.step()
            aux_opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        restarted += model.restart_dead_codes(step + 1)
        bad |= ~torch.isfinite(loss.detach()) | ~torch.isfinite(logs["grad_norm"])
        window.append((step + 1, logs, lr))
        last_step = step + 1
        stop = False
        if last_step % cfg.log_every == 0 or last_step == cfg.steps:
            stop = flush(last_step)
        t_side = time.perf_counter()
        if info.main and cfg.preview_every and last_step % cfg.preview_every == 0:
            atomic_write_bytes(out / "previews" / f"step_{last_step:08d}.png", preview_png(model, preview_batch, device))
        if info.main and cfg.eval_every and last_step % cfg.eval_every == 0:
            log.scalars(last_step, {f"eval/{k}": float(v) for k, v in reconstruction_eval(model, eval_batches, device).items()})
        if probe is not None and last_step % cfg.probe_every == 0:
            probed = (last_step, probe(model, device))
            log.probe(*probed)
        paused += time.perf_counter() - t_side
        if last_step % cfg.ckpt_every == 0 or last_step == cfg.steps or stop:
            if window:
                stop = flush(last_step) or stop
            write_checkpoint(last_step)
        if stop:
            stopped_early = True
            break

    result: dict[str, Any] = {"steps": last_step, "stopped_by_time_limit": stopped_early, "train_time_s": train_time}
    if info.main:
        result["eval"] = reconstruction_eval(model, eval_batches, device)
        result["eval_split"] = cfg.data.val_split if val_ds is not None else cfg.data.train_split
        if probe is not None:
            if probed[0] != last_step:
                probed = (last_step, probe(model, device))
                log.probe(*probed)
            result["probe"] = probed[1]
        atomic_write_bytes(out / "previews" / f"step_{last_step:08d}.png", preview_png(model, preview_batch, device))
        model.save_pretrained(out / "model")
        if ema is not None:
            result["eval_ema"] = reconstruction_eval(ema.module, eval_batches, device)
            ema.module.save_pretrained(out / "model_ema")
        log.scalars(last_step, {f"eval/{k}": float(v) for k, v in result["eval"].items()})
        atomic_write_json(out / "summary.json", result)
    log.close()
    return result
