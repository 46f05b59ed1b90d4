from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import frame_level, make_episode
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.pairs import GapConfig, PairDataset, pair_loader
from openlam.errors import ConfigError, DataError


@pytest.fixture
def cache(tmp_path, episodes):
    ds = write_lerobot(tmp_path / "ds", episodes, fps=20.0)
    return FrameCache(build_cache(ds, tmp_path / "cache", CacheConfig(size=32)))


def test_cache_matches_source(tmp_path, episodes, cache):
    assert cache.total_frames == 59 and cache.cameras == ["front", "side"]
    from openlam.data import open_dataset

    src = open_dataset(tmp_path / "ds")
    for i, info in enumerate(cache.episodes):
        ep = src.load(i, size=32)
        s = slice(info["start"], info["start"] + info["length"])
        np.testing.assert_array_equal(cache.frames("side")[s], ep.frames["side"])
        np.testing.assert_array_equal(cache.masks("front")[s].astype(bool), episodes[i].masks["front"])
        np.testing.assert_array_equal(cache.actions()[s], episodes[i].actions)
    assert cache.meta["source_fingerprint"] == src.fingerprint()


def test_pairs_right_frames_for_gap_in_seconds(cache):
    # fps 20, 0.25 s -> H = 5 frames
    ds = PairDataset(cache, split=None, gap=GapConfig(seconds=0.25))
    assert len(ds) == (20 - 5) + (14 - 5) + (25 - 5)
    b = ds.__getitems__(list(range(len(ds))))
    assert (b.gap == 5).all()
    for v, off in (("front", 0), ("side", 1)):
        assert b.frames[v].shape == (len(ds), 2, 3, 32, 32) and b.frames[v].dtype == torch.uint8
        lv0 = frame_level(b.frames[v][:, 0].permute(0, 2, 3, 1).numpy())
        lv1 = frame_level(b.frames[v][:, 1].permute(0, 2, 3, 1).numpy())
        expect0 = (8 * (b.t.numpy() + off)) % 240 + 8
        expect1 = (8 * (b.t.numpy() + 5 + off)) % 240 + 8
        np.testing.assert_allclose(lv0, expect0, atol=4)
        np.testing.assert_allclose(lv1, expect1, atol=4)
    assert b.masks["front"].shape == (len(ds), 2, 32, 32) and b.masks["front"].dtype == torch.bool


def test_action_target_over_gap(cache, episodes):
    ds = PairDataset(cache, split=None, gap=GapConfig(seconds=None, frames=3))
    b = ds.__getitems__([0, 7, 20])
    for k, (e, t) in enumerate(zip(b.episode.tolist(), b.t.tolist())):
        a = episodes[e].actions
        np.testing.assert_allclose(b.action[k, :3].numpy(), a[t : t + 3, :3].sum(0), rtol=1e-5, atol=1e-5)
        assert b.action[k, 3].item() == pytest.approx(a[t + 2, 3])
    assert b.language == ["push the block", "push the block", "open the drawer"]


def test_gap_conversion_uses_each_episodes_fps(tmp_path):
    eps = [make_episode(30, fps=10.0, seed=0), make_episode(60, fps=40.0, seed=1)]
    # mixed fps are allowed in the cache via separate datasets; here: one dataset per fps
    c10 = FrameCache(build_cache(write_lerobot(tmp_path / "a", eps[:1], fps=10.0), tmp_path / "ca", CacheConfig(size=16)))
    c40 = FrameCache(build_cache(write_lerobot(tmp_path / "b", eps[1:], fps=40.0), tmp_path / "cb", CacheConfig(size=16)))
    g = GapConfig(seconds=0.5)
    assert PairDataset(c10, split=None, gap=g).__getitems__([0]).gap.item() == 5
    assert PairDataset(c40, split=None, gap=g).__getitems__([0]).gap.item() == 20


def test_random_gap_range_is_deterministic_and_bounded(cache):
    ds = PairDataset(cache, split=None, gap=GapConfig(seconds=None, frames=2, max_frames=6), seed=3)
    idx = list(range(len(ds)))
    g1 = ds.__getitems__(idx).gap.numpy()
    g2 = ds.__getitems__(idx[::-1]).gap.numpy()[::-1]
    np.testing.assert_array_equal(g1, g2)  # a pair's gap does not depend on batch composition
    assert g1.min() >= 2 and g1.max() <= 6 and len(set(g1.tolist())) == 5
    b = ds.__getitems__(idx)
    lengths = np.array([cache.episodes[e]["length"] for e in b.episode.tolist()])
    assert (b.t.numpy() + b.gap.numpy() <= lengths - 1).all()  # never crosses the episode end
    ds.set_epoch(1)
    assert not np.array_equal(ds.__getitems__(idx).gap.numpy(), g1)


