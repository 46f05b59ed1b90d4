"""Decoded frame cache: every frame of every view, once, as uint8 memmaps at training resolution.

Layout of a cache directory (written atomically):
  cache.json            config, source path + fingerprint, per-episode offsets, splits, action space
  frames.<camera>.u8    (N, S, S, 3) uint8, all episodes back to back
  masks.<camera>.u8     (N, S, S) uint8 0/1, for cameras that have masks
  actions.f32 / state.f32   (N, A) / (N, D) float32 when the source has them
  extra.<name>.f32      (N, D) float32 per-frame extras of the source (e.g. observation.distractors,
                        next.success), for the evaluation
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openlam.artifacts import atomic_dir, atomic_write_json
from openlam.config import to_dict
from openlam.data.episode import ActionSpace, Episode
from openlam.data.source import EpisodeSource, open_dataset
from openlam.errors import DataError
from openlam.progress import progress

CACHE_VERSION = 1


@dataclass
class CacheConfig:
    size: int = 64
    crop: str = "center"  # "center": crop to square then resize; "stretch": resize as is
    cameras: list[str] | None = None  # None: all cameras of the source
    workers: int = 2  # decoding threads (PyAV and PIL release the GIL)

    def validate(self) -> None:
        if self.size < 8:
            raise ValueError(f"cache size must be >= 8, got {self.size}")
        if self.crop not in ("center", "stretch"):
            raise ValueError(f"crop must be 'center' or 'stretch', got {self.crop!r}")


def bounded_map(pool: Executor, fn: Callable[[int], Any], items: Iterable[int], window: int) -> Iterator[Any]:
    """Like pool.map, in order, but with at most `window` results in flight (bounded memory)."""
    pending: list[Future] = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for f in pending:
        yield f.result()


def build_cache(source: EpisodeSource | str | Path, out: str | Path, cfg: CacheConfig, overwrite: bool = False) -> Path:
    src = source if isinstance(source, EpisodeSource) else open_dataset(source)
    cams = src.check_cameras(cfg.cameras)
    mask_cams = [c for c in cams if c in src.mask_cameras]
    out = Path(out)
    crop = "center" if cfg.crop == "center" else "none"

    def load(i: int) -> Episode:
        return src.load(i, cams, size=cfg.size, crop=crop)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        files = {f"frames.{c}.u8": open(tmp / f"frames.{c}.u8", "wb") for c in cams}
        files |= {f"masks.{c}.u8": open(tmp / f"masks.{c}.u8", "wb") for c in mask_cams}
        has_actions = src.action_space is not None
        state_dim: int | None = None
        extra_dims: dict[str, int] = {}
        if has_actions:
            files["actions.f32"] = open(tmp / "actions.f32", "wb")
        episodes: list[dict[str, Any]] = []
        start = 0
        try:
            with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
                loaded = bounded_map(pool, load, range(len(src)), window=2 * max(1, cfg.workers))
                for i, ep in enumerate(progress(loaded, total=len(src), desc="cache")):
                    for c in cams:
                        files[f"frames.{c}.u8"].write(np.ascontiguousarray(ep.frames[c]).tobytes())
                    for c in mask_cams:
                        files[f"masks.{c}.u8"].write(ep.masks[c].astype(np.uint8).tobytes())
                    if has_actions:
                        assert ep.actions is not None
                        files["actions.f32"].write(ep.actions.astype(np.float32).tobytes())
                    if ep.state is not None:
                        if i == 0:
                            state_dim = ep.state.shape[1]
                            files["state.f32"] = open(tmp / "state.f32", "wb")
                        if ep.state.shape[1] != state_dim:
                            raise DataError(src.path, f"episode {i} state", f"{state_dim} dims like episode 0", str(ep.state.shape[1]))
                        files["state.f32"].write(ep.state.astype(np.float32).tobytes())
                    if i == 0:
                        extra_dims = {k: int(np.prod(np.shape(x)[1:])) for k, x in ep.extras.items()}
                        files |= {f"extra.{k}.f32": open(tmp / f"extra.{k}.f32", "wb") for k in extra_dims}
                    for k, d in extra_dims.items():
                        x = ep.extras.get(k)
                        if x is None or int(np.prod(np.shape(x)[1:])) != d:
                            raise DataError(src.path, f"episode {i} extras[{k}]", f"a per-frame feature of {d} dims like episode 0",
                                            "missing" if x is None else str(np.shape(x)))
                        files[f"extra.{k}.f32"].write(np.asarray(x, np.float32).reshape(ep.length, d).tobytes())
                    info = src.episodes[i]
                    episodes.append({
                        "index": i, "start": start, "length": ep.length, "fps": ep.fps,
                        "language": ep.language, "robot": ep.robot, "metadata": info.metadata,
                    })
                    start += ep.length
        finally:
            for f in files.values():
                f.close()
        atomic_write_json(tmp / "cache.json", {
            "version": CACHE_VERSION,
            "config": to_dict(cfg),
            "source": str(src.path.resolve()),
            "source_fingerprint": src.fingerprint(),
            "cameras": cams,
            "mask_cameras": mask_cams,
            "total_frames": start,
            "action_space": src.action_space.to_dict() if src.action_space else None,
            "state_dim": state_dim,
            "extras": extra_dims,
            "episodes": episodes,
            # splits keep their episodes; their camera lists are narrowed to the cached cameras
            "splits": {name: {**sp, "cameras": [c for c in sp.get("cameras", cams) if c in cams]} for name, sp in src.splits.items()},
        })
    return out


class FrameCache:
    """Read side: memmaps opened lazily (so DataLoader workers each map the files themselves)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "cache.json"
        if not meta_path.is_file():
            raise DataError(meta_path, "(file)", "a frame cache made by `openlam cache`", "missing")
        self.meta = meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            raise DataError(meta_path, "version", str(CACHE_VERSION), str(meta.get("version")))
        self.size = int(meta["config"]["size"])
        self.cameras: list[str] = meta["cameras"]
        self.mask_cameras: list[str] = meta["mask_cameras"]
        self.total_frames = int(meta["total_frames"])
        self.episodes: list[dict[str, Any]] = meta["episodes"]
        self.splits: dict[str, dict[str, Any]] = meta["splits"]
        self.action_space = ActionSpace.from_dict(meta["action_space"]) if meta["action_space"] else None
        self.state_dim = meta.get("state_dim")
        self.extras: dict[str, int] = meta.get("extras", {})  # name -> dims per frame
        self._maps: dict[str, np.memmap] = {}

    def _map(self, name: str, shape_tail: tuple[int, ...], dtype: Any) -> np.memmap:
        if name not in self._maps:
            p = self.path / name
            expected = self.total_frames * int(np.prod(shape_tail)) * np.dtype(dtype).itemsize
            if not p.is_file() or p.stat().st_size != expected:
                got = p.stat().st_size if p.is_file() else "missing"
                raise DataError(p, "(file size)", f"{expected} bytes for {self.total_frames} frames", str(got))
            self._maps[name] = np.memmap(p, dtype=dtype, mode="r", shape=(self.total_frames, *shape_tail))
        return self._maps[name]

    @property
    def starts(self) -> np.ndarray:
        """(E,) int64: global frame index of each episode's first frame."""
        return np.array([e["start"] for e in self.episodes], dtype=np.int64)

    @property
    def tasks(self) -> list[str]:
        """Task of each episode: its metadata's `task`, else its language instruction."""
        return [str(e["metadata"].get("task", e["language"])) for e in self.episodes]

    def frames(self, camera: str) -> np.memmap:
        return self._map(f"frames.{camera}.u8", (self.size, self.size, 3), np.uint8)

    def masks(self, camera: str) -> np.memmap:
        return self._map(f"masks.{camera}.u8", (self.size, self.size), np.uint8)

    def actions(self) -> np.memmap:
        assert self.action_space is not None
        return self._map("actions.f32", (self.action_space.dim,), np.float32)

    def state(self) -> np.memmap:
        assert self.state_dim is not None
        return self._map("state.f32", (self.state_dim,), np.float32)

    def extra(self, name: str) -> np.memmap:
        """(N, D) float32 per-frame extra feature of the source, e.g. observation.distractors."""
        if name not in self.extras:
            raise DataError(self.path / "cache.json", "extras", f"a cached per-frame feature '{name}'", str(sorted(self.extras)) or "none")
        return self._map(f"extra.{name}.f32", (self.extras[name],), np.float32)

    def __getstate__(self) -> dict[str, Any]:  # memmaps are re-opened in each worker process
        d = dict(self.__dict__)
        d["_maps"] = {}
        return d
