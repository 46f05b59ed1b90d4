"""Damaged checkpoints, models and full disks: every error names the file; resume falls back to the
newest checkpoint that reads back whole; a damaged model names the run's last intact checkpoint."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from openlam.errors import DamagedFile, OpenLAMError
from openlam.models.lam import LatentActionModel
from openlam.train import checkpoint
from openlam.train.trainer import train
from test_run_record import cfg, dataset


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def run(tmp_path) -> tuple[Path, Path]:
    data, out = dataset(tmp_path / "d", seed=0), tmp_path / "run"
    train(cfg(data, out, steps=6, ckpt_every=3))
    return data, out


@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt", "meta.json"])
def test_resume_skips_a_damaged_newest_checkpoint_and_says_so(run, damaged):
    data, out = run
    bad = out / "checkpoints" / "step_00000006" / damaged
    truncate(bad) if damaged != "meta.json" else bad.write_text("{\"st")
    with pytest.warns(UserWarning, match=rf"{bad}.*resuming from the checkpoint before it"):
        train(cfg(data, out, steps=9, ckpt_every=3), resume=True)
    logged = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"step": 4,' in line and '"loss"' in line]
    assert logged, "training went on from step 3"
    assert (out / "checkpoints" / "step_00000009" / "meta.json").is_file()


def test_resume_with_no_intact_checkpoint_lists_each(run):
    data, out = run
    for s in (3, 6):
        truncate(out / "checkpoints" / f"step_{s:08d}" / "state.pt", 0.1)
    with pytest.warns(UserWarning), pytest.raises(OpenLAMError, match=r"no intact checkpoint(.|\n)*step_00000006/state.pt(.|\n)*step_00000003/state.pt"):
        train(cfg(data, out, steps=9), resume=True)


def test_a_damaged_model_names_its_file_and_the_last_intact_checkpoint(run):
    data, out = run
    truncate(out / "model" / "model.safetensors")
    with pytest.raises(DamagedFile, match=rf"{out / 'model' / 'model.safetensors'}: not a readable safetensors file.*"
                                          rf"last intact checkpoint is {out / 'checkpoints' / 'step_00000006'} \(step 6\)"):
        LatentActionModel.from_pretrained(out / "model")
    from openlam.label import LabelConfig, label

    with pytest.raises(DamagedFile, match="model.safetensors: not a readable safetensors file"):
        label(out, data, out / "labels", LabelConfig())
    (out / "model" / "config.json").write_text('{"model": ')
    with pytest.raises(DamagedFile, match=r"config.json: not readable JSON"):
        LatentActionModel.from_pretrained(out / "model")


def _safetensors_full() -> Exception:
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")


@pytest.mark.parametrize("where, error", [
    ("torch", RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4544 vs 4432")),
    ("torch", OSError(errno.ENOSPC, "No space left on device")),
    ("safetensors", _safetensors_full()),
], ids=["torch", "os", "safetensors"])
def test_a_full_disk_during_a_checkpoint_is_said_in_words(run, monkeypatch, where, error):
    _, out = run

    def full(*a, **k):
        raise error

    if where == "torch":
        monkeypatch.setattr(checkpoint.torch, "save", full)
    else:
        monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OpenLAMError, match=r"step 9 failed: no space left on the device holding .*; the last intact checkpoint is .*step_00000006"):
        checkpoint.save(out, 9, {"model": {"w": torch.zeros(2)}}, {"x": 1}, keep_last=3)
    assert not list((out / "checkpoints").glob(".step_*")), "the partial checkpoint is removed"


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from openlam.artifacts import atomic_dir, atomic_write_text

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name in (f".ds.tmp-{dead.pid}", f".ds.old-{dead.pid}", ".ds.tmp-1", f".labels.json.tmp-{dead.pid}"):
        (tmp_path / name).mkdir() if "json" not in name else (tmp_path / name).write_text("{")
    with atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "x").write_text("1")
    atomic_write_text(tmp_path / "labels.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".ds.tmp-1", "ds", "labels.json"], left  # pid 1 is alive: its folder may still be in use
