"""`openlam label MODEL DATASET --out DIR`: the encoder as an inverse-dynamics model over every
(t, t+H) of every episode and view.

Output: DIR/labels.json (model and dataset fingerprints, gap, views, code layout) and
DIR/shards/shard-XXXXX.parquet, one per block of episodes, each written atomically with rows
(episode, frame, view, gap, tokens[K], z_cont[K*code_dim]). A killed run resumes where it stopped:
finished shards are kept, the others are redone; under torchrun shard s goes to rank s % world.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from openlam.artifacts import atomic_write_json, fingerprint_files, remove_stale
from openlam.config import load_config, to_dict
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.pairs import GapConfig
from openlam.data.source import open_dataset
from openlam.errors import ConfigError, DataError, OpenLAMError
from openlam.models.lam import LatentActionModel, normalize
from openlam.train import distributed


@dataclass
class LabelConfig:
    gap: GapConfig | None = None  # None: the gap the model was trained with (from its run folder)
    views: list[str] | None = None  # None: every camera
    batch_size: int = 256
    shard_episodes: int = 8
    fps: float | None = None  # for image-sequence folders
    device: str = "auto"


def resolve_model(path: str | Path) -> tuple[Path, GapConfig | None]:
    """A run folder (model/ + config.yaml: the training gap comes along) or a model folder."""
    p = Path(path)
    if (p / "model" / "model.safetensors").is_file():
        gap = None
        if (p / "config.yaml").is_file():
            from openlam.train.config import TrainConfig

            gap = load_config(TrainConfig, p / "config.yaml").data.gap
        return p / "model", gap
    if (p / "model.safetensors").is_file():
        return p, None
    raise ConfigError(f"{p}: expected a run folder (with model/) or a model folder (with model.safetensors)")


def label(model_path: str | Path, dataset: str | Path, out: str | Path, cfg: LabelConfig) -> dict[str, Any]:
    info, device = distributed.init(cfg.device)
    try:
        result = _label(model_path, dataset, Path(out), cfg, info, device)
        distributed.finish()
        return result
    finally:
        distributed.shutdown()


def _label(model_path, dataset, out: Path, cfg: LabelConfig, info, device) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    mdir, run_gap = resolve_model(model_path)
    gap = cfg.gap or run_gap
    if gap is None:
        raise ConfigError("label: no gap given and none found with the model; pass gap.seconds=... or gap.frames=...")
    gap.validate()
    model = LatentActionModel.from_pretrained(mdir, map_location=device).eval()
    # a frame cache (e.g. a training run's <run>/cache) is used as is: no second decode
    given_cache = (Path(dataset) / "cache.json").is_file()
    cache_dir = Path(dataset) if given_cache else out / "cache"
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        if not given_cache and not (cache_dir / "cache.json").is_file():
            build_cache(open_dataset(dataset, fps=cfg.fps), cache_dir, CacheConfig(size=model.cfg.image_size, cameras=cfg.views))
    distributed.barrier()
    cache = FrameCache(cache_dir)
    if model.cfg.encoder.kind == "pixel" and cache.size != model.cfg.image_size:
        raise DataError(cache_dir / "cache.json", "config.size", f"{model.cfg.image_size} (the model's image_size)", str(cache.size))
    views = cfg.views or cache.cameras
    missing = [v for v in views if v not in cache.cameras]
    if missing:
        raise DataError(cache_dir / "cache.json", "cameras", f"the requested views {views}", f"{cache.cameras} (missing {missing})")
    n_eps = len(cache.episodes)
    shards = (n_eps + cfg.shard_episodes - 1) // cfg.shard_episodes
    short = [e for e, ep in enumerate(cache.episodes) if ep["length"] <= gap.frame_range(ep["fps"])[0]]
    if short and info.main:
        span = f"{gap.frames} frames" if gap.frames else f"{gap.seconds} s"
        warnings.warn(f"{cache_dir}: {len(short)} episode(s) no longer than the gap ({span}) give no pairs and "
                      f"are not labelled: {short[:10]}{' ...' if len(short) > 10 else ''}", stacklevel=2)
    meta = {
        # paths relative to the labels folder (a run copied or moved with its labels and cache still
        # resolves them) and as they were (a cache shared by many runs stays where it is)
        "model": os.path.relpath(mdir.resolve(), out.resolve()), "model_fingerprint": fingerprint_files([mdir / "model.safetensors"]),
        "dataset": cache.meta["source"], "dataset_fingerprint": cache.meta["source_fingerprint"],
        "cache": os.path.relpath(cache_dir.resolve(), out.resolve()), "cache_absolute": str(cache_dir.resolve()),
        "cache_size": cache.size,
        "gap": gap.describe(), "views": views, "num_tokens": model.cfg.quantizer.num_tokens,
        "codebook_size": model.cfg.codebook_size, "code_dim": model.quantizer.code_dim,
        **({"background_tokens": model.cfg.background.num_tokens, "background_codebook_size": model.background_quantizer.codebook_size}
           if model.background_quantizer is not None and model.cfg.background is not None else {}),
        "shard_episodes": cfg.shard_episodes, "shards": shards, "episodes": n_eps,
    }
    meta_path = out / "labels.json"
    if meta_path.is_file():
        # where the model and cache lie is not what the labels are: their fingerprints, size and views are
        where = ("complete", "unlabelled_episodes", "model", "cache", "cache_absolute")
        old = {k: v for k, v in json.loads(meta_path.read_text()).items() if k not in where}
        now = {k: v for k, v in meta.items() if k not in where}
        diff = sorted(k for k in old if k not in now or old[k] != now[k])  # a key added since is not a difference,
        diff += [k for k in ("background_tokens",) if k in now and k not in old]  # unless it adds columns to the shards
        if diff:
            raise OpenLAMError(f"{meta_path}: a labelling with different settings is there ({diff}); use another --out")
    elif info.main:
        atomic_write_json(meta_path, meta | {"complete": False})
    distributed.barrier()
    t0, frames = time.perf_counter(), 0
    for s in range(info.rank, shards, info.world):
        path = out / "shards" / f"shard-{s:05d}.parquet"
        if path.is_file():
            continue  # finished before a kill: written atomically, so complete
        table = _label_shard(model, cache, range(s * cfg.shard_episodes, min(n_eps, (s + 1) * cfg.shard_episodes)),
                             views, gap, cfg.batch_size, device)
        frames += table.num_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)  # a shard's temporary file left by a killed labeller
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    elapsed = time.perf_counter() - t0
    distributed.barrier()
    if info.main:
        done = all((out / "shards" / f"shard-{s:05d}.parquet").is_file() for s in range(shards))
        atomic_write_json(meta_path, meta | {"complete": done, "unlabelled_episodes": short})
    return {"out": str(out), "shards": shards, "labelled_pairs_this_run": frames, "seconds": elapsed,
            "pairs_per_s": frames / elapsed if elapsed > 0 else 0.0, "config": to_dict(cfg)}


@torch.no_grad()
def _label_shard(model: LatentActionModel, cache: FrameCache, episodes: range, views: list[str], gap: GapConfig,
                 batch: int, device: torch.device) -> pa.Table:
    cols: dict[str, list[Any]] = {"episode": [], "frame": [], "view": [], "gap": [], "tokens": [], "z_cont": [],
                                  "bg_tokens": [], "bg_z_cont": []}
    for e in episodes:
        ep = cache.episodes[e]
        H = gap.frame_range(ep["fps"])[0]  # labelling uses one fixed gap (the range's lower end)
        T = ep["length"]
        ts = np.arange(max(0, T - H))
        for v in views:
            frames = cache.frames(v)
            for i in range(0, len(ts), batch):
                t = ts[i : i + batch]
                g0 = ep["start"] + t
                pair = torch.from_numpy(np.stack([frames[g0], frames[g0 + H]], 1)).permute(0, 1, 4, 2, 3)
                x = normalize(pair.to(device))
                q, bg = model.encode_with_background(x[:, 0], x[:, 1])
                cols["episode"].append(np.full(len(t), e, np.int64))
                cols["frame"].append(t.astype(np.int64))
                cols["view"] += [v] * len(t)
                cols["gap"].append(np.full(len(t), H, np.int32))
                cols["tokens"].append(q.indices.cpu().numpy().astype(np.int32))
                cols["z_cont"].append(q.z_cont.float().flatten(1).cpu().numpy())
                if bg is not None:
                    cols["bg_tokens"].append(bg.indices.cpu().numpy().astype(np.int32))
                    cols["bg_z_cont"].append(bg.z_cont.float().flatten(1).cpu().numpy())
    if not cols["episode"]:
        return pa.table({"episode": pa.array([], pa.int64())})
    cat = np.concatenate
    bg_cols = (cat(cols["bg_tokens"]), cat(cols["bg_z_cont"])) if cols["bg_tokens"] else None
    return shard_table(cat(cols["episode"]), cat(cols["frame"]), cols["view"], cat(cols["gap"]), cat(cols["tokens"]), cat(cols["z_cont"]),
                       bg_cols)


def _fixed(x: np.ndarray, dtype: Any) -> pa.FixedSizeListArray:
    a = np.asarray(x, dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def shard_table(episode: np.ndarray, frame: np.ndarray, view: list[str] | np.ndarray, gap: np.ndarray, tokens: np.ndarray,
                z_cont: np.ndarray, background: tuple[np.ndarray, np.ndarray] | None = None) -> pa.Table:
    """The label shard schema: one row per (episode, frame, view); tokens (K,) int32, z_cont float32;
    with a background bottleneck also bg_tokens (K_bg,) int32 and bg_z_cont float32."""
    cols = {
        "episode": np.asarray(episode, np.int64), "frame": np.asarray(frame, np.int64),
        "view": pa.array([str(v) for v in view], pa.string()), "gap": np.asarray(gap, np.int32),
        "tokens": _fixed(tokens, np.int32), "z_cont": _fixed(z_cont, np.float32),
    }
    if background is not None:
        cols |= {"bg_tokens": _fixed(background[0], np.int32), "bg_z_cont": _fixed(background[1], np.float32)}
    return pa.table(cols)


def _resolve(path: str, labels: Path) -> Path:
    p = Path(path)
    return (p if p.is_absolute() else labels / p).resolve()


def labelled_cache(labels: str | Path) -> Path:
    """The frame cache a labelling was made from: where labels.json says relative to itself (a run
    copied with its cache), else where it was (a shared cache)."""
    labels = Path(labels)
    meta = json.loads((labels / "labels.json").read_text())
    for p in (_resolve(meta["cache"], labels), Path(meta.get("cache_absolute") or meta["cache"])):
        if (p / "cache.json").is_file():
            return p
    raise DataError(labels / "labels.json", "cache", "a frame cache where the labels were made from",
                    f"none at {_resolve(meta['cache'], labels)} or {meta.get('cache_absolute')}")


def load_labels(out: str | Path) -> tuple[dict[str, Any], pa.Table]:
    """labels.json and all shards, in episode order. Errors if the labelling is incomplete."""
    out = Path(out)
    meta = json.loads((out / "labels.json").read_text())
    if not meta.get("complete"):
        raise OpenLAMError(f"{out}/labels.json: labelling incomplete; run `openlam label` again with the same --out to finish it")
    tables = [pq.read_table(out / "shards" / f"shard-{s:05d}.parquet") for s in range(meta["shards"])]
    return meta, pa.concat_tables([t for t in tables if t.num_rows])
