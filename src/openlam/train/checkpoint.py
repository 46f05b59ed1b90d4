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


Weights = dict[str, dict[str, torch.Tensor]]  # file stem -> state dict: model, ema, objective


def save(out: Path, step: int, weights: Weights, train_state: dict[str, Any], keep_last: int) -> Path:
    root = ckpt_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for stem, state in weights.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{stem}.safetensors"))
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


def step_of(path: Path) -> int:
    """The step a finished checkpoint was saved at."""
    return int(json.loads((path / "meta.json").read_text())["step"])


def load(path: Path) -> tuple[int, Weights, dict[str, Any]]:
    """Step, every weight file by stem, and the training state."""
    if not (path / "meta.json").is_file():
        raise OpenLAMError(f"{path}: not a finished checkpoint (no meta.json)")
    step = json.loads((path / "meta.json").read_text())["step"]
    weights = {f.name.removesuffix(".safetensors"): load_file(str(f)) for f in sorted(path.glob("*.safetensors"))}
    if "model" not in weights:
        raise OpenLAMError(f"{path}: no model.safetensors; the checkpoint is incomplete, resume from an earlier one")
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    return step, weights, state
