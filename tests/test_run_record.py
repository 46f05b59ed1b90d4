"""A run is continued only as what it was: resume refuses config changes that alter training and
data other than the run's own, never rewriting the run's record when it refuses; a frame cache left
in the run folder is reused only if it still decodes the configured dataset."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

from openlam.config import from_dict
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import ConfigError
from openlam.train.config import TrainConfig
from openlam.train.run_record import SAFE_ON_RESUME, config_changes
from openlam.train.trainer import train
from test_train import cfg_dict


def dataset(path: Path, seed: int) -> Path:
    return write_lerobot(path, moving_squares(episodes=6, length=20, size=32, seed=seed), fps=10.0, overwrite=True)


def cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return from_dict(TrainConfig, cfg_dict(data, out, **{"steps": 6, "ckpt_every": 6, "eval_batches": 1, **kw}))


def record(out: Path) -> tuple[bytes, bytes]:
    return (out / "config.yaml").read_bytes(), (out / "inputs.json").read_bytes()


def test_config_changes_are_listed_by_dotted_key():
    a = {"steps": 10, "optim": {"lr": 1e-3, "betas": [0.9, 0.95]}, "data": {"gap": {"frames": 4}}}
    b = {"steps": 20, "optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "data": {"gap": {"frames": 4}}, "seed": 1}
    assert config_changes(a, b) == {"optim.betas": ([0.9, 0.95], [0.9, 0.99]), "seed": ("<absent>", 1), "steps": (10, 20)}
    assert "steps" in SAFE_ON_RESUME and "batch_size" not in SAFE_ON_RESUME and "optim.lr" not in SAFE_ON_RESUME


def test_resume_refuses_changes_that_alter_the_run_and_keeps_its_record(tmp_path):
    data, out = dataset(tmp_path / "a", seed=0), tmp_path / "run"
    train(cfg(data, out))
    before = record(out)
    other = dataset(tmp_path / "b", seed=1)
    for change, keys in [({"batch_size": 8, "optim.lr": 1e-2}, ["batch_size", "optim.lr"]), ({"seed": 3}, ["seed"]),
                         ({"data.gap.frames": 3}, ["data.gap.frames"]), ({"data.dataset": str(other)}, ["data.dataset"])]:
        with pytest.raises(ConfigError) as err:
            train(cfg(data, out, steps=12, **change), resume=True)
        for k in keys:
            assert f"  {k}: " in str(err.value), (k, str(err.value))
        assert record(out) == before, change
    with pytest.raises(ConfigError, match="latest checkpoint is at step 6"):
        train(cfg(data, out, steps=5), resume=True)
    assert record(out) == before
    # declared safe: more steps, logging, checkpointing, loader workers
    train(cfg(data, out, steps=9, ckpt_every=3, log_every=1, **{"data.workers": 1}), resume=True)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["steps"], saved["log_every"], saved["ckpt_every"]) == (9, 1, 3)
    assert (out / "checkpoints" / "step_00000009").is_dir()


def test_resume_refuses_a_dataset_changed_in_place(tmp_path):
    data, out = dataset(tmp_path / "a", seed=0), tmp_path / "run"
    train(cfg(data, out))
    before = record(out)
    dataset(data, seed=1)  # regenerated under the same path
    with pytest.raises(ConfigError, match=r"changed since \(fingerprint"):
        train(cfg(data, out, steps=12), resume=True)
    assert record(out) == before


def test_a_stale_cache_in_the_run_folder_is_rebuilt_not_reused(tmp_path):
    """A run that stopped before its first checkpoint leaves out/cache behind; starting again on
    another dataset, or on the same path regenerated, must not train on the old frames."""
    a, b, out = dataset(tmp_path / "a", seed=0), dataset(tmp_path / "b", seed=1), tmp_path / "run"
    train(cfg(a, out, steps=2, ckpt_every=100))
    for p in (out / "checkpoints").glob("step_*"):  # as if it had died before its first checkpoint
        shutil.rmtree(p)
    with pytest.warns(UserWarning, match=r"rebuilding the run's frame cache: it was decoded from .*/a"):
        train(cfg(b, out, steps=2, ckpt_every=100))
    assert json.loads((out / "cache" / "cache.json").read_text())["source"] == str(b.resolve())
    assert json.loads((out / "inputs.json").read_text())["source"] == str(b.resolve())
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["dataset"] == str(b)
    for p in (out / "checkpoints").glob("step_*"):
        shutil.rmtree(p)
    dataset(b, seed=2)  # the same path, new content
    with pytest.warns(UserWarning, match="changed since"):
        train(cfg(b, out, steps=2, ckpt_every=100))
    with warnings.catch_warnings():  # unchanged: reused, no rebuild
        warnings.simplefilter("error", UserWarning)
        for p in (out / "checkpoints").glob("step_*"):
            shutil.rmtree(p)
        train(cfg(b, out, steps=2, ckpt_every=100, **{"model.quantizer.collapse_threshold": 0.0}))


def test_resume_finishes_a_run_stopped_after_its_last_checkpoint_and_ignores_form(tmp_path, monkeypatch):
    """Killed between the last checkpoint and model/ + summary.json: resuming with the same config
    finishes it (what `openlam experiment` does). A record written before a config key existed,
    the dataset named by another path to the same folder, and another device are not changes."""
    data, out = dataset(tmp_path / "a", seed=0), tmp_path / "run"
    train(cfg(data, out))
    shutil.rmtree(out / "model")
    (out / "summary.json").unlink()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["model"]["quantizer"]["warmup_steps"]  # as written by an older openlam
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    monkeypatch.chdir(tmp_path)
    r = train(cfg(Path("a"), out, device="cpu"), resume=True)
    assert r["steps"] == 6 and (out / "model" / "model.safetensors").is_file() and (out / "summary.json").is_file()


def test_damaged_run_records_are_named(tmp_path):
    from openlam.errors import DamagedFile

    data, out = dataset(tmp_path / "a", seed=0), tmp_path / "run"
    train(cfg(data, out))
    (out / "inputs.json").write_text('{"cache": ')
    with pytest.raises(DamagedFile, match=r"inputs.json: unreadable"):
        train(cfg(data, out, steps=8), resume=True)
