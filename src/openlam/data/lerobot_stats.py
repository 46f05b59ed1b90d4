"""Feature statistics as LeRobot v3 stores them: per episode (columns `stats/<feature>/<stat>` of the
episodes table) and their aggregate (meta/stats.json).

What LeRobot's readers, edit tools and trainers expect (checked against a dataset written by
LeRobot 0.4.4 itself, tests/fixtures/lerobot_0.4.4): every non-string feature has stats, the
bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) included; the keys are
min, max, mean, std, count and the quantiles q01..q99; a vector feature's values have its shape, a
scalar's have shape (1,), a camera's (video or image, masks included) are per channel with shape
(3, 1, 1) in [0, 1]; `count` is always the number of frames (for cameras: frames sampled); min and
max keep the feature's type (bool, int, float). An edit tool that deletes or splits episodes
recomputes meta/stats.json from the per-episode columns, so both must be written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
Stats = dict[str, np.ndarray]


def vector_stats(x: np.ndarray, max_quantile_rows: int | None = None) -> Stats:
    """Stats of per-frame values x: (T,) or (T, D) of bool, int or float (min / max keep the type).
    Quantiles from at most `max_quantile_rows` evenly spaced rows (None: all)."""
    x = np.asarray(x)
    rows = x.reshape(len(x), -1)
    f = rows.astype(np.float64)
    out: Stats = {"min": rows.min(0), "max": rows.max(0), "mean": f.mean(0), "std": f.std(0), "count": np.array([len(x)])}
    step = max(1, len(f) // max_quantile_rows) if max_quantile_rows else 1
    q = np.quantile(f[::step], QUANTILES, axis=0)
    return out | {k: v for k, v in zip(QUANTILE_KEYS, q)}


def sampled_frames(T: int) -> np.ndarray:
    """Which frames of an episode camera stats read: all of a short episode (< 100 frames), else
    max(100, min(T^0.75, 10000)) evenly spaced ones, LeRobot's rule."""
    if T < 100:
        return np.arange(T)
    n = int(max(100, min(T**0.75, 10000)))
    return np.linspace(0, T - 1, n).round().astype(int)


def camera_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of a camera's frames in [0, 1]: (T, H, W, 3) uint8 RGB, or (T, H, W) bool
    masks (seen, as LeRobot decodes them, as grey RGB frames of 0 and 1). Frames with a side of 300
    px or more are subsampled in space first. Shapes (3, 1, 1); count = frames sampled."""
    pick = frames[sampled_frames(len(frames))]
    step = int(np.ceil(max(pick.shape[1:3]) / 150)) if max(pick.shape[1:3]) >= 300 else 1
    pick = pick[:, ::step, ::step]
    v = (pick.astype(np.float64)[..., None].repeat(3, -1) if pick.ndim == 3 else pick.astype(np.float64) / 255.0)
    per_channel = v.reshape(-1, 3)
    s = vector_stats(per_channel, max_quantile_rows=1 << 16)  # a sort of every pixel would dominate writing
    s = {k: a.reshape(3, 1, 1) for k, a in s.items() if k != "count"}
    s["count"] = np.array([len(pick)])
    return s


def aggregate(episodes: list[Stats]) -> Stats:
    """Stats of the union of episodes from theirs: min / max elementwise; mean and variance weighted
    by count (exact); quantiles the count-weighted mean of the episodes' (an approximation, the one
    LeRobot's edit tools make, so meta/stats.json agrees with what they recompute)."""
    n = np.array([float(s["count"][0]) for s in episodes])
    w = (n / n.sum()).reshape(-1, *([1] * np.ndim(episodes[0]["mean"])))
    means = np.stack([s["mean"] for s in episodes])
    mean = (w * means).sum(0)
    second = (w * (np.stack([s["std"] for s in episodes]) ** 2 + means**2)).sum(0)
    out: Stats = {
        "min": np.min(np.stack([s["min"] for s in episodes]), 0), "max": np.max(np.stack([s["max"] for s in episodes]), 0),
        "mean": mean, "std": np.sqrt(np.maximum(second - mean**2, 0)), "count": np.array([int(n.sum())]),
    }
    return out | {k: (w * np.stack([s[k] for s in episodes])).sum(0) for k in QUANTILE_KEYS}


def to_json(stats: Stats) -> dict[str, Any]:
    return {k: np.asarray(stats[k]).tolist() for k in STAT_KEYS}


def column_type(stats: Stats, key: str) -> pa.DataType:
    """The arrow type of column stats/<feature>/<key>: nested lists as deep as the value's shape;
    count int64; min / max bool, int64 or double as the feature; the rest double."""
    a = np.asarray(stats[key])
    leaf = pa.int64() if key == "count" else (pa.bool_() if a.dtype == bool else pa.int64() if a.dtype.kind in "iu" and key in ("min", "max")
                                              else pa.float64())
    t = leaf
    for _ in range(max(1, a.ndim)):
        t = pa.list_(t)
    return t


def episode_columns(feature: str, stats: Stats) -> dict[str, tuple[pa.DataType, Any]]:
    """{column name: (arrow type, value)} of one feature's stats in the episodes table."""
    return {f"stats/{feature}/{k}": (column_type(stats, k), np.atleast_1d(np.asarray(stats[k])).tolist()) for k in STAT_KEYS}
