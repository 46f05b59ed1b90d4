"""Checkpoints: weights in safetensors, optimizer/scheduler/RNG/step in a torch file we wrote
ourselves (loaded with weights_only=True), written atomically, keep-last-k."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from openlam.errors import DamagedFile, OpenLAMError
from openlam.models.weights import read_weights


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
    try:
        tmp.mkdir()
        for stem, state in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{stem}.safetensors"))
        torch.save(train_state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
        for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as e:  # OSError, torch's RuntimeError ('unexpected pos'), safetensors' own error type
        shutil.rmtree(tmp, ignore_errors=True)
        intact = last_intact(out)
        raise OpenLAMError(f"{tmp}: writing the checkpoint of step {step} failed: {_why(e, root)}; "
                           f"the last intact checkpoint is {intact[0] if intact else 'none'}") from e
    for stale in root.glob(".step_*.tmp-*"):  # left by killed runs
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _why(e: BaseException, where: Path) -> str:
    """A full disk in words: torch.save reports it as 'unexpected pos ...', safetensors as its own
    error type with 'No space left on device (os error 28)'."""
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "unexpected pos" in str(e) or "No space left" in str(e)
    if not full:
        try:
            full = shutil.disk_usage(where).free < (1 << 20)
        except OSError:
            pass
    return f"no space left on the device holding {where}" if full else f"{type(e).__name__}: {e}"


def finished(out: Path) -> list[Path]:
    """The run's finished checkpoints (meta.json is written last), oldest first."""
    return sorted(p for p in ckpt_dir(out).glob("step_*") if (p / "meta.json").is_file())


def latest(out: Path) -> Path | None:
    done = finished(out)
    return done[-1] if done else None


def load(path: Path) -> tuple[int, Weights, dict[str, Any]]:
    """Step, every weight file by stem, and the training state; DamagedFile names a file that
    cannot be read back."""
    if not (path / "meta.json").is_file():
        raise OpenLAMError(f"{path}: not a finished checkpoint (no meta.json)")
    step = _step(path)
    weights = {f.name.removesuffix(".safetensors"): read_weights(f) for f in sorted(path.glob("*.safetensors"))}
    if "model" not in weights:
        raise DamagedFile(f"{path}: no model.safetensors; the checkpoint is incomplete")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a missing file, an unpickling error
        raise DamagedFile(f"{path / 'state.pt'}: unreadable ({type(e).__name__}: {e}); it is truncated or damaged") from e
    return step, weights, state


def _step(path: Path) -> int:
    """The step in a checkpoint's meta.json; DamagedFile when it cannot be read."""
    try:
        return int(json.loads((path / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFile(f"{path / 'meta.json'}: unreadable ({type(e).__name__}: {e})") from e


def load_latest(out: Path) -> tuple[Path, int, Weights, dict[str, Any]]:
    """The newest checkpoint that reads back whole; each damaged newer one is named in a warning.
    Raises, listing every checkpoint and what is wrong with it, when none does."""
    problems = []
    for path in reversed(finished(out)):
        try:
            step, weights, state = load(path)
        except DamagedFile as e:
            problems.append(str(e))
            warnings.warn(f"{e}; resuming from the checkpoint before it", stacklevel=2)
            continue
        return path, step, weights, state
    listed = "\n".join(f"  {p}" for p in problems) or "  (none finished)"
    raise OpenLAMError(f"{ckpt_dir(out)}: no intact checkpoint to resume from:\n{listed}")


def last_intact(out: Path) -> tuple[Path, int] | None:
    """The newest checkpoint whose model weights read back, and its step (None if there is none)."""
    for path in reversed(finished(out)):
        try:
            step = _step(path)
            read_weights(path / "model.safetensors")
        except OpenLAMError:
            continue
        return path, step
    return None
