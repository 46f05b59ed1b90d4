"""`openlam generate metaworld`: scripted-expert episodes from every camera, with robot masks,
GT actions, state, success and language, written as a LeRobot v3 dataset.

Determinism: every episode draws all its randomness (task variation, action noise, distractors)
from a SeedSequence of (seed, task, episode, attempt), so output is identical for any number of
workers. Workers are separate processes (spawned: EGL contexts must not be forked).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlam.config import to_dict
from openlam.data.episode import ActionSpace, Episode
from openlam.data.lerobot_writer import LeRobotWriter, WriterConfig, write_lerobot
from openlam.data.source import EpisodeInfo
from openlam.data.splits import SplitConfig, make_splits
from openlam.errors import ConfigError
from openlam.progress import progress


@dataclass
class GenerateConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach-v3"])
    episodes: int = 10  # per task
    cameras: list[str] = field(default_factory=lambda: ["corner", "corner2", "corner3"])
    size: int = 64
    distractors: str = "none"  # preset name, see openlam.sim.distractors.PRESETS
    # extra episodes per task recorded with each of these OOD presets, in the same dataset: they
    # form the splits `ood:<preset>` (never trained on)
    ood_distractors: list[str] = field(default_factory=list)
    ood_episodes: int = 0
    action_noise: float = 0.0  # std of temporally correlated noise added to the xyz commands
    noise_correlation: float = 0.8  # AR(1) coefficient of that noise (0: white)
    max_steps: int = 200
    steps_after_success: int = 10  # keep recording a little after success, then stop
    only_success: bool = False  # retry failed episodes with the next attempt seed (counted in metadata)
    max_attempts: int = 5
    masks: bool = True
    # render-only mesh level of detail: vertex grid cell in metres, None = a quarter of the size of
    # one pixel at 1 m (4 mm at 64 px; visually identical, ~1.5x faster), 0 = full meshes
    mesh_cell: float | None = None
    seed: int = 0
    workers: int = 2
    splits: SplitConfig = field(default_factory=SplitConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)

    def validate(self) -> None:
        from openlam.sim.distractors import PRESETS

        if self.distractors not in PRESETS:
            raise ConfigError(f"config key 'distractors': '{self.distractors}' is not a preset; choose one of {sorted(PRESETS)}")
        for p in self.ood_distractors:
            if p not in PRESETS or PRESETS[p].role != "ood":
                raise ConfigError(f"config key 'ood_distractors': '{p}' is not an OOD preset; choose among "
                                  f"{sorted(k for k, v in PRESETS.items() if v.role == 'ood')}")
        if bool(self.ood_distractors) != (self.ood_episodes > 0):
            raise ConfigError("generate: ood_distractors and ood_episodes > 0 go together")
        if self.episodes < 1 or self.size < 16 or self.max_steps < 2 or self.workers < 1:
            raise ConfigError("generate: need episodes >= 1, size >= 16, max_steps >= 2, workers >= 1")
        if not self.tasks or not self.cameras:
            raise ConfigError("generate: need at least one task and one camera")
        if self.size % 2:
            raise ConfigError(f"generate: size must be even (H.264 4:2:0), got {self.size}")


# -- per-process worker state ----------------------------------------------------------------
_WORKERS: OrderedDict[tuple, Any] = OrderedDict()
_MAX_LIVE_ENVS = 4
_ATEXIT_SET = False


class _TaskRig:
    """env + expert + renderer + distractors for one task, reused across that task's episodes."""

    def __init__(self, task: str, cfg: GenerateConfig):
        from openlam.sim.distractors import Distractors, preset
        from openlam.sim.metaworld_env import make_env, make_policy, robot_geom_ids
        from openlam.sim.render import MultiViewRenderer

        self.env = make_env(task)
        self.policy = make_policy(task)
        model = self.env.model
        cell = 0.25 / cfg.size if cfg.mesh_cell is None else cfg.mesh_cell
        self.renderer = MultiViewRenderer(model, cfg.cameras, cfg.size, robot_geom_ids(model) if cfg.masks else None, mesh_cell=cell)
        self.distractors = Distractors(model, preset(cfg.distractors), cfg.cameras)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


