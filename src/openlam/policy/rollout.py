"""`openlam rollout POLICY --out DIR`: closed-loop Meta-World episodes of a policy.

The policy sees the camera it was trained on, rendered as the generator renders it, and its action
chunks are executed open-loop for `execute` steps before it looks again. Initial states come from a
seed stream of their own, so they never repeat a generated (training) episode's. Output: rollout.json
(success per task with Wilson 95% intervals, and over all tasks), mp4 and GIF videos of the first
`videos` episodes of each task. Episodes run in parallel worker processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlam.artifacts import atomic_write_json
from openlam.config import to_dict
from openlam.errors import ConfigError

ROLLOUT_STREAM = 0x5011  # the last word of a rollout's SeedSequence: generated episodes never use it
REFERENCES = ("expert", "random")  # the ceiling and the floor of a success rate


@dataclass
class RolloutConfig:
    tasks: list[str] | None = None  # None: every task the policy was trained on
    episodes: int = 10  # per task
    camera: str | None = None  # None: the policy's first training camera
    max_steps: int = 200
    execute: int | None = None  # actions of each chunk executed before the policy looks again; None: the whole chunk
    seed: int = 0
    videos: int = 2  # episodes per task written as mp4 + GIF
    distractors: str = "none"
    mesh_cell: float | None = None  # as the generator's (None: a quarter pixel at 1 m)
    workers: int = 2
    fps: float = 20.0  # of the videos

    def validate(self) -> None:
        if self.episodes < 1 or self.max_steps < 1 or self.workers < 1 or self.videos < 0:
            raise ConfigError("rollout: need episodes >= 1, max_steps >= 1, workers >= 1, videos >= 0")
        if self.execute is not None and self.execute < 1:
            raise ConfigError(f"rollout.execute must be >= 1 or null (the whole chunk), got {self.execute}")


@dataclass
class EpisodeResult:
    task: str
    index: int
    success: bool
    steps: int
    success_step: int | None
    frames: np.ndarray | None = None  # (T, S, S, 3) when a video is kept
    actions: list[list[float]] = field(default_factory=list)


def rollout_seed(seed: int, task: str, episode: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, zlib.crc32(task.encode()), episode, 0, ROLLOUT_STREAM])


_SOURCE: tuple[Any, str, int] | None = None  # this worker's (policy or reference kind, camera, size)


def _init_worker(source: str, camera: str, size: int, parent: int | None) -> None:
    import torch

    from openlam.sim.generate import _worker_init

    torch.set_num_threads(1)
    global _SOURCE
    _SOURCE = (source if source in REFERENCES else _load(source), camera, size)
    _worker_init(parent)


def _load(path: str | Path) -> Any:
    from openlam.policy.model import Policy

    return Policy.from_pretrained(path).eval()


def _actor(source: Any, task: str, camera: str, size: int, cfg: RolloutConfig) -> Any:
    return ReferenceActor(source, task, camera, size) if isinstance(source, str) else PolicyActor(source, task, cfg)


class PolicyActor:
    """A trained policy: one chunk of actions per look at the camera; `execute` of them are run."""

    def __init__(self, policy: Any, task: str, cfg: RolloutConfig):
        self.policy, self.camera, self.size = policy, cfg.camera or policy.spec.views[0], policy.spec.model.image_size
        self.instruction, self.spec = policy.spec.tasks[task], policy.spec.action
        self.execute = cfg.execute or self.spec.head.chunk

    def __call__(self, frame: np.ndarray, obs: np.ndarray, gen: Any) -> np.ndarray:
        import torch

        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)
        state = torch.from_numpy(np.asarray(obs[: self.spec.state_dim], np.float32)).unsqueeze(0) if self.spec.head.state else None
        return self.policy.act(image, [self.instruction], state, generator=gen)[0].numpy()[: self.execute]


class ReferenceActor:
    """The references a success rate is read against, through the same loop and initial states:
    the task's scripted expert (the ceiling: it made the demos, without their action noise) and
    uniform random actions (the floor)."""

    def __init__(self, kind: str, task: str, camera: str, size: int):
        from openlam.sim.metaworld_env import make_policy

        if kind not in ("expert", "random"):
            raise ConfigError(f"reference actor: expected 'expert' or 'random', got {kind!r}")
        self.kind, self.camera, self.size = kind, camera, size
        self.expert = make_policy(task) if kind == "expert" else None

    def __call__(self, frame: np.ndarray, obs: np.ndarray, gen: Any) -> np.ndarray:
        import torch

        if self.expert is not None:
            return np.asarray(self.expert.get_action(obs), np.float32)[None]
        return (torch.rand(1, 4, generator=gen) * 2 - 1).numpy()


def run_episode(actor: Any, task: str, index: int, cfg: RolloutConfig, keep_frames: bool) -> EpisodeResult:
    """One closed-loop episode from the initial state of (cfg.seed, task, index)."""
    import mujoco
    import torch

    from openlam.sim.generate import GenerateConfig, _rig

    rig = _rig(task, GenerateConfig(tasks=[task], cameras=[actor.camera], size=actor.size, distractors=cfg.distractors, masks=False,
                                    mesh_cell=cfg.mesh_cell))
    env, model, data = rig.env, rig.env.model, rig.env.data
    env_ss, dist_ss, noise_ss = rollout_seed(cfg.seed, task, index).spawn(3)
    env.seed(int(env_ss.generate_state(1)[0] % (2**31)))
    obs, _ = env.reset()
    dist_rng = np.random.default_rng(dist_ss)
    gen = torch.Generator().manual_seed(int(noise_ss.generate_state(1)[0]))
    for tex in rig.distractors.begin_episode(dist_rng):
        rig.renderer.upload_texture(tex)
    frames, actions, plan = [], [], []
    success_step = None
    t = 0
    for t in range(cfg.max_steps):
        extra = rig.distractors.step(dist_rng, float(env.dt))
        mujoco.mj_camlight(model, data)
        f, _ = rig.renderer.render(data, extra, masks=False)
        frame = f[actor.camera]
        if keep_frames:
            frames.append(frame)
        if not plan:
            plan = list(actor(frame, obs, gen))
        a = np.clip(plan.pop(0), -1.0, 1.0).astype(np.float32)
        obs, _, _, _, info = env.step(a)
        actions.append(a.tolist())
        if info["success"]:
            success_step = t
            break
    return EpisodeResult(task, index, success_step is not None, t + 1, success_step,
                         np.stack(frames) if keep_frames else None, actions)


def _job(args: tuple[str, int, dict[str, Any], bool]) -> EpisodeResult:
    from openlam.config import from_dict

    assert _SOURCE is not None
    task, index, cfg_dict, keep = args
    cfg = from_dict(RolloutConfig, cfg_dict)
    source, camera, size = _SOURCE
    return run_episode(_actor(source, task, camera, size, cfg), task, index, cfg, keep)


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def write_video(frames: np.ndarray, path: Path, fps: float) -> list[Path]:
    """An mp4 (H.264) and a GIF of (T, S, S, 3) frames; each written to a temporary name first."""
    import av

    from openlam.data.video import fps_fraction

    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix, codec, fmt in ((".mp4", "libx264", "yuv420p"), (".gif", "gif", "rgb8")):
        final = path.with_suffix(suffix)
        tmp = final.with_name(f".{final.name}.tmp{suffix}")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream(codec, rate=fps_fraction(fps))
            s.height, s.width = frames.shape[1:3]
            s.pix_fmt = fmt
            for fr in frames:
                img = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")
                for p in s.encode(img.reformat(format=fmt) if codec == "gif" else img):
                    c.mux(p)
            for p in s.encode(None):
                c.mux(p)
        os.replace(tmp, final)
        out.append(final)
    return out


def check_policy(policy: Any, cfg: RolloutConfig) -> list[str]:
    """The tasks to roll out; errors for what the policy cannot do before any episode runs."""
    from openlam.sim.metaworld_env import ACTION_NAMES, task_names

    if policy.spec.action is None:
        raise ConfigError("rollout: this policy has no action head (a stage-2 latent policy); finetune it on actions first")
    if len(policy.spec.action.names) != len(ACTION_NAMES):
        raise ConfigError(f"rollout: the policy's actions are {policy.spec.action.names}, Meta-World's are {ACTION_NAMES}")
    tasks = cfg.tasks or sorted(policy.spec.tasks)
    known = set(task_names())
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ConfigError(f"rollout: unknown Meta-World task(s) {bad}")
    unseen = [t for t in tasks if t not in policy.spec.tasks]
    if unseen:
        raise ConfigError(f"rollout: the policy was never trained on {unseen} (it knows {sorted(policy.spec.tasks)}): "
                          "it has no instruction for them")
    if cfg.camera is not None and cfg.camera not in policy.spec.views:
        raise ConfigError(f"rollout.camera: '{cfg.camera}' is not among the cameras the policy was trained on {policy.spec.views}")
    return tasks


def rollout(policy_path: str | Path, out: str | Path, cfg: RolloutConfig) -> dict[str, Any]:
    """The policy's episodes; see the module docstring."""
    policy = _load(policy_path)
    tasks = check_policy(policy, cfg)
    camera = cfg.camera or policy.spec.views[0]
    return _run(str(policy_path), policy, tasks, camera, policy.spec.model.image_size, Path(out), cfg)


