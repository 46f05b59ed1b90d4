"""`openlam bench data`: pairs/s from the frame cache through the DataLoader (2 workers)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.pairs import GapConfig, PairDataset, pair_loader
from openlam.data.synthetic import moving_squares


def synthetic_dataset(out: Path, episodes: int = 16, length: int = 200, cameras: int = 4, size: int = 64) -> Path:
    """Moving-squares episodes with masks and actions: throughput does not depend on content."""
    return write_lerobot(out, moving_squares(episodes, length, size, views=cameras, fps=80.0), fps=80.0, overwrite=True)


def bench_data(dataset: str | None = None, batch_size: int = 64, workers: int = 2, batches: int = 200, size: int = 64) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src = Path(dataset) if dataset else synthetic_dataset(tmp_path / "ds", size=size)
        cache_dir = build_cache(src, tmp_path / "cache", CacheConfig(size=size))
        cache = FrameCache(cache_dir)
        results: dict[str, Any] = {"episodes": len(cache.episodes), "frames": cache.total_frames, "batch_size": batch_size, "workers": workers}
        for views in ([cache.cameras[0]], cache.cameras):
            ds = PairDataset(cache, split=None, views=views, gap=GapConfig(seconds=None, frames=4, max_frames=12))
            loader = pair_loader(ds, batch_size, shuffle=True, workers=workers)
            it = iter(loader)
            for _ in range(5):  # warm-up: worker start, page cache
                next(it)
            n, t0 = 0, time.perf_counter()
            for _ in range(batches):
                try:
                    b = next(it)
                except StopIteration:
                    it = iter(loader)
                    b = next(it)
                n += len(b)
            rate = n / (time.perf_counter() - t0)
            results[f"pairs/s ({len(views)} view{'s' if len(views) > 1 else ''}, {size} px, masks + action target)"] = rate
            del it, loader
        return results