def _rig(task: str, cfg: GenerateConfig) -> _TaskRig:
    # keyed by everything the rig is built from, so another config never reuses a stale one
    key = (task, tuple(cfg.cameras), cfg.size, cfg.distractors, cfg.masks, cfg.mesh_cell)
    if key in _WORKERS:
        _WORKERS.move_to_end(key)
        return _WORKERS[key]
    while len(_WORKERS) >= _MAX_LIVE_ENVS:
        _, old = _WORKERS.popitem(last=False)
        old.close()
    global _ATEXIT_SET
    _WORKERS[key] = rig = _TaskRig(task, cfg)
    if not _ATEXIT_SET:
        # registered after MuJoCo's EGL module (imported by the first rig), so it runs before
        # MuJoCo tears the display down: rigs made by direct run_episode calls close cleanly
        atexit.register(_close_all)
        _ATEXIT_SET = True
    return rig


def _close_all() -> None:
    while _WORKERS:
        _WORKERS.popitem()[1].close()


def _worker_init(parent: int | None = None) -> None:
    # Pool workers run multiprocessing finalizers on exit *before* interpreter atexit hooks, i.e.
    # while MuJoCo's EGL display is still alive, so renderers are freed cleanly.
    mp.util.Finalize(None, _close_all, exitpriority=100)
    if parent is not None:
        die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Ask Linux to end this process when its parent dies (a killed `openlam generate` would
    otherwise leave its workers rolling out episodes nobody collects); a no-op elsewhere."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def episode_seed(seed: int, task: str, episode: int, attempt: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(task.encode()), episode, attempt])


def run_episode(task: str, episode: int, cfg: GenerateConfig) -> Episode:
    """Roll out the scripted expert (retrying if only_success) and record every camera."""
    import mujoco

    from openlam.sim.distractors import param_names, preset
    from openlam.sim.metaworld_env import ACTION_DESCRIPTION, ACTION_NAMES, INSTRUCTIONS, ROBOT, STATE_NAMES

    rig = _rig(task, cfg)
    env, model, data = rig.env, rig.env.model, rig.env.data
    dt = float(env.dt)
    for attempt in range(cfg.max_attempts if cfg.only_success else 1):
        env_ss, noise_ss, dist_ss = episode_seed(cfg.seed, task, episode, attempt).spawn(3)
        env.seed(int(env_ss.generate_state(1)[0] % (2**31)))
        obs, _ = env.reset()
        noise_rng, dist_rng = np.random.default_rng(noise_ss), np.random.default_rng(dist_ss)
        for tex in rig.distractors.begin_episode(dist_rng):
            rig.renderer.upload_texture(tex)
        frames: dict[str, list[np.ndarray]] = {c: [] for c in cfg.cameras}
        masks: dict[str, list[np.ndarray]] = {c: [] for c in cfg.cameras}
        actions, states, env_states, succ, params = [], [], [], [], []
        noise = np.zeros(3)
        rho = cfg.noise_correlation
        success_step = None
        for t in range(cfg.max_steps):
            extra = rig.distractors.step(dist_rng, dt)
            mujoco.mj_camlight(model, data)  # cameras/lights may have moved
            f, m = rig.renderer.render(data, extra, masks=cfg.masks)
            for c in cfg.cameras:
                frames[c].append(f[c])
                if cfg.masks:
                    masks[c].append(m[c])
            a = np.asarray(rig.policy.get_action(obs), dtype=np.float64)
            if cfg.action_noise:
                noise = rho * noise + np.sqrt(1 - rho**2) * noise_rng.normal(0, cfg.action_noise, 3)
                a[:3] += noise
            a = np.clip(a, -1.0, 1.0).astype(np.float32)
            states.append(obs[:4].astype(np.float32))
            env_states.append(obs.astype(np.float32))
            params.append(rig.distractors.params.copy())
            obs, _, _, _, info = env.step(a)
            actions.append(a)
            if info["success"] and success_step is None:
                success_step = t
            succ.append(success_step is not None)
            if success_step is not None and t - success_step >= cfg.steps_after_success:
                break
        if success_step is not None or not cfg.only_success:
            break
    dist = preset(cfg.distractors)
    ep = Episode(
        frames={c: np.stack(v) for c, v in frames.items()},
        fps=1.0 / dt,
        language=INSTRUCTIONS.get(task, task),
        robot=ROBOT,
        masks={c: np.stack(v) for c, v in masks.items()} if cfg.masks else {},
        actions=np.stack(actions),
        action_space=ActionSpace(ACTION_NAMES, ["delta", "delta", "delta", "absolute"], ACTION_DESCRIPTION),
        state=np.stack(states),
        state_names=STATE_NAMES,
        extras={
            "next.success": np.array(succ, dtype=bool),
            "observation.environment_state": np.stack(env_states),
            "observation.distractors": np.stack(params).astype(np.float32),
        },
        metadata={
            "task": task, "episode": episode, "key": f"{task}/{episode}", "seed": cfg.seed, "attempt": attempt,
            "success": success_step is not None, "success_step": success_step,
            "distractor_preset": cfg.distractors, "distractor_role": dist.role,
            "distractor_params": param_names(cfg.cameras), "action_noise": cfg.action_noise,
        },
    )
    return ep


