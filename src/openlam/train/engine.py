"""The training engine every model of openlam trains by: LAMs (stage 1) and policies (stages 2-3).

One code path for a single process and for `torchrun --nproc_per_node N` (DDP: gloo on CPU, nccl on
GPU). Each rank takes its slice of a global batch that depends only on (seed, step), so N ranks see
the samples one process would, and resume can restart at any step. The hot loop does no host syncs:
logs stay on the device and are fetched once per log interval, where the non-finite-loss check runs.

What is trained is a `Job`: a module whose forward maps a batch to (loss, logs), its dataset, the
modules its checkpoints hold, and `Hooks` for what a kind of model adds to the loop (a LAM's code
restarts, EMA and codebook alarms; previews and probes outside the timed training).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openlam.errors import ConfigError, OpenLAMError
from openlam.models.weights import load_strict
from openlam.train import checkpoint, distributed
from openlam.train.config import RunConfig
from openlam.train.logger import RunLogger
from openlam.train.sampler import StepBatchSampler


class NonFiniteLoss(OpenLAMError):
    pass


class Hooks:
    """What a kind of model adds to the loop; the defaults add nothing."""

    def after_step(self, step: int) -> None:
        """After each optimiser step (every rank), e.g. EMA updates, dead-code restarts."""

    def window_scalars(self, step: int, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        """Extra TensorBoard scalars at each log interval; `counts` sums the window's `*code_counts` logs."""
        return {}

    def side(self, step: int) -> None:
        """Work outside the timed training after each step (previews, evaluations, probes)."""

    def train_state(self) -> dict[str, Any]:
        """Extra entries of the checkpoint's training state."""
        return {}

    def load_train_state(self, state: dict[str, Any], path: Path) -> None:
        """Restore what train_state saved, from the checkpoint at `path`."""

    def record(self) -> None:
        """Write the run's record (rank 0), once its checkpoint (if any) has loaded."""

    def attach(self, log: RunLogger) -> None:
        """The run's logger, made once the checkpoint has loaded (a refused resume leaves the logs as they were)."""
        self.log = log


@dataclass
class Job:
    trainee: torch.nn.Module  # forward(batch) -> (loss, logs): every parameter that trains is in it
    dataset: torch.utils.data.Dataset  # __getitems__(indices) -> a batch with .to(device)
    # the checkpoint's weight files by stem ("model", "objective", ...): a module with no state is not
    # written; on resume each one with state must be in the checkpoint and fit it exactly
    modules: dict[str, torch.nn.Module]
    aux_groups: list[dict[str, Any]] = field(default_factory=list)  # parameters stepped by their own optimiser
    find_unused_parameters: bool = False  # DDP: some parameters get no gradient in some steps
    workers: int = 0
    hooks: Hooks = field(default_factory=Hooks)


def _keep(batch: Any) -> Any:
    return batch


def param_groups(model: torch.nn.Module, wd: float, exclude: frozenset[int] | set[int] = frozenset()) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, positions, codebooks, queries, a start
    token or word embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in exclude:
            continue
        embedding = "pos" in name or "codebook" in name or "queries" in name or "bos" in name or name.startswith("word.")
        (decay if p.ndim >= 2 and not embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: RunConfig):  # type: ignore[no-untyped-def]
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        t = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


Checkpoint = tuple[Path, int, checkpoint.Weights, dict[str, Any]]


def begin(cfg: RunConfig, out: Path, resume: bool) -> Checkpoint | None:
    """Before anything is read or written (on every rank, so none waits alone): a fresh run refuses an
    out with checkpoints, a resume needs one and a config that does not change the run. Returns the
    checkpoint to resume from; then seeds the global RNG (and deterministic kernels if asked)."""
    import os

    from openlam.train.run_record import check_resume

    if not resume and checkpoint.latest(out) is not None:
        raise OpenLAMError(f"{out}: already has checkpoints; pass --resume to continue it, or choose another out")
    if resume and checkpoint.latest(out) is None:
        raise OpenLAMError(f"{out}: --resume given but there is no checkpoint in {checkpoint.ckpt_dir(out)}")
    ckpt = None
    if resume:  # a refused resume leaves the run's record as it was
        ckpt = checkpoint.load_latest(out)
        check_resume(cfg, out, ckpt[1])
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
    return ckpt