def reference_rollout(kind: str, tasks: list[str], camera: str, size: int, out: str | Path, cfg: RolloutConfig) -> dict[str, Any]:
    """The same episodes (initial states, camera, step limit) played by a reference: `expert` (the
    scripted policy: the ceiling) or `random` (uniform actions: the floor)."""
    if kind not in REFERENCES:
        raise ConfigError(f"reference: expected one of {REFERENCES}, got {kind!r}")
    return _run(kind, kind, tasks, camera, size, Path(out), cfg)


def _run(name: str, source: Any, tasks: list[str], camera: str, size: int, out: Path, cfg: RolloutConfig) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, i, to_dict(cfg), i < cfg.videos) for t in tasks for i in range(cfg.episodes)]
    t0 = time.perf_counter()
    results: list[EpisodeResult] = []
    if cfg.workers == 1:
        from openlam.sim.generate import _close_all

        try:
            results = [run_episode(_actor(source, t, camera, size, cfg), t, i, cfg, keep) for t, i, _, keep in jobs]
        finally:
            _close_all()
    else:
        with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs)), initializer=_init_worker,
                                          initargs=(name, camera, size, os.getpid())) as pool:
            results = pool.map(_job, jobs, chunksize=1)
    videos = []
    for r in results:
        if r.frames is not None:
            videos += [str(p) for p in write_video(r.frames, out / "videos" / f"{r.task}_{r.index:03d}", cfg.fps)]
    per_task = {}
    for t in tasks:
        rs = [r for r in results if r.task == t]
        k = sum(r.success for r in rs)
        per_task[t] = {"successes": k, "episodes": len(rs), "rate": k / len(rs), "ci": wilson(k, len(rs)),
                       "mean_steps": float(np.mean([r.steps for r in rs])),
                       "episodes_detail": [{"index": r.index, "success": r.success, "steps": r.steps} for r in rs]}
    k, n = sum(r.success for r in results), len(results)
    summary = {"policy": name, "camera": camera, "size": size, "config": to_dict(cfg), "tasks": per_task,
               "overall": {"successes": k, "episodes": n, "rate": k / n, "ci": wilson(k, n)},
               "videos": videos, "wall_s": time.perf_counter() - t0}
    atomic_write_json(out / "rollout.json", summary)
    return summary
