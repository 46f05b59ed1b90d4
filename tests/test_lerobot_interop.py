"""openlam's LeRobot files against files LeRobot itself wrote (tests/fixtures/lerobot_0.4.4, made by
tests/fixtures/make_lerobot_fixture.py with lerobot 0.4.4; lerobot is not a dependency): the same
statistics for every feature, in stats.json and per episode with the same column types, so LeRobot's
trainers and edit tools find what they read; action kinds that survive LeRobot's edit tools."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import make_episode
from openlam.data import open_dataset
from openlam.data.lerobot_stats import STAT_KEYS, aggregate, camera_stats, vector_stats
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.validate import validate_dataset

FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_0.4.4"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def ours(tmp_path):
    eps = [make_episode(20, seed=0), make_episode(14, seed=1, lang="open the drawer"), make_episode(25, seed=2)]
    return write_lerobot(tmp_path / "ds", eps, fps=20.0), eps


def kind(feature: str, info: dict) -> str:
    f = info["features"][feature]
    return "camera" if f["dtype"] in ("video", "image") else f["dtype"]


def test_the_fixture_reads_and_validates():
    with pytest.warns(UserWarning, match="no action kinds recorded"):
        src = open_dataset(FIXTURE)
    assert [e.length for e in src.episodes] == [6, 5] and src.cameras == ["front"]
    table = pq.read_table(FIXTURE / "data/chunk-000/file-000.parquet")
    ep = src.load(1)
    np.testing.assert_allclose(ep.actions, np.stack(table["action"].to_pylist()[6:11]))
    assert ep.frames["front"].shape == (5, 32, 32, 3) and ep.language == "open"
    with pytest.warns(UserWarning, match="no action kinds recorded"):
        assert validate_dataset(FIXTURE) == []


def test_every_feature_has_stats_like_lerobots(ours):
    ds, _ = ours
    info, stats = json.loads((ds / "meta/info.json").read_text()), json.loads((ds / "meta/stats.json").read_text())
    ref_info, ref = json.loads((FIXTURE / "meta/info.json").read_text()), json.loads((FIXTURE / "meta/stats.json").read_text())
    assert set(ref) == {k for k, f in ref_info["features"].items() if f["dtype"] != "string"}  # LeRobot's rule
    assert set(stats) == {k for k, f in info["features"].items() if f["dtype"] != "string"}  # masks and bookkeeping included
    ref_by_kind = {kind(k, ref_info): ref[k] for k in ref}
    for k, st in stats.items():
        want = ref_by_kind[kind(k, info) if kind(k, info) in ref_by_kind else "float32"]
        assert list(st) == list(want) == list(STAT_KEYS), k
        for s in STAT_KEYS:  # same nesting: (3, 1, 1) for cameras, (D,) for vectors, (1,) for scalars and count
            assert np.ndim(st[s]) == np.ndim(want[s]), (k, s)
        if kind(k, info) == "camera":
            assert np.shape(st["mean"]) == (3, 1, 1) and 0 <= np.min(st["min"]) and np.max(st["max"]) <= 1
    # count is frames, not pixels, for cameras as for everything else (all frames of short episodes)
    assert stats["observation.images.front"]["count"] == stats["action"]["count"] == [59]
    assert ref["observation.images.front"]["count"] == ref["action"]["count"] == [11]
    assert stats["next.success"]["min"] == [False] and stats["next.success"]["max"] == [True]  # types kept, as LeRobot
    assert isinstance(stats["frame_index"]["max"][0], int) and stats["frame_index"]["max"] == [24]


def test_episode_stats_columns_match_lerobots_types_and_values(ours):
    ds, eps = ours
    t, ref = pq.read_table(ds / EPISODES), pq.read_table(FIXTURE / EPISODES)
    ref_info, info = json.loads((FIXTURE / "meta/info.json").read_text()), json.loads((ds / "meta/info.json").read_text())
    ref_types = {(kind(c.split("/")[1], ref_info), c.split("/")[2]): ref.schema.field(c).type for c in ref.column_names if c.startswith("stats/")}
    cols = [c for c in t.column_names if c.startswith("stats/")]
    assert {c.split("/")[1] for c in cols} == set(json.loads((ds / "meta/stats.json").read_text()))
    for c in cols:
        k = kind(c.split("/")[1], info)
        assert t.schema.field(c).type == ref_types[(k if (k, "min") in ref_types else "float32", c.split("/")[2])], c
    # placed as LeRobot places them: after the video columns, before meta/episodes/*
    assert t.column_names.index(cols[0]) > max(i for i, c in enumerate(t.column_names) if c.startswith("videos/"))
    assert t.column_names[-2:] == ["meta/episodes/chunk_index", "meta/episodes/file_index"]
    # values: each episode's own, and stats.json their aggregate (exact for min, max, mean, std, count)
    for i, ep in enumerate(eps):
        np.testing.assert_allclose(t["stats/action/mean"][i].as_py(), ep.actions.mean(0), rtol=1e-6)
        np.testing.assert_allclose(t["stats/action/q50"][i].as_py(), np.median(ep.actions, 0), rtol=1e-6)
        assert t["stats/observation.images.front/count"][i].as_py() == [ep.length]
        np.testing.assert_allclose(np.array(t["stats/observation.images.front/mean"][i].as_py()).ravel(),
                                   ep.frames["front"].reshape(-1, 3).mean(0) / 255, rtol=1e-9)
    allact = np.concatenate([ep.actions for ep in eps]).astype(np.float64)
    stats = json.loads((ds / "meta/stats.json").read_text())["action"]
    np.testing.assert_allclose(stats["mean"], allact.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], allact.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["min"], allact.min(0), rtol=1e-6)
    assert stats["count"] == [len(allact)]


def test_masks_are_cameras_to_lerobot():
    """LeRobot lists a mask video as one more camera: its stats are RGB-like, of 0/1 values."""
    m = np.zeros((4, 8, 8), bool)
    m[:, :4] = True
    s = camera_stats(m)
    assert s["mean"].shape == (3, 1, 1) and np.allclose(s["mean"], 0.5) and s["count"].tolist() == [4]
    assert np.allclose(s["min"], 0) and np.allclose(s["max"], 1)


def test_aggregate_is_exact_for_moments_and_camera_sampling_is_lerobots():
    from openlam.data.lerobot_stats import sampled_frames

    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)) * (i + 1) + i for i, n in enumerate((5, 40, 17))]
    agg, whole = aggregate([vector_stats(p) for p in parts]), vector_stats(np.concatenate(parts))
    for k in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(agg[k], whole[k], rtol=1e-12)
    assert len(sampled_frames(99)) == 99 and len(sampled_frames(1000)) == 177 and len(sampled_frames(10**6)) == 10000


def test_action_kinds_survive_losing_meta_openlam_json(ours):
    """LeRobot's edit tools keep unknown keys of a feature but drop unknown files in meta/."""
    ds, _ = ours
    (ds / "meta/openlam.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src = open_dataset(ds)
    assert src.action_space.kinds == ["delta", "delta", "delta", "absolute"] and "info.json" in src.action_space.description
    info = json.loads((ds / "meta/info.json").read_text())
    del info["features"]["action"]["kinds"]
    (ds / "meta/info.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match=r"no action kinds recorded .* guessed from the names"):
        open_dataset(ds)


def test_the_lerobot_fixture_round_trips(tmp_path):
    """Read what LeRobot wrote, write it with openlam, read it back: the same episodes (actions,
    state, tasks, success flags exactly; frames within video coding error) and the same stats keys."""
    with pytest.warns(UserWarning, match="no action kinds recorded"):
        src = open_dataset(FIXTURE)
        eps = [src.load(i) for i in range(len(src))]
    out = write_lerobot(tmp_path / "again", eps, fps=src.fps)
    back = open_dataset(out)
    assert back.action_space.kinds == src.action_space.kinds  # the guess is now recorded, no warning
    for a, b in zip(eps, (back.load(i) for i in range(len(back)))):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.state, b.state)
        assert a.language == b.language and a.length == b.length
        np.testing.assert_array_equal(a.extras["next.success"], b.extras["next.success"])
        assert np.abs(a.frames["front"].astype(float) - b.frames["front"]).mean() < 6
    ref, ours = json.loads((FIXTURE / "meta/stats.json").read_text()), json.loads((out / "meta/stats.json").read_text())
    assert set(ours) == set(ref) and all(list(ours[k]) == list(ref[k]) for k in ref)
    for k in ("action", "observation.state", "timestamp", "frame_index", "index", "task_index"):
        for s in ("min", "max", "mean", "count"):  # LeRobot 0.4.4's image std is wrong (0 from an overflow): not compared
            np.testing.assert_allclose(ours[k][s], ref[k][s], rtol=1e-5, atol=1e-6, err_msg=f"{k}.{s}")
