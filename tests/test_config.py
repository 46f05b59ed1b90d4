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
