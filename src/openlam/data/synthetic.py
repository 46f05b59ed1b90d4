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


GOALS = {"red": (230, 40, 40), "blue": (40, 60, 230)}
GOAL_PLACES = {"red": (0.2, 0.25), "blue": (0.7, 0.65)}  # (x, y) as a fraction of the image, jittered per episode


def goal_squares(episodes_per_task: int = 8, length: int = 24, size: int = 32, seed: int = 0, fps: float = 10.0) -> list[Episode]:
    """Two tasks for policies: a white square starting anywhere, and a red and a blue dot near fixed
    places (jittered by size/16); the instruction names the dot, and the action (dx, dy in [-1, 1],
    x2 pixels per frame) steers the square to it. The action is a function of the frame and the
    instruction, so a policy can learn it, and neither alone suffices (both dots are always in view)."""
    rng = np.random.default_rng(seed)
    sq, dot = max(3, size // 8), max(2, size // 12)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(episodes_per_task * len(GOALS)):
        goal = list(GOALS)[i % len(GOALS)]
        pos = rng.uniform(0, size - sq, 2)
        dots = {g: np.array(GOAL_PLACES[g]) * size + rng.uniform(-size / 16, size / 16, 2) for g in GOALS}
        frames, actions, states = np.empty((length, size, size, 3), np.uint8), np.empty((length, 2), np.float32), np.empty((length, 2), np.float32)
        for t in range(length):
            img = np.full((size, size, 3), 40, np.uint8)
            for g, (dx, dy) in dots.items():
                img[(xx >= dx) & (xx < dx + dot) & (yy >= dy) & (yy < dy + dot)] = GOALS[g]
            x0, y0 = pos.round().astype(int)
            img[(xx >= x0) & (xx < x0 + sq) & (yy >= y0) & (yy < y0 + sq)] = 255
            frames[t] = img
            target = dots[goal] + dot / 2 - sq / 2
            actions[t] = np.clip((target - pos) / 4.0, -1, 1)
            states[t] = pos / size
            pos = np.clip(pos + 2 * actions[t], 0, size - sq)
        out.append(Episode(
            frames={"cam": frames}, fps=fps, language=f"move the square to the {goal} dot", robot="square", actions=actions,
            action_space=ActionSpace(["dx", "dy"], ["delta", "delta"], "square velocity, x2 pixels per frame"),
            state=states, state_names=["x", "y"],
            metadata={"task": f"goal-{goal}", "episode": i, "key": f"goal/{seed}/{i}"},
        ))
    return out