def _job(args: tuple[str, int, dict[str, Any]]) -> tuple[Episode, float]:
    from openlam.config import from_dict

    task, episode, cfg_dict = args
    t0 = time.perf_counter()
    ep = run_episode(task, episode, from_dict(GenerateConfig, cfg_dict))
    return ep, time.perf_counter() - t0


def generate(cfg: GenerateConfig, out: str | Path, overwrite: bool = False, show_progress: bool | None = None) -> dict[str, Any]:
    """Generate and write the dataset; returns a summary (episodes, steps, success rate, timing)."""
    from openlam.sim.metaworld_env import task_names

    known = task_names()
    bad = [t for t in cfg.tasks if t not in known]
    if bad:
        raise ConfigError(f"unknown Meta-World task(s) {bad}; known: {', '.join(known)}")
    jobs = [(task, i, to_dict(cfg)) for task in cfg.tasks for i in range(cfg.episodes)]
    for j, p in enumerate(cfg.ood_distractors):  # episode numbers after the in-distribution ones: own seeds and keys
        ood = to_dict(cfg) | {"distractors": p, "ood_distractors": [], "ood_episodes": 0}
        jobs += [(task, cfg.episodes + j * cfg.ood_episodes + i, ood) for task in cfg.tasks for i in range(cfg.ood_episodes)]
    stats: dict[str, Any] = {"episodes": 0, "steps": 0, "successes": 0, "attempts": 0, "rollout_s": 0.0}
    t0 = time.perf_counter()

    def episodes():
        if cfg.workers == 1:
            results = map(_job, jobs)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(min(cfg.workers, len(jobs)), initializer=_worker_init, initargs=(os.getpid(),))
            results = pool.imap(_job, jobs)
        try:
            for ep, seconds in progress(results, total=len(jobs), desc="generate", enabled=show_progress):
                stats["rollout_s"] += seconds
                stats["episodes"] += 1
                stats["steps"] += ep.length
                stats["successes"] += int(ep.metadata["success"])
                stats["attempts"] += ep.metadata["attempt"] + 1
                yield ep
        finally:
            if pool is not None:
                pool.close()
                pool.join()

    def extras(w: LeRobotWriter) -> dict[str, Any]:
        infos = [EpisodeInfo(i, r["length"], w.fps, r["tasks"][0], metadata=e["metadata"])
                 for i, (r, e) in enumerate(zip(w.episode_rows, w.episode_extras))]
        return {"splits": make_splits(infos, list(cfg.cameras), cfg.splits), "generator": {"name": "metaworld", "config": to_dict(cfg)}}

    from openlam.sim.metaworld_env import make_env

    probe = make_env(cfg.tasks[0])
    fps = 1.0 / float(probe.dt)  # control rate; every episode is checked against it by the writer
    probe.close()
    try:
        write_lerobot(out, episodes(), fps=fps, robot_type="sawyer", cfg=cfg.writer, extras=extras, overwrite=overwrite)
    finally:
        _close_all()
    wall = time.perf_counter() - t0
    stats.update(
        wall_s=wall,
        steps_per_s=stats["steps"] / wall,
        # rollout-only throughput: the workers' time inside episodes (no start-up, env build or writing)
        steady_steps_per_s=stats["steps"] / (stats["rollout_s"] / min(cfg.workers, len(jobs))),
        success_rate=stats["successes"] / max(1, stats["episodes"]),
    )
    return stats

