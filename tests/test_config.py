from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from openlam.config import apply_overrides, dump_config, from_dict, load_config
from openlam.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    views: list[str] = field(default_factory=lambda: ["front"])
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_nested_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run\ninner:\n  lr: 0.01\n")
    cfg = load_config(Outer, p, ["inner.kind=b", "steps=5", "views=[a,b]", "maybe=3"])
    assert cfg == Outer(name="run", steps=5, views=["a", "b"], inner=Inner(lr=0.01, kind="b"), maybe=3)
    assert from_dict(Outer, {"views": "x,y"}).views == ["x", "y"]
    assert "lr: 0.01" in dump_config(cfg)


def test_override_indexes_a_list_and_leaves_the_source_alone():
    src = {"objectives": [{"kind": "reconstruction"}, {"kind": "cycle", "options": {"buffer_batches": 4, "temperature": 1.0}}]}
    out = apply_overrides(src, ["objectives.1.options.buffer_batches=16", "objectives.0.weight=0.5"])
    assert out["objectives"][1]["options"] == {"buffer_batches": 16, "temperature": 1.0}
    assert out["objectives"][0] == {"kind": "reconstruction", "weight": 0.5}
    assert src["objectives"][1]["options"]["buffer_batches"] == 4 and "weight" not in src["objectives"][0]  # not mutated
    with pytest.raises(ConfigError, match="'2' is not an index of a list of 2"):
        apply_overrides(src, ["objectives.2.weight=1"])
    with pytest.raises(ConfigError, match="'kind' is not a section"):
        apply_overrides(src, ["objectives.0.kind.x=1"])


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError, match=r"unknown config key 'inner\.lrr'.*allowed keys here: kind, lr"):
        from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ConfigError, match="unknown config key 'stepz'"):
        load_config(Outer, None, ["stepz=3"])


def test_wrong_types_and_literals():
    with pytest.raises(ConfigError, match="'steps': expected int"):
        from_dict(Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"'inner.kind': 'c' is not allowed; choose one of \['a', 'b'\]"):
        from_dict(Outer, {"inner": {"kind": "c"}})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["novalue"])


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", r"optim.lr must be a finite number > 0, got 0"),
    ("optim.lr=-1e-3", r"optim.lr must be a finite number > 0"),
    ("optim.lr=.nan", r"optim.lr must be a finite number > 0"),
    ("optim.warmup_steps=-5", r"optim.warmup_steps must be >= 0"),
    ("optim.betas=[0.9]", r"optim.betas must be two numbers"),
    ("optim.min_lr_ratio=2", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ("data.workers=-1", r"data.workers must be >= 0"),
    ("data.train_episodes=0", r"data.train_episodes must be >= 1"),
    ("probe_every=-1", r"probe_every must be >= 0"),
    ("time_limit_s=-3", r"time_limit_s must be >= 0"),
    ("ema_decay=1.0", r"ema_decay must be in \[0, 1\)"),
    ("device=gpu", r"device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
])
def test_train_config_values_are_checked_when_loaded(override, message):
    """Before any data is read or cached: a value torch would reject late, or accept and misuse."""
    from openlam.train.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    import torch

    from openlam.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device=cuda: torch .* sees no CUDA GPU on this machine; use device=cpu"):
        distributed.init("cuda")


def test_gap_in_frames_from_the_command_line():
    """`openlam label ... gap.frames=8` (the --help example) means a gap of 8 frames; switching a
    preset's gap from seconds to frames says how."""
    from openlam.label import LabelConfig
    from openlam.train.config import TrainConfig

    gap = load_config(LabelConfig, None, ["gap.frames=8", "shard_episodes=4"]).gap
    assert (gap.seconds, gap.frames) == (None, 8)
    assert load_config(LabelConfig, None, ["gap.seconds=0.3"]).gap.seconds == 0.3
    with pytest.raises(ConfigError, match=r"got seconds=0.1, frames=8 \(.*also set gap.seconds=null\)"):
        load_config(TrainConfig, "configs/lapa_tiny.yaml", ["data.gap.frames=8"])
    assert load_config(TrainConfig, "configs/lapa_tiny.yaml", ["data.gap.frames=8", "data.gap.seconds=null"]).data.gap.frames == 8
