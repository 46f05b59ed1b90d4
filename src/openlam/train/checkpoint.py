"""Checkpoints: weights in safetensors, optimizer/scheduler/RNG/step in a torch file we wrote
ourselves (loaded with weights_only=True), written atomically, keep-last-k."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from openlam.errors import OpenLAMError


def ckpt_dir(out: Path) -> Path:
    return out / "checkpoints"


def save(out: Path, step: int, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
         train_state: dict[str, Any], keep_last: int) -> Path:
    root = ckpt_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
    torch.save(train_state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    for stale in root.glob(".step_*.tmp-*"):  # left by killed runs
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(out: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir(out).glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def load(path: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    if not (path / "meta.json").is_file():
        raise OpenLAMError(f"{path}: not a finished checkpoint (no meta.json)")
    step = json.loads((path / "meta.json").read_text())["step"]
    model = load_file(str(path / "model.safetensors"))
    ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return step, model, ema, state
