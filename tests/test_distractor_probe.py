"""Distractor probes: which token set carries the per-frame distractor state, on labellers whose
contents are known (an action oracle, a background that encodes the distractors), through the
cache's per-frame extras as the generator records them."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import DataError
from openlam.eval.distractors import DISTRACTORS, distractor_records, distractor_targets
from openlam.eval.suite import EvalConfig, metric_records
from openlam.eval.table import build_table
from test_eval import GAP, pairs_of, quantize, value, write_labels

NAMES = ["cam_dx", "light_scale", "body0_x", "body1_x", "shake_view0_rx", "shake_view0_ry", "shake_view0_rz",
         "shake_view1_rx", "shake_view1_ry", "shake_view1_rz"]


@pytest.fixture(scope="module")
def distractor_cache(tmp_path_factory):
    """Squares whose episodes record a distractor state per frame: a per-episode constant (cam_dx),
    a flickering light, a drifting body, a second body that moves only from episode 30 on, and an
    independent shake per camera."""
    root = tmp_path_factory.mktemp("distr")
    rng = np.random.default_rng(3)
    eps = moving_squares(episodes=40, length=24, size=32, seed=2)
    for e, ep in enumerate(eps):
        T = ep.length
        d = np.zeros((T, len(NAMES)), np.float32)
        d[:, 0] = rng.normal()  # constant within the episode: not a target
        d[:, 1] = 1 + 0.2 * rng.uniform(-1, 1, T)
        d[:, 2] = np.cumsum(rng.normal(0, 0.05, T))
        d[:, 3] = np.cumsum(rng.normal(0, 0.05, T)) if e >= 30 else 0.0
        d[:, 4:] = rng.normal(0, 1.0, (T, 6))
        ep.extras[DISTRACTORS] = d
        ep.metadata["distractor_params"] = NAMES
    ds = write_lerobot(root / "ds", eps, fps=10.0)
    return FrameCache(build_cache(ds, root / "cache", CacheConfig(size=32))), eps


def test_cache_keeps_per_frame_extras_exactly(distractor_cache):
    cache, eps = distractor_cache
    assert cache.extras[DISTRACTORS] == len(NAMES)
    np.testing.assert_array_equal(np.asarray(cache.extra(DISTRACTORS)), np.concatenate([e.extras[DISTRACTORS] for e in eps]))
    with pytest.raises(DataError, match="observation.nope"):
        cache.extra("observation.nope")


def oracle_table(cache: FrameCache, out, background: tuple[np.ndarray, np.ndarray, int] | None = None):
    """The eval table of an action-oracle labelling (codes quantise the action, z is the action),
    with a background bottleneck's labels when given; and every pair's (episode, frame, view)."""
    ep, fr, vw, target = pairs_of(cache)
    write_labels(out, cache, quantize(target, 8), target.astype(np.float32), 8, background)
    return build_table(out, cache), ep, fr, vw


def test_targets_pick_moving_dims_and_each_rows_own_camera(distractor_cache, tmp_path):
    cache, _ = distractor_cache
    table, ep, fr, vw = oracle_table(cache, tmp_path / "l")
    state, change, names = distractor_targets(table, cache)
    assert names == ["light_scale", "body0_x", "body1_x", "shake_rx", "shake_ry", "shake_rz"]  # cam_dx is constant per episode
    x = np.asarray(cache.extra(DISTRACTORS))
    g0 = cache.starts[ep] + fr
    for a in range(3):  # every axis of the row's own camera's shake, at t+H and as a change
        own = np.where(vw == "view0", 4, 7) + a
        np.testing.assert_allclose(state[:, 3 + a], x[g0 + GAP, own])
        np.testing.assert_allclose(change[:, 3 + a], x[g0 + GAP, own] - x[g0, own], atol=1e-6)
    np.testing.assert_allclose(change[:, 1], x[g0 + GAP, 2] - x[g0, 2], atol=1e-6)
    # fit on episodes where body1 never moves: it is no target (it could not be learned there)
    early = np.nonzero(table.episode < 30)[0]
    assert distractor_targets(table, cache, early)[2] == ["light_scale", "body0_x", "shake_rx", "shake_ry", "shake_rz"]


def test_background_that_encodes_distractors_is_told_apart_from_an_action_oracle(distractor_cache, tmp_path):
    cache, _ = distractor_cache
    table, ep, _, _ = oracle_table(cache, tmp_path / "probe")
    state, change, _ = distractor_targets(table, cache)
    rng = np.random.default_rng(0)
    # the background's continuous latent knows the state at t and at t+H (so the change too), its codes the state at t+H
    bg_z = np.concatenate([state, state - change], 1) + 0.001 * rng.standard_normal((len(state), 2 * state.shape[1]))
    table, _, _, _ = oracle_table(cache, tmp_path / "mf", (quantize(state, 16), bg_z.astype(np.float32), 16))
    assert table.bg_tokens.shape == (len(ep), state.shape[1]) and table.bg_codebook_size == 16
    recs = distractor_records(table, cache, table.rows("train"), table.eval_splits())
    for feats in ("action continuous", "action onehot", "reference: real action"):
        for tgt in ("state", "change"):
            r = value(recs, features=feats, target=tgt, split="test")
            assert r["value"] > 0.95 and r["ci_low"] < 1.02, (feats, tgt, r)
    for tgt in ("state", "change"):
        r = value(recs, features="background continuous", target=tgt, split="test")
        assert r["value"] < 0.01 and max(r["per_dim"].values()) < 0.02, (tgt, r)
    r = value(recs, features="background onehot", target="state", split="test")
    assert r["value"] < 0.2, r
    # the suite reports them beside the action metrics
    FAST = EvalConfig(n_boot=20, infonce_steps=0, mlp=False, transfer_pairs=0, cka_rounds=0, phase_draws=0, references=False)
    assert any(r["metric"] == "distractor_probe_nmse" for r in metric_records(table, FAST, cache=cache))


def test_no_distractor_state_no_records(tmp_path):
    ds = write_lerobot(tmp_path / "ds", moving_squares(episodes=6, length=12, size=16), fps=10.0)
    cache = FrameCache(build_cache(ds, tmp_path / "cache", CacheConfig(size=16)))
    table, _, _, _ = oracle_table(cache, tmp_path / "l")
    assert distractor_targets(table, cache) is None and distractor_records(table, cache, table.rows("train"), ["test"]) == []


def test_names_that_do_not_match_the_columns_are_an_error(distractor_cache, tmp_path, monkeypatch):
    cache, _ = distractor_cache
    table, _, _, _ = oracle_table(cache, tmp_path / "l")
    monkeypatch.setitem(cache.episodes[0]["metadata"], "distractor_params", NAMES[:-1])
    with pytest.raises(DataError, match="distractor_params"):
        distractor_targets(table, cache)
