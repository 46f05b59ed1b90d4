"""Synthetic episodes with known dynamics, for tests and benchmarks: a square moves by the action
(dx, dy in pixels per frame), a second view sees the same scene mirrored and tinted, masks mark
the square. Any latent action that works should recover the action from two frames."""

from __future__ import annotations

import numpy as np

from openlam.data.episode import ActionSpace, Episode


def moving_squares(episodes: int = 8, length: int = 40, size: int = 32, views: int = 2, seed: int = 0,
                   fps: float = 10.0, square: int | None = None) -> list[Episode]:
    rng = np.random.default_rng(seed)
    sq = square or max(3, size // 6)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for e in range(episodes):
        bg = rng.integers(20, 90, 3)
        colour = rng.integers(150, 255, 3)
        pos = rng.uniform(sq, size - 2 * sq, 2)
        actions = rng.integers(-2, 3, (length, 2)).astype(np.float32)  # dx, dy per frame
        frames = {f"view{v}": np.empty((length, size, size, 3), np.uint8) for v in range(views)}
        masks = {k: np.empty((length, size, size), bool) for k in frames}
        for t in range(length):
            x0, y0 = pos.round().astype(int)
            m = (xx >= x0) & (xx < x0 + sq) & (yy >= y0) & (yy < y0 + sq)
            img = np.where(m[..., None], colour, bg + 10 * np.sin(xx / 4.0)[..., None]).astype(np.uint8)
            for v, k in enumerate(frames):
                frames[k][t] = img if v == 0 else np.roll(img[:, ::-1], v, axis=-1)
                masks[k][t] = m if v == 0 else m[:, ::-1]
            pos = np.clip(pos + actions[t], 0, size - sq)
        out.append(Episode(
            frames=frames, fps=fps, language="move the square", robot="square", masks=masks, actions=actions,
            action_space=ActionSpace(["dx", "dy"], ["delta", "delta"], "square displacement in pixels per frame"),
            metadata={"task": "move the square", "episode": e, "key": f"squares/{seed}/{e}"},
        ))
    return out