def run(cfg: RunConfig, job: Job, info: distributed.DistInfo, device: torch.device, out: Path,
        ckpt: Checkpoint | None) -> tuple[dict[str, Any], RunLogger]:
    """Train `job` from step 0 or from `ckpt` (checkpoint.load_latest) to cfg.steps or the time
    limit, writing checkpoints on the way and at the end. Returns {steps, stopped_by_time_limit,
    train_time_s} and the run's logger, open for the caller's final numbers (the caller closes it)."""
    trainee, hooks = job.trainee, job.hooks
    if len(job.dataset) < cfg.batch_size:  # type: ignore[arg-type]
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(job.dataset)} training rows "  # type: ignore[arg-type]
                          "(fewer episodes or frames than one global batch): lower batch_size or use more data")
    aux_params = [p for g in job.aux_groups for p in g["params"]]
    aux_ids = {id(a) for a in aux_params}
    params = [p for p in trainee.parameters() if p.requires_grad and id(p) not in aux_ids]
    opt = torch.optim.AdamW(param_groups(trainee, cfg.optim.weight_decay, aux_ids), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    aux_opt = torch.optim.AdamW(job.aux_groups, fused=True) if job.aux_groups else None
    aux_sched = torch.optim.lr_scheduler.LambdaLR(aux_opt, lr_lambda(cfg)) if aux_opt is not None else None
    start, resumed_time = 0, 0.0
    if ckpt is not None:
        path, start, weights, tstate = ckpt
        for stem, module in job.modules.items():
            if module.state_dict() or stem in weights:
                if stem not in weights:
                    raise OpenLAMError(f"{path}: no {stem}.safetensors, but this run has {stem} weights to restore")
                load_strict(module, weights[stem], path / f"{stem}.safetensors")
        opt.load_state_dict(tstate["optimizer"])
        sched.load_state_dict(tstate["scheduler"])
        if aux_opt is not None and aux_sched is not None:
            if "optimizer_aux" not in tstate:
                raise OpenLAMError(f"{path}: the run trains an auxiliary module but the checkpoint has no state for its optimiser")
            aux_opt.load_state_dict(tstate["optimizer_aux"])
            aux_sched.load_state_dict(tstate["scheduler_aux"])
        hooks.load_train_state(tstate, path)
        torch.set_rng_state(tstate["rng_cpu"])
        resumed_time = float(tstate.get("train_time_s", 0.0))
        if device.type == "cuda" and "rng_cuda" in tstate:
            torch.cuda.set_rng_state(tstate["rng_cuda"])
    if info.main:
        hooks.record()
    log = RunLogger(out, cfg.steps, start, info.main)
    hooks.attach(log)
    try:
        return _loop(cfg, job, info, device, out, start, resumed_time, log, opt, sched, aux_opt, aux_sched, params, aux_params), log
    except BaseException:
        log.close()
        raise


def _loop(cfg: RunConfig, job: Job, info: distributed.DistInfo, device: torch.device, out: Path, start: int, resumed_time: float,
          log: RunLogger, opt: torch.optim.Optimizer, sched: Any, aux_opt: torch.optim.Optimizer | None, aux_sched: Any,
          params: list[torch.nn.Parameter], aux_params: list[torch.nn.Parameter]) -> dict[str, Any]:
    trainee, hooks = job.trainee, job.hooks
    net: torch.nn.Module = trainee
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(trainee, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=job.find_unused_parameters)
    if cfg.compile:
        net = torch.compile(net)

    sampler = StepBatchSampler(len(job.dataset), cfg.batch_size, cfg.steps, cfg.seed, start, info.rank, info.world)  # type: ignore[arg-type]
    # the loader gets its own generator: drawing its base seed from the global RNG would shift the
    # model's random stream (NSVQ noise, code restarts) after a resume
    loader = torch.utils.data.DataLoader(job.dataset, batch_sampler=sampler, num_workers=job.workers, collate_fn=_keep,
                                         pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    bad = torch.zeros((), dtype=torch.bool, device=device)
    window: list[tuple[int, dict[str, torch.Tensor], float]] = []
    t_window, train_time, last_step, paused = time.perf_counter(), resumed_time, start, 0.0

    def write_checkpoint(step: int) -> None:
        if info.main:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng_cpu": torch.get_rng_state(), "step": step}
            if aux_opt is not None and aux_sched is not None:
                state["optimizer_aux"], state["scheduler_aux"] = aux_opt.state_dict(), aux_sched.state_dict()
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state()
            state |= hooks.train_state()
            state["train_time_s"] = train_time  # the time budget spans resumes
            weights = {stem: m.state_dict() for stem, m in job.modules.items() if m.state_dict()}
            checkpoint.save(out, step, weights, state, cfg.keep_last)
        distributed.barrier()

    def flush(step: int) -> bool:
        """Fetch the window's logs (one sync), check for non-finite loss, log. Returns stop?"""
        nonlocal t_window, train_time, window, paused
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
        scal = {f"train/{k}": v for k, v in mean.items()} | {"train/lr": window[-1][2], "train/samples_per_s": sps}
        log.scalars(step, scal | hooks.window_scalars(step, counts))
        log.progress(step, mean["loss"], sps)
        window = []
        t_window = time.perf_counter()
        stop = torch.tensor(float(cfg.time_limit_s > 0 and train_time >= cfg.time_limit_s), device=device)
        return bool(distributed.all_reduce_sum(stop).item() > 0)

    trainee.train()
    stopped_early = False
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
        hooks.after_step(step)
        bad |= ~torch.isfinite(loss.detach()) | ~torch.isfinite(logs["grad_norm"])
        window.append((step + 1, logs, lr))
        last_step = step + 1
        stop = False
        if last_step % cfg.log_every == 0 or last_step == cfg.steps:
            stop = flush(last_step)
        t_side = time.perf_counter()
        hooks.side(last_step)
        paused += time.perf_counter() - t_side
        if last_step % cfg.ckpt_every == 0 or last_step == cfg.steps or stop:
            if window:
                stop = flush(last_step) or stop
            write_checkpoint(last_step)
        if stop:
            stopped_early = True
            break
    return {"steps": last_step, "stopped_by_time_limit": stopped_early, "train_time_s": train_time}
