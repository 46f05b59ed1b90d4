from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from openlam.data.episode import ActionSpace, Episode  # noqa: E402

REAL_VIDEO_DIR = Path(os.environ.get("OPENLAM_REAL_VIDEO_DIR", Path(__file__).resolve().parents[2] / "shared/data/real-robot-video"))


def coded_frames(T: int, h: int, w: int, offset: int = 0) -> np.ndarray:
    """Frames whose content encodes their index: a smooth pattern shifted by t, plus a flat
    brightness level 8*(t+offset) in the top rows, robust to lossy coding."""
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((T, h, w, 3), np.uint8)
    for t in range(T):
        base = 100 + 60 * np.sin((xx + 2 * t) / 6.0) * np.cos(yy / 7.0)
        img = np.stack([base, np.roll(base, 5, 1), 255 - base], -1)
        img[: h // 4] = (8 * (t + offset)) % 240 + 8
        out[t] = img.clip(0, 255).astype(np.uint8)
    return out


def frame_level(frames: np.ndarray) -> np.ndarray:
    """Recover the encoded brightness level of each frame."""
    h = frames.shape[1]
    return frames[:, 1 : h // 4 - 1, :, :].reshape(frames.shape[0], -1).mean(1)


def make_episode(T: int = 20, cams=("front", "side"), h: int = 32, w: int = 32, fps: float = 20.0, lang: str = "push the block",
                 seed: int = 0, masks: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    frames = {c: coded_frames(T, h, w, offset=k) for k, c in enumerate(cams)}
    yy, xx = np.mgrid[:h, :w]
    mk = {c: np.stack([(xx > t % w) & (yy < h // 2 + k) for t in range(T)]) for k, c in enumerate(cams)} if masks else {}
    return Episode(
        frames=frames, fps=fps, language=lang, robot="testbot", masks=mk,
        actions=rng.normal(size=(T, 4)).astype(np.float32),
        action_space=ActionSpace(["dx", "dy", "dz", "gripper"], ["delta", "delta", "delta", "absolute"]),
        state=rng.normal(size=(T, 3)).astype(np.float32), state_names=["x", "y", "z"],
        extras={"next.success": np.arange(T) >= T - 2}, metadata={"task": lang, "seed": seed},
    )


@pytest.fixture
def episodes() -> list[Episode]:
    return [make_episode(20, seed=0, lang="push the block"), make_episode(14, seed=1, lang="open the drawer"),
            make_episode(25, seed=2, lang="push the block")]
