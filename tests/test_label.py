from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openlam.config import from_dict
from openlam.data.cache import FrameCache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import OpenLAMError
from openlam.label import LabelConfig, label, load_labels
from openlam.models.config import LAMConfig
from openlam.models.lam import LatentActionModel, normalize


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    ds = write_lerobot(root / "ds", moving_squares(episodes=7, length=20, size=32), fps=10.0)
    torch.manual_seed(0)
    cfg = from_dict(LAMConfig, {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
                                "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 4}, "decoder": {"dim": 32, "layers": 1, "heads": 4}})
    model = LatentActionModel(cfg).eval()
    model.save_pretrained(root / "model")
    return root, ds, model


def cfg(**kw) -> LabelConfig:
    return from_dict(LabelConfig, {"gap": {"seconds": None, "frames": 3}, "shard_episodes": 2, "batch_size": 16} | kw)


def test_labels_every_pair_once_and_match_the_encoder(setup, tmp_path):
    root, ds, model = setup
    label(root / "model", ds, tmp_path / "out", cfg())
    meta, t = load_labels(tmp_path / "out")
    assert meta["shards"] == 4 and meta["gap"] == {"frames": 3} and meta["num_tokens"] == 4 and meta["code_dim"] == 4
    keys = list(zip(t["episode"].to_pylist(), t["frame"].to_pylist(), t["view"].to_pylist()))
    assert len(keys) == len(set(keys)) == 7 * 2 * (20 - 3)  # no duplicates, no gaps
    cache = FrameCache(tmp_path / "out" / "cache")
    e, f, v = keys[40]
    g0 = cache.episodes[e]["start"] + f
    fr = cache.frames(v)
    x = normalize(torch.from_numpy(np.stack([fr[g0], fr[g0 + 3]])[None]).permute(0, 1, 4, 2, 3))
    with torch.no_grad():
        q = model.encode(x[:, 0], x[:, 1])
    tokens = np.array(t["tokens"].to_pylist())
    assert tokens[40].tolist() == q.indices[0].tolist()
    np.testing.assert_allclose(np.array(t["z_cont"][40].as_py()), q.z_cont[0].flatten().numpy(), rtol=1e-5, atol=1e-6)


def test_crash_then_resume_has_no_duplicates_and_no_gaps(setup, tmp_path, monkeypatch):
    root, ds, _ = setup
    label(root / "model", ds, tmp_path / "ref", cfg())
    _, ref = load_labels(tmp_path / "ref")

    import openlam.label as lab

    real, calls = lab._label_shard, {"n": 0}

    def crashing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(lab, "_label_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        label(root / "model", ds, tmp_path / "out", cfg())
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "out" / "shards" / f".shard-00002.parquet.tmp-{dead.pid}"
    left.write_bytes(b"half a file")  # a write cut short by a killed labeller
    with pytest.raises(OpenLAMError, match="labelling incomplete"):
        load_labels(tmp_path / "out")
    monkeypatch.setattr(lab, "_label_shard", real)
    r = label(root / "model", ds, tmp_path / "out", cfg())
    assert r["labelled_pairs_this_run"] == 3 * 2 * 17  # only episodes 4..6 (shards 2 and 3) were redone
    assert not left.exists()  # the dead writer's leftover is removed
    _, got = load_labels(tmp_path / "out")
    assert got.to_pydict() == ref.to_pydict()
    with pytest.raises(OpenLAMError, match="different settings"):
        label(root / "model", ds, tmp_path / "out", cfg(shard_episodes=3))


def test_torchrun_two_processes_give_the_same_labels(setup, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, ds, _ = setup
    label(root / "model", ds, tmp_path / "one", cfg())
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "openlam", "label",
           str(root / "model"), str(ds), "--out", str(tmp_path / "two"), "gap.seconds=null", "gap.frames=3", "shard_episodes=2",
           "batch_size=16"]
    p = subprocess.run(cmd, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert load_labels(tmp_path / "two")[1].to_pydict() == load_labels(tmp_path / "one")[1].to_pydict()


def test_short_episodes_are_named_not_silently_skipped(setup, tmp_path):
    root, _, _ = setup
    eps = moving_squares(episodes=3, length=20, size=32) + moving_squares(episodes=1, length=3, size=32, seed=5)
    ds = write_lerobot(tmp_path / "ds", eps, fps=10.0)
    with pytest.warns(UserWarning, match=r"1 episode\(s\) no longer than the gap \(3 frames\) give no pairs and are not labelled: \[3\]"):
        label(root / "model", ds, tmp_path / "out", cfg())
    meta, t = load_labels(tmp_path / "out")
    assert meta["unlabelled_episodes"] == [3] and sorted(set(t["episode"].to_pylist())) == [0, 1, 2]


def test_a_copied_run_relabels_and_reads_its_own_cache(setup, tmp_path):
    """labels.json records the model and cache relative to itself: a run copied elsewhere with its
    labels is re-evaluated in place (same settings, no 'different settings' refusal) and reads its
    own cache, not the original's."""
    import shutil

    from openlam.label import labelled_cache

    root, ds, _ = setup
    run = tmp_path / "run"
    shutil.copytree(root / "model", run / "model")
    label(run, ds, run / "eval" / "labels", cfg())
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    r = label(moved, ds, moved / "eval" / "labels", cfg())
    assert r["labelled_pairs_this_run"] == 0  # complete already: nothing redone
    assert labelled_cache(moved / "eval" / "labels") == (moved / "eval" / "labels" / "cache").resolve()
    meta, t = load_labels(moved / "eval" / "labels")
    assert t.num_rows == 7 * 2 * (20 - 3) and not meta["model"].startswith("/")


def test_a_copied_run_whose_cache_is_shared_still_finds_it(setup, tmp_path):
    """Experiments train on one shared cache outside every run: a run copied elsewhere re-labels in
    place and reads that cache where it is."""
    import shutil

    from openlam.data.cache import CacheConfig, build_cache
    from openlam.label import labelled_cache

    root, ds, _ = setup
    shared = build_cache(ds, tmp_path / "bench" / "cache", CacheConfig(size=32))
    run = tmp_path / "run"
    shutil.copytree(root / "model", run / "model")
    label(run, shared, run / "eval" / "labels", cfg())
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    r = label(moved, shared, moved / "eval" / "labels", cfg())
    assert r["labelled_pairs_this_run"] == 0 and labelled_cache(moved / "eval" / "labels") == shared.resolve()
    meta = json.loads((moved / "eval" / "labels" / "labels.json").read_text())
    meta.pop("cache_absolute")
    meta.pop("cache_size")  # a labelling made before these were recorded
    (moved / "eval" / "labels" / "labels.json").write_text(json.dumps(meta))
    assert label(moved, shared, moved / "eval" / "labels", cfg())["labelled_pairs_this_run"] == 0