def test_splits_are_by_episode_and_loader_works(cache):
    cache.splits = {"train": {"episodes": [0, 2], "cameras": ["front"]}, "test": {"episodes": [1], "cameras": ["side"]}}
    tr = PairDataset(cache, split="train", gap=GapConfig(seconds=None, frames=2))
    te = PairDataset(cache, split="test", gap=GapConfig(seconds=None, frames=2))
    assert tr.views == ["front"] and te.views == ["side"]
    assert set(tr._ep.tolist()) == {0, 2} and set(te._ep.tolist()) == {1}
    batches = list(pair_loader(tr, batch_size=8, workers=2))
    assert len(batches) == len(tr) // 8 and all(len(b) == 8 for b in batches)
    assert set(torch.cat([b.episode for b in batches]).tolist()) <= {0, 2}
    with pytest.raises(ConfigError, match="split 'nope'"):
        PairDataset(cache, split="nope")
    with pytest.raises(DataError, match="cameras"):
        PairDataset(cache, split=None, views=["top"])
    with pytest.raises(ConfigError, match="exactly one"):
        PairDataset(cache, split=None, gap=GapConfig(seconds=0.5, frames=3))


def test_episodes_shorter_than_gap_are_reported(cache):
    with pytest.warns(UserWarning, match=r"1 episode\(s\) shorter than the gap give no pairs: \[1\]"):
        ds = PairDataset(cache, split=None, gap=GapConfig(seconds=None, frames=15))
    assert ds.skipped_episodes == [1] and len(ds) == (20 - 15) + (25 - 15)


def test_camera_subset_cache_narrows_split_views(tmp_path, episodes):
    ds = write_lerobot(tmp_path / "ds", episodes, fps=20.0)
    cache = FrameCache(build_cache(ds, tmp_path / "c", CacheConfig(size=16, cameras=["side"])))
    assert cache.cameras == ["side"] and all(sp["cameras"] == ["side"] for sp in cache.splits.values())
    assert PairDataset(cache, split="train", gap=GapConfig(seconds=None, frames=2)).views == ["side"]


def test_gap_draws_do_not_alias_across_seed_and_epoch(cache):
    a = PairDataset(cache, split=None, gap=GapConfig(seconds=None, frames=1, max_frames=10), seed=0)
    b = PairDataset(cache, split=None, gap=GapConfig(seconds=None, frames=1, max_frames=10), seed=1)
    idx = np.arange(len(a))
    assert not np.array_equal(a.gaps(idx, 256), b.gaps(idx, 0))
    # virtual indices (epoch * len + i) give the epoch's draw
    np.testing.assert_array_equal(a.__getitems__((3 * len(a) + idx).tolist()).gap.numpy(), a.gaps(idx, 3))


def test_split_without_cached_cameras_is_an_error(tmp_path, episodes):
    ds = write_lerobot(tmp_path / "ds", episodes, fps=20.0)
    cache = FrameCache(build_cache(ds, tmp_path / "c", CacheConfig(size=16, cameras=["side"])))
    cache.splits["train"]["cameras"] = []
    with pytest.raises(DataError, match=r"'splits\.train\.cameras': expected at least one cached camera"):
        PairDataset(cache, split="train")


def test_episode_subset_must_lie_in_the_split(tmp_path, episodes):
    cache = FrameCache(build_cache(write_lerobot(tmp_path / "ds", episodes, fps=20.0), tmp_path / "c", CacheConfig(size=16)))
    train = cache.splits["train"]["episodes"]
    ds = PairDataset(cache, split="train", episodes=train[:1])
    assert sorted(ds.pairs_per_episode()) == train[:1]
    outside = next(e for e in range(len(cache.episodes)) if e not in train)
    with pytest.raises(ConfigError, match=rf"episodes \[{outside}\] are not in split 'train'"):
        PairDataset(cache, split="train", episodes=[outside])


def test_nested_subset_only_adds_episodes_and_balances_tasks():
    from openlam.data.splits import nested_subset

    eps = list(range(100, 130))
    tasks = ["a"] * 15 + ["b"] * 10 + ["c"] * 5
    prev: set[int] = set()
    for n in range(1, 31):
        sub = nested_subset(eps, tasks, n, seed=0)
        assert len(sub) == n and prev <= set(sub) and set(sub) <= set(eps)
        per = [sum(tasks[eps.index(e)] == t for e in sub) for t in "abc"]
        cap = [15, 10, 5]
        if n < 30:  # round-robin: each task holds k or k + 1 episodes, or all it has
            k = min(p for p, c in zip(per, cap) if p < c)
            assert all(p in (min(c, k), min(c, k + 1)) for p, c in zip(per, cap)), (n, per)
        prev = set(sub)
    assert nested_subset(eps, tasks, 6, seed=1) != nested_subset(eps, tasks, 6, seed=0)
    with pytest.raises(ValueError, match="1 <= n <= 30"):
        nested_subset(eps, tasks, 31)
