"""`openlam bench quality`: train each tiny preset on Meta-World data within its time budget and
report held-out reconstruction against the copy-last-frame baseline and codebook usage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import shutil

from openlam.config import load_config
from openlam.data.cache import CacheConfig, build_cache
from openlam.train.config import TrainConfig
from openlam.train.trainer import train


def bench_quality(presets: list[str], data: str, out_root: str = "runs/quality") -> list[dict[str, Any]]:
    """Decode `data` once into a shared cache (at each preset's image size), then train every preset."""
    rows = []
    caches: dict[int, Path] = {}
    for preset in presets:
        name = Path(preset).stem
        out = Path(out_root) / name
        size = load_config(TrainConfig, preset, [f"data.dataset={data}"]).model.image_size
        if size not in caches:
            caches[size] = build_cache(data, Path(out_root) / f"cache_{size}", CacheConfig(size=size), overwrite=True)
        cfg = load_config(TrainConfig, preset, ["data.dataset=null", f"data.cache={caches[size]}", f"out={out}"])
        if out.exists():
            shutil.rmtree(out)
        r = train(cfg)
        e = r["eval"]
        rows.append({
            "preset": name, "steps": r["steps"], "train s": round(r["train_time_s"]),
            "held-out split": r["eval_split"], "pairs": e["pairs"],
            "recon MSE": e["recon_mse"], "copy-last MSE": e["copy_last_mse"],
            "ratio (<1 beats copy-last)": e["recon_mse"] / e["copy_last_mse"],
            "codes used": f"{e['codes_used']}/{e['codebook_size']}", "usage": e["code_usage"], "perplexity": e["perplexity"],
        })
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.5f}" if isinstance(v, float) and v < 1 else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])
