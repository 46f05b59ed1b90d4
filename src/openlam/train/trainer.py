"""Stage 1: a LAM's training run on the shared engine (openlam.train.engine).

This file builds what the engine trains (the LAM and its objectives as one module, the pair data,
EMA weights) and what a LAM adds to the loop (`LAMHooks`), then writes the run's model, previews and
summary. `torchrun --nproc_per_node N -m openlam train ...` runs it under DDP.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from openlam.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from openlam.config import dump_config
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.pairs import PairBatch, PairDataset
from openlam.errors import ConfigError, OpenLAMError
from openlam.models.lam import LatentActionModel
from openlam.objectives import Composite, build_objective
from openlam.objectives.base import ObjectiveContext
from openlam.train import distributed, engine
from openlam.train.config import TrainConfig
from openlam.train.engine import Hooks, Job
from openlam.train.evaluate import preview_png, reconstruction_eval
from openlam.train.online_probe import OnlineProbe
from openlam.train.run_record import cache_mismatch, check_inputs


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


class LAMHooks(Hooks):
    """What a LAM adds to the engine's loop: EMA weights, dead-code restarts, codebook scalars and the
    collapse alarm, and (rank 0, outside the timed training) previews, evaluations and the online probe."""

    def __init__(self, cfg: TrainConfig, model: LatentActionModel, ema: torch.nn.Module | None,
                 device: torch.device, main: bool, record: Callable[[], None], out: Path, preview_batch: PairBatch | None,
                 eval_batches: list[PairBatch], probe: OnlineProbe | None):
        self.cfg, self.model, self.ema, self.device, self.main = cfg, model, ema, device, main
        self._record, self.out, self.preview_batch, self.eval_batches, self.probe = record, out, preview_batch, eval_batches, probe
        self.restarted = torch.zeros((), device=device)  # dead codes re-seeded since the last flush
        self.probed: tuple[int, dict[str, float]] = (-1, {})

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.restarted += self.model.restart_dead_codes(step + 1)

    def window_scalars(self, step: int, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        usage = float(self.model.quantizer.usage_fraction().item())
        scal = {"codebook/usage_fraction": usage, "codebook/restarted_codes": float(self.restarted.item())}
        self.restarted.zero_()
        for k, c in counts.items():
            p = c / c.sum().clamp_min(1)
            name = k.rsplit("/", 1)[0].replace("/", "_")  # recon/code_counts -> recon, mvp/corner/code_counts -> mvp_corner
            scal[f"codebook/{name}_perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item())
            scal[f"codebook/{name}_codes_in_window"] = float((c > 0).float().mean().item())
        q = self.cfg.model.quantizer
        if usage < q.collapse_threshold:
            msg = (f"codebook collapse alarm at step {step}: only {usage:.0%} of {self.model.cfg.codebook_size} codes in recent use "
                   f"(threshold {q.collapse_threshold:.0%})")
            if self.main:
                warnings.warn(msg, stacklevel=2)
            self.log.text(step, "alarm/codebook_collapse", msg)
        return scal

    def side(self, step: int) -> None:
        cfg = self.cfg
        if self.main and cfg.preview_every and step % cfg.preview_every == 0:
            atomic_write_bytes(self.out / "previews" / f"step_{step:08d}.png", preview_png(self.model, self.preview_batch, self.device))
        if self.main and cfg.eval_every and step % cfg.eval_every == 0:
            self.log.scalars(step, {f"eval/{k}": float(v) for k, v in reconstruction_eval(self.model, self.eval_batches, self.device).items()})
        if self.probe is not None and step % cfg.probe_every == 0:
            self.probed = (step, self.probe(self.model, self.device))
            self.log.probe(*self.probed)

    def train_state(self) -> dict[str, Any]:
        return {"ema_n": int(self.ema.n_averaged.item())} if self.ema is not None else {}

    def load_train_state(self, state: dict[str, Any], path: Path) -> None:
        if self.ema is not None:
            if "ema_n" not in state:
                raise OpenLAMError(f"{path}: ema_decay > 0 but the checkpoint has no EMA weights")
            self.ema.n_averaged.fill_(state["ema_n"])

    def record(self) -> None:
        self._record()


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
    ckpt = engine.begin(cfg, out, resume)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
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
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    eval_ds = val_ds or train_ds
    eval_batches = _fixed_batches(eval_ds, min(cfg.batch_size, 64), cfg.eval_batches) if info.main else []
    preview_batch = _fixed_batches(eval_ds, 8, 1)[0] if info.main else None
    probe = None
    if info.main and cfg.probe_every:
        if val_ds is None or cache.action_space is None:
            raise ConfigError(f"probe_every: the online probe needs actions and a '{cfg.data.val_split}' split with episodes in {cache.path}")
        n = -(-cfg.probe_pairs // 64)
        probe = OnlineProbe(_fixed_batches(train_ds, 64, n), _fixed_batches(val_ds, 64, n), cache.action_space.names, model.cfg.codebook_size)

    def record() -> None:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        atomic_write_json(out / "inputs.json", {
            "cache": str(cache.path.resolve()), "source": cache.meta["source"],
            "source_fingerprint": cache.meta["source_fingerprint"], "views": train_ds.views,
            "gap": cfg.data.gap.describe(), "train_pairs": len(train_ds), "val_pairs": len(val_ds) if val_ds else 0,
            "train_episodes": sorted(train_ds.pairs_per_episode()),
        })

    hooks = LAMHooks(cfg, model, ema, device, info.main, record, out, preview_batch, eval_batches, probe)
    modules: dict[str, torch.nn.Module] = {"model": model, "objective": objective}
    if ema is not None:
        modules["ema"] = ema.module
    # an objective that never decodes leaves the decoder without gradient (DDP must know)
    job = Job(Trainee(model, objective), train_ds, modules, objective.auxiliary_param_groups(),
              find_unused_parameters=not objective.decodes, workers=cfg.data.workers, hooks=hooks)
    done, log = engine.run(cfg, job, info, device, out, ckpt)
    last_step = done["steps"]
    probed = hooks.probed
    result: dict[str, Any] = dict(done)
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
