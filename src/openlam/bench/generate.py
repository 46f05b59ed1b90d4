"""`openlam bench generate`: Meta-World timesteps/s (3 cameras, 64 px, masks) with 2 workers."""

from __future__ import annotations

import tempfile
from typing import Any

from openlam.sim.generate import GenerateConfig, generate


def bench_generate(workers: int = 2, episodes: int = 8, tasks: tuple[str, ...] = ("reach-v3", "push-v3"), size: int = 64,
                   cameras: tuple[str, ...] = ("corner", "corner2", "corner3"), distractors: str = "mild") -> dict[str, Any]:
    cfg = GenerateConfig(tasks=list(tasks), episodes=episodes, cameras=list(cameras), size=size, distractors=distractors,
                         workers=workers, action_noise=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        s = generate(cfg, f"{tmp}/ds", show_progress=False)
    return {
        "tasks": ",".join(tasks), "episodes": s["episodes"], "cameras": len(cameras), "size": size, "workers": workers,
        "distractors": distractors, "timesteps": s["steps"], "wall s (incl. worker start + LeRobot write)": s["wall_s"],
        "timesteps/s end to end": s["steps_per_s"],
        "timesteps/s steady state (rollout time only)": s["steady_steps_per_s"],
        "success rate": s["success_rate"],
    }
