"""`openlam summary DATASET`: what is in a dataset, as numbers (summary.json/.md) and a contact sheet."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from openlam.artifacts import atomic_write_json, atomic_write_text
from openlam.data.source import EpisodeSource, open_dataset


def summarize(src: EpisodeSource, max_decode: int = 50) -> dict[str, Any]:
    eps = src.episodes
    lengths = np.array([e.length for e in eps])
    tasks = Counter(str(e.metadata.get("task", e.language)) for e in eps)
    success: dict[str, list[bool]] = defaultdict(list)
    for e in eps:
        if "success" in e.metadata:
            success[str(e.metadata.get("task", e.language))].append(bool(e.metadata["success"]))
    presets = Counter(str(e.metadata.get("distractor_preset", "n/a")) for e in eps)
    # decode a bounded number of episodes for per-frame statistics
    picked = np.linspace(0, len(eps) - 1, min(max_decode, len(eps))).round().astype(int)
    acts, coverage = [], defaultdict(list)
    for i in sorted(set(picked.tolist())):
        ep = src.load(int(i))
        if ep.actions is not None:
            acts.append(ep.actions)
        for cam, m in ep.masks.items():
            coverage[cam].append(float(m.mean()))
    out: dict[str, Any] = {
        "path": str(src.path),
        "episodes": len(eps),
        "frames": int(lengths.sum()),
        "fps": sorted({round(e.fps, 3) for e in eps}),
        "cameras": src.cameras,
        "mask_cameras": src.mask_cameras,
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        "tasks": dict(tasks),
        "success_rate": {t: float(np.mean(v)) for t, v in success.items()},
        "distractor_presets": dict(presets),
        "splits": {k: len(v["episodes"]) for k, v in src.splits.items()},
        "mask_coverage_mean": {c: float(np.mean(v)) for c, v in coverage.items()},
        "disk_mb": round(sum(p.stat().st_size for p in Path(src.path).rglob("*") if p.is_file()) / 2**20, 2),
    }
    if acts and src.action_space is not None:
        a = np.concatenate(acts)
        out["actions"] = {
            "names": src.action_space.names, "kinds": src.action_space.kinds,
            "mean": a.mean(0).round(4).tolist(), "std": a.std(0).round(4).tolist(),
        }
    return out


def to_markdown(s: dict[str, Any]) -> str:
    lines = [f"# Dataset summary: `{s['path']}`", "",
             f"- episodes: {s['episodes']}, frames: {s['frames']}, fps: {s['fps']}, on disk: {s['disk_mb']} MB",
             f"- cameras: {', '.join(s['cameras'])}; with masks: {', '.join(s['mask_cameras']) or 'none'}",
             f"- episode length: min {s['episode_length']['min']}, mean {s['episode_length']['mean']:.1f}, max {s['episode_length']['max']}",
             f"- distractor presets: {s['distractor_presets']}",
             f"- splits (episodes): {s['splits']}", "", "| task | episodes | success rate |", "|---|---|---|"]
    for t, n in s["tasks"].items():
        sr = s["success_rate"].get(t)
        lines.append(f"| {t} | {n} | {'n/a' if sr is None else f'{sr:.2f}'} |")
    if s["mask_coverage_mean"]:
        lines += ["", "Mean robot-mask coverage (fraction of pixels): " + ", ".join(f"{c} {v:.3f}" for c, v in s["mask_coverage_mean"].items())]
    if "actions" in s:
        a = s["actions"]
        lines += ["", "| action dim | kind | mean | std |", "|---|---|---|---|"]
        lines += [f"| {n} | {k} | {m:.4f} | {d:.4f} |" for n, k, m, d in zip(a["names"], a["kinds"], a["mean"], a["std"])]
    return "\n".join(lines) + "\n"


def write_summary(dataset: str | Path, out: str | Path, sheet_episodes: int = 3, times: int = 6) -> dict[str, Any]:
    from openlam.viz.contact_sheet import save_contact_sheet

    src = open_dataset(dataset)
    out = Path(out)
    s = summarize(src)
    atomic_write_json(out / "summary.json", s)
    atomic_write_text(out / "summary.md", to_markdown(s))
    picks = np.linspace(0, len(src) - 1, min(sheet_episodes, len(src))).round().astype(int)
    eps = []
    for i in picks:
        ep = src.load(int(i))
        eps.append((f"ep {i}: {str(ep.metadata.get('task', ep.language))[:22]}", ep))
    save_contact_sheet(out / "contact_sheet.png", eps, times)
    return s
