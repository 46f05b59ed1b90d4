"""The evaluation suite on labellers with known answers: an oracle whose tokens quantize the true
action, a random labeller, a view-blind one; plus the pieces (cross-view, CKA, transfer,
codebook) on cases with exact values, and the eval -> report -> compare CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from openlam.artifacts import atomic_write_json
from openlam.config import from_dict
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.pairs import action_targets
from openlam.data.synthetic import moving_squares
from openlam.eval.cka import centroid_cka, linear_cka, strip_domain
from openlam.eval.codebook import codebook_stats
from openlam.eval.crossview import cross_view
from openlam.eval.suite import EvalConfig, metric_records
from openlam.eval.table import build_table
from openlam.eval.transfer import transfer_consistency
from openlam.label import shard_table

GAP = 3
FAST = EvalConfig(n_boot=30, infonce_steps=600, mlp=False, transfer_pairs=0, cka_rounds=0, phase_draws=99)


@pytest.fixture(scope="module")
def squares_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalds")
    ds = write_lerobot(root / "ds", moving_squares(episodes=60, length=24, size=32, seed=1), fps=10.0)
    return FrameCache(build_cache(ds, root / "cache", CacheConfig(size=32)))


def pairs_of(cache: FrameCache) -> tuple[np.ndarray, ...]:
    """Every (episode, t, view) with t + GAP inside the episode, and its action target."""
    ep, fr, vw = [], [], []
    for e, info in enumerate(cache.episodes):
        for v in cache.cameras:
            t = np.arange(info["length"] - GAP)
            ep.append(np.full(len(t), e))
            fr.append(t)
            vw += [v] * len(t)
    ep, fr, vw = np.concatenate(ep), np.concatenate(fr), np.array(vw, dtype=object)
    acts = np.asarray(cache.actions(), np.float64)
    cum = np.concatenate([np.zeros((1, acts.shape[1])), np.cumsum(acts, 0)])
    starts = np.array([i["start"] for i in cache.episodes])
    target = action_targets(cum, acts, starts[ep] + fr, np.full(len(ep), GAP), np.ones(acts.shape[1], bool))
    return ep, fr, vw, target


def write_labels(out, cache: FrameCache, tokens: np.ndarray, z: np.ndarray, codebook_size: int,
                 background: tuple[np.ndarray, np.ndarray, int] | None = None) -> None:
    """A labelling in exactly the format `openlam label` writes, from any labeller; `background`:
    a background bottleneck's (tokens, embeddings, codebook size)."""
    ep, fr, vw, _ = pairs_of(cache)
    (out / "shards").mkdir(parents=True)
    bg = None if background is None else background[:2]
    pq.write_table(shard_table(ep, fr, vw, np.full(len(ep), GAP), tokens, z, bg), out / "shards" / "shard-00000.parquet")
    meta = {"complete": True, "shards": 1, "num_tokens": tokens.shape[1], "codebook_size": codebook_size,
            "code_dim": z.shape[1] // tokens.shape[1], "gap": {"frames": GAP}, "cache": str(cache.path)}
    if background is not None:
        meta |= {"background_tokens": background[0].shape[1], "background_codebook_size": background[2]}
    atomic_write_json(out / "labels.json", meta)


def quantize(x: np.ndarray, bins: int) -> np.ndarray:
    """Per column: index of the quantile bin (the oracle LAM's codes)."""
    edges = [np.quantile(c, np.linspace(0, 1, bins + 1)[1:-1]) for c in x.T]
    return np.stack([np.searchsorted(e, c) for e, c in zip(edges, x.T)], 1)


def value(recs, **want):
    hits = [r for r in recs if all(r.get(k) == v for k, v in want.items())]
    assert len(hits) == 1, (want, len(hits))
    return hits[0]


def test_oracle_labeller_is_action_centric_and_random_is_not(squares_cache, tmp_path):
    cache = squares_cache
    ep, _, vw, target = pairs_of(cache)
    rng = np.random.default_rng(0)
    oracle = quantize(target, 8)  # 2 tokens (dx, dy) x 8 codes
    write_labels(tmp_path / "oracle", cache, oracle, target + 0.05 * rng.standard_normal(target.shape), 8)
    write_labels(tmp_path / "random", cache, rng.integers(0, 8, oracle.shape), rng.standard_normal(target.shape), 8)
    good = metric_records(build_table(tmp_path / "oracle", cache), FAST)
    bad = metric_records(build_table(tmp_path / "random", cache), FAST)

    n_test = len(cache.splits["test"]["episodes"])
    for r in good:  # every held-out interval is over the split's episodes, not its rows
        if r.get("ci_method") == "jackknife_t" and r["split"] == "test":
            assert r["n_episodes"] == n_test, r
    assert value(good, metric="probe_nmse", features="onehot", estimator="ridge", split="test")["value"] < 0.15
    assert value(good, metric="probe_nmse", features="continuous", estimator="ridge", split="test")["value"] < 0.05
    floors = [value(good, metric="reference_mi_bound", labeller=n, split="test") for n in ("random", "episode_id", "task_phase", "task_time")]
    for f in floors:  # actions are iid per frame: no reference labeller knows anything about them
        assert f["value"] < 0.05 and f["ci_low"] < 0.0, f
    for feats in ("tokens", "continuous"):
        r = value(good, metric="mi_bound", features=feats, split="test")
        assert r["value"] > 1.5 and r["ci_low"] > max(f["ci_high"] for f in floors) + 1.0 and r["phase_p"] == 0.01, (feats, r)
    assert value(good, metric="mi_infonce", split="test")["ci_low"] > 1.0
    for est in ("plugin_mm", "knn_ross"):
        r = value(good, metric="mi_insample", estimator=est, split="test")
        assert r["value"] > r["null"] + 1.0 and r["n_targets"] * 2 == r["n"], (est, r)
    # the two views carry identical tokens and targets: per-view averaging gives the one-view value
    # (pooling would make every row a zero-distance neighbour of its copy)
    from openlam.eval.mi import knn_mi

    test_rows = np.isin(ep, cache.splits["test"]["episodes"]) & (vw == cache.cameras[0])
    assert value(good, metric="mi_insample", estimator="knn_ross", split="test")["value"] == pytest.approx(
        knn_mi(oracle[test_rows], target[test_rows]).value, abs=1e-9)
    for feats in ("onehot", "continuous"):
        r = value(bad, metric="probe_nmse", features=feats, estimator="ridge", split="test")
        assert abs(r["value"] - 1) < 0.1 and r["ci_low"] < 1.0 + 0.02, (feats, r)
    for feats in ("tokens", "continuous"):
        r = value(bad, metric="mi_bound", features=feats, split="test")
        assert r["value"] <= 0.02 and r["ci_low"] < 0.0, (feats, r)
    r = value(bad, metric="mi_insample", estimator="plugin_mm", split="test")
    assert r["value"] < r["null"] + 0.05  # in-sample: indistinguishable from its bias floor
    # the oracle sees the action, not the camera: the viewpoint probe stays at chance; views agree exactly
    vp = value(good, metric="viewpoint_probe_accuracy", features="onehot")
    assert vp["value"] < vp["chance"] + 0.1
    assert value(good, metric="crossview_token_agreement", views="mean")["value"] == 1.0
    # bound on the tokens only: the same token bound and floors, no continuous bound, the verdict says so
    from dataclasses import replace

    from openlam.eval.information import bound_records

    table = build_table(tmp_path / "oracle", cache)
    only = bound_records(table, table.rows("train"), table.eval_splits(), replace(FAST, bound_features=["tokens"]))
    assert not [r for r in only if r["metric"] == "mi_bound" and r["features"] == "continuous"]
    assert value(only, metric="mi_bound", features="tokens", split="test")["value"] == pytest.approx(
        value(good, metric="mi_bound", features="tokens", split="test")["value"], abs=1e-12)
    assert value(only, metric="reference_mi_bound", labeller="episode_id", split="test")["value"] == pytest.approx(
        floors[1]["value"], abs=1e-12)
    with pytest.raises(Exception, match="bound_features"):
        EvalConfig(bound_features=["pixels"]).validate()
    from openlam.eval.verdict import readings, sentences

    cont = [rd for rd in readings({"records": only}) if rd["features"] == "continuous"]
    assert cont and "not measured" in sentences(cont[0])

    m_good, m_bad = {"records": good}, {"records": bad}
    assert readings(m_good)[0]["verdict"].startswith("carries information about the action beyond task and relative phase")
    assert readings(m_bad)[0]["verdict"].startswith("no action information detectable")


def test_nothing_is_fit_on_held_out_episodes(squares_cache, tmp_path):
    """Train episodes: tokens quantise the action; held-out episodes: the same bins under another
    code permutation, embeddings negated. A suite that fit anything (probe, q, critic, feature
    statistics) on held-out rows would score well; one that does not must score no better than
    the mean."""
    cache = squares_cache
    ep, _, _, target = pairs_of(cache)
    held = ~np.isin(ep, cache.splits["train"]["episodes"])
    tok = quantize(target, 8)
    tok[held] = (tok[held] + 4) % 8
    z = np.where(held[:, None], -target, target) + 0.01 * np.random.default_rng(0).standard_normal(target.shape)
    write_labels(tmp_path / "leak", cache, tok, z, 8)
    recs = metric_records(build_table(tmp_path / "leak", cache), FAST)
    for feats in ("onehot", "continuous"):
        assert value(recs, metric="probe_nmse", features=feats, estimator="ridge", split="test")["value"] > 1.5, feats
    for feats in ("tokens", "continuous"):
        assert value(recs, metric="mi_bound", features=feats, split="test")["value"] < -1.0, feats
    assert value(recs, metric="mi_infonce", split="test")["value"] < 0.0


def test_view_revealing_labeller_is_caught_and_unseen_codes_do_not_explode(squares_cache, tmp_path):
    """Tokens = (action code, camera id): the viewpoint probe must see the camera, cross-view
    agreement must drop; a code never used in train must not blow up the MLP probe."""
    cache = squares_cache
    ep, _, vw, target = pairs_of(cache)
    cam = np.array([cache.cameras.index(v) for v in vw])
    tok = np.stack([quantize(target, 4)[:, 0], cam], 1)
    test_eps = cache.splits["test"]["episodes"]
    tok[np.isin(ep, test_eps) & (tok[:, 0] == 0), 0] = 7  # code 7: only in held-out rows
    rng = np.random.default_rng(0)
    write_labels(tmp_path / "lab", cache, tok, np.concatenate([target, cam[:, None]], 1) + 0.01 * rng.standard_normal((len(ep), 3)), 8)
    recs = metric_records(build_table(tmp_path / "lab", cache), EvalConfig(n_boot=10, infonce_steps=200, transfer_pairs=0, cka_rounds=0,
                                                                          phase_draws=0, references=False))
    vp = value(recs, metric="viewpoint_probe_accuracy", features="onehot")
    assert vp["value"] > 0.99 and vp["chance"] == pytest.approx(0.5)
    assert value(recs, metric="crossview_tuple_agreement", views="mean")["value"] == 0.0
    mlp = value(recs, metric="probe_nmse", features="onehot", estimator="mlp", split="test")["value"]
    assert np.isfinite(mlp) and mlp < 2.0


def test_cross_view_agreement_and_chance():
    rng = np.random.default_rng(0)
    n = 400
    ep, fr = np.repeat(np.arange(20), 20), np.tile(np.arange(20), 20)
    tok = rng.integers(0, 4, (n, 2))
    same = cross_view(np.concatenate([ep, ep]), np.concatenate([fr, fr]), np.array(["a"] * n + ["b"] * n, dtype=object),
                      np.concatenate([tok, tok]), 4, n_boot=10)
    assert value(same, metric="crossview_token_agreement", views="a|b")["value"] == 1.0
    assert value(same, metric="crossview_chance_agreement", views="a|b")["value"] == pytest.approx(0.25, abs=0.03)
    other = rng.integers(0, 4, (n, 2))
    indep = cross_view(np.concatenate([ep, ep]), np.concatenate([fr, fr]), np.array(["a"] * n + ["b"] * n, dtype=object),
                       np.concatenate([tok, other]), 4, n_boot=10)
    assert value(indep, metric="crossview_token_agreement", views="a|b")["value"] == pytest.approx(0.25, abs=0.05)
    mi = value(indep, metric="crossview_mi_views", views="a|b")
    assert mi["value"] < 0.03 and value(same, metric="crossview_mi_views", views="a|b")["value"] > 1.2  # log 4 = 1.39


def test_cka_invariances_and_domain_stripping():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 6))
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    assert linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert linear_cka(x, rng.standard_normal((30, 6))) < 0.5
    # two domains that share a token -> direction map, plus a strong domain offset on extra dims
    n = 4000
    tok = rng.integers(0, 8, (n, 1))
    dom = np.where(np.arange(n) < n // 2, "A", "B").astype(object)
    episode = np.arange(n) // 20
    dirs = rng.standard_normal((8, 4))
    z = np.concatenate([dirs[tok[:, 0]] + 0.1 * rng.standard_normal((n, 4)),
                        np.where(dom[:, None] == "A", 6.0, -6.0) + rng.standard_normal((n, 2))], 1)
    s = strip_domain(z, dom, episode)
    assert s.accuracy[0] > 0.99 and s.removed >= 1 and s.accuracy[-1] <= s.chance + 0.05
    r = centroid_cka(s.z, tok, dom, "A", "B", rounds=20)
    assert r["shared_tokens"] == 8 and r["cka"]["value"] > 0.95 and r["cka"]["value"] > r["cka_shuffled"]["value"] + 0.3


def test_cka_across_tasks_reads_the_task_of_each_row(squares_cache, tmp_path):
    """cka_domains=[task]: the domains are tasks, not cameras; an oracle whose tokens mean the same
    displacement in both tasks aligns, one whose codes are permuted in one task does not."""
    from openlam.eval.suite import cka_records

    cache = squares_cache
    ep, _, _, target = pairs_of(cache)
    rng = np.random.default_rng(0)
    codes = quantize(target, 6)
    z = target + 0.05 * rng.standard_normal(target.shape)
    write_labels(tmp_path / "o", cache, codes, z, 6)
    table = build_table(tmp_path / "o", cache)
    table.task = np.where(table.episode % 2 == 0, "even", "odd").astype(object)
    cfg = EvalConfig(cka_rounds=10, cka_domains=["task"])
    recs = cka_records(table, cfg)
    assert {r["domain"] for r in recs} == {"task"} and {r["domains"] for r in recs} == {"even|odd"}
    good = value(recs, metric="cka")
    assert good["value"] > 0.9 and good["value"] > value(recs, metric="cka_shuffled")["value"] + 0.2
    # same z, but in odd episodes each code's meaning is another code's: the centroids no longer correspond
    perm = np.roll(np.arange(6), 3)
    table.tokens = np.where((table.episode % 2 == 1)[:, None], perm[table.tokens], table.tokens)
    bad = value(cka_records(table, cfg), metric="cka")
    assert bad["value"] < good["value"] - 0.3
    assert cka_records(table, EvalConfig(cka_rounds=10, cka_domains=["view"]))[0]["domain"] == "view"
    # few rows allowed: episodes are drawn per task, so a task of a few long episodes keeps >= 2
    table.task = np.where(table.episode < 3, "rare", "common").astype(object)
    small = cka_records(table, EvalConfig(cka_rounds=5, cka_domains=["task"], cka_max_rows=120))
    assert value(small, metric="cka")["value"] is not None and value(small, metric="cka")["domains"] == "common|rare"
    with pytest.raises(Exception, match="cka_domains"):
        EvalConfig(cka_domains=["robot"]).validate()


def test_codebook_stats_exact():
    tok = np.array([[0, 1], [0, 1], [2, 1], [0, 3]])
    s = codebook_stats(tok, 4, np.array(["a", "a", "b", "b"], dtype=object), np.array(["t"] * 4, dtype=object))
    assert s["used_codes_per_position"] == [2, 2] and s["dead_codes_per_position"] == [[1, 3], [0, 2]]
    assert s["perplexity_per_position"][0] == pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))
    assert s["distinct_tuples"] == 3 and s["per_view"]["b"] == [[1, 0, 1, 0], [0, 1, 0, 1]] and s["usage"] == 0.5


class _CycleModel:
    """Decodes tokens into the generated frame's first pixels and reads them back: a perfect
    (remember=True) or a forgetful (remember=False: random codes) action-centric loop."""

    def __init__(self, remember: bool):
        self.remember = remember
        self.cfg = type("Cfg", (), {"target": "pixels", "codebook_size": 4})()
        self.g = torch.Generator().manual_seed(0)

    def decode(self, o, tok):
        out = o.clone()
        out[:, 0, 0, : tok.shape[1]] = tok.float() / 4
        return out

    def encode(self, o, gen):
        tok = (gen[:, 0, 0, :2] * 4).round().long() if self.remember else torch.randint(0, 4, (len(o), 2), generator=self.g)
        return type("Q", (), {"indices": tok})()


def test_transfer_partner_is_another_episode_same_view(squares_cache, monkeypatch):
    ep, fr, vw, _ = pairs_of(squares_cache)
    seen = []
    import openlam.eval.transfer as tr

    real = tr._loop
    monkeypatch.setattr(tr, "_loop", lambda m, o, tok: seen.append(o.clone()) or real(m, o, tok))
    pool = np.nonzero(ep < 3)[0]
    tok = np.zeros((len(ep), 2), np.int64)
    transfer_consistency(_CycleModel(True), squares_cache, ep, fr, np.full(len(ep), GAP), vw, tok, lambda t: t * 1.0,
                         a_pool=pool, n=50, n_boot=5, device="cpu")
    self_frames, cross_frames = seen[0], seen[1]
    assert not torch.equal(self_frames, cross_frames)
    # each B frame is some frame of the same camera from an episode other than A's (content match)
    starts = np.array([e["start"] for e in squares_cache.episodes])
    rng = np.random.default_rng(0)
    a_rows = rng.choice(pool, 50, replace=False)
    for i, r in enumerate(a_rows[:10]):
        frames = np.asarray(squares_cache.frames(vw[r]))
        x = ((cross_frames[i].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        hits = np.nonzero((frames == x).reshape(len(frames), -1).all(1))[0]
        assert len(hits) and not any(starts[ep[r]] <= h < starts[ep[r]] + squares_cache.episodes[ep[r]]["length"] for h in hits)


def test_transfer_consistency_perfect_and_forgetful_loops(squares_cache):
    ep, fr, vw, _ = pairs_of(squares_cache)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 4, (len(ep), 2))
    probe = lambda t: t.astype(np.float64) @ np.array([[1.0, 0.5], [-0.3, 2.0]])  # noqa: E731
    kw = dict(n=200, n_boot=10, device="cpu")
    perfect = transfer_consistency(_CycleModel(True), squares_cache, ep, fr, np.full(len(ep), GAP), vw, tok, probe, **kw)
    assert value(perfect, metric="transfer_token_recovery")["value"] == 1.0
    assert value(perfect, metric="transfer_self_token_recovery")["value"] == 1.0
    assert value(perfect, metric="transfer_probe_action_nmse")["value"] == 0.0
    lossy = transfer_consistency(_CycleModel(False), squares_cache, ep, fr, np.full(len(ep), GAP), vw, tok, probe, **kw)
    chance = value(lossy, metric="transfer_chance_token_recovery")["value"]
    assert value(lossy, metric="transfer_token_recovery")["value"] == pytest.approx(chance, abs=0.08)
    assert value(lossy, metric="transfer_probe_action_nmse")["value"] > 1.0


def test_ceiling_must_share_data_gap_and_splits(tmp_path):
    from openlam.errors import DataError
    from openlam.eval.ceiling import check_same_data

    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "labels.json").write_text(json.dumps({"dataset_fingerprint": "f1", "dataset": "d1", "views": ["a", "b"]}))
    ours = {"gap": {"frames": 2}, "splits": {"test": {"rows": 10, "episodes": 2}}}
    meta = {"dataset_fingerprint": "f1", "views": ["b", "a"]}
    check_same_data(ours, dict(ours), meta, tmp_path)
    with pytest.raises(DataError, match="dataset_fingerprint"):
        check_same_data(ours, dict(ours), {**meta, "dataset_fingerprint": "f2", "dataset": "d2"}, tmp_path)
    with pytest.raises(DataError, match="'views'"):
        check_same_data(ours, dict(ours), {**meta, "views": ["a"]}, tmp_path)
    with pytest.raises(DataError, match="'gap'"):
        check_same_data(ours, {**ours, "gap": {"frames": 3}}, meta, tmp_path)
    with pytest.raises(DataError, match="'splits'"):
        check_same_data(ours, {**ours, "splits": {"test": {"rows": 9, "episodes": 2}}}, meta, tmp_path)


def test_share_of_ceiling_pairs_split_and_probe():
    from openlam.eval.ceiling import ceiling_records

    ref = {"records": [
        {"metric": "probe_nmse", "split": "test", "features": "continuous", "estimator": "ridge", "value": 0.2, "ci_low": 0.1, "ci_high": 0.3},
        {"metric": "probe_nmse", "split": "test", "features": "continuous", "estimator": "mlp", "value": 0.1},
        {"metric": "probe_nmse", "split": "ood_camera", "features": "continuous", "estimator": "ridge", "value": 1.1},
        {"metric": "probe_nmse", "split": "ood:light", "features": "continuous", "estimator": "ridge", "value": 0.95},
        {"metric": "probe_nmse", "split": "test", "features": "onehot", "estimator": "ridge", "value": 0.9}]}  # not the ceiling
    ours = [{"metric": "probe_nmse", "split": "test", "features": "onehot", "estimator": "ridge", "value": 0.6},
            {"metric": "probe_nmse", "split": "test", "features": "continuous", "estimator": "mlp", "value": 0.55},
            {"metric": "probe_nmse", "split": "ood_camera", "features": "onehot", "estimator": "ridge", "value": 0.9},
            {"metric": "probe_nmse", "split": "ood:light", "features": "onehot", "estimator": "ridge", "value": 0.9},
            {"metric": "mi_bound", "split": "test", "features": "tokens", "value": 0.3}]
    recs = ceiling_records(ours, ref, "sup")
    ceil = {(r["split"], r["estimator"]): r["value"] for r in recs if r["metric"] == "ceiling_probe_nmse"}
    assert ceil == {("test", "ridge"): 0.2, ("test", "mlp"): 0.1, ("ood_camera", "ridge"): 1.1, ("ood:light", "ridge"): 0.95}
    share = {(r["split"], r["features"], r["estimator"]): r["value"] for r in recs if r["metric"] == "share_of_ceiling"}
    assert share == {("test", "onehot", "ridge"): pytest.approx(0.4 / 0.8), ("test", "continuous", "mlp"): pytest.approx(0.45 / 0.9),
                     ("ood_camera", "onehot", "ridge"): None, ("ood:light", "onehot", "ridge"): None}  # explains 5%: no share


def test_eval_report_compare_cli_end_to_end(tmp_path, capsys):
    from openlam.cli import main
    from openlam.models.config import LAMConfig
    from openlam.models.lam import LatentActionModel

    ds = write_lerobot(tmp_path / "ds", moving_squares(episodes=12, length=16, size=32, seed=2), fps=10.0)
    torch.manual_seed(0)
    cfg = from_dict(LAMConfig, {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
                                "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 4}, "decoder": {"dim": 32, "layers": 1, "heads": 4}})
    LatentActionModel(cfg).eval().save_pretrained(tmp_path / "model")
    args = ["--dataset", str(ds), "gap.seconds=null", "gap.frames=2", "n_boot=10", "infonce_steps=200", "transfer_pairs=32", "cka_rounds=5",
            "phase_draws=99", "mlp=false"]
    # b: CKA across datasets (here: the dataset and itself), and a as its "ceiling" (the same model: share exactly 1)
    for name, extra in (("a", []), ("b", ["--align", str(ds), "--ceiling", str(tmp_path / "a")])):
        assert main(["eval", str(tmp_path / "model"), "--out", str(tmp_path / name / "eval"), *args, *extra]) == 0
    mb = json.loads((tmp_path / "b" / "eval" / "metrics.json").read_text())
    ma = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())
    nm = {(r["features"], r["split"]): r["value"] for r in ma["records"] if r["metric"] == "probe_nmse"}
    shares = {(r["features"], r["split"]): r for r in mb["records"] if r["metric"] == "share_of_ceiling"}
    assert set(shares) == set(nm)
    for (f, s), r in shares.items():  # an untrained model: a ceiling NMSE >= 1 defines no share
        assert r["value"] == (pytest.approx((1 - nm[f, s]) / (1 - nm["continuous", s])) if nm["continuous", s] < 1 else None)
    ceil = [r for r in mb["records"] if r["metric"] == "ceiling_probe_nmse" and r["split"] == "test"]
    a_rec = next(r for r in ma["records"] if r["metric"] == "probe_nmse" and r["features"] == "continuous" and r["split"] == "test")
    # per action dim (named) and per camera: NMSE is the mean of the per-dim ratios; each view's value is its own NMSE
    assert list(a_rec["per_dim"]) == ["dx", "dy"] and np.mean(list(a_rec["per_dim"].values())) == pytest.approx(a_rec["value"])
    assert sorted(a_rec["per_view"]) == ["view0", "view1"] and all(np.isfinite(v) for v in a_rec["per_view"].values())
    assert len(ceil) == 1 and all(ceil[0][k] == a_rec[k] for k in ("value", "ci_low", "ci_high", "n_episodes"))
    cka = [r for r in mb["records"] if r["metric"] == "cka"]
    assert len(cka) == 1 and cka[0]["domain"] == "dataset" and set(cka[0]["domains"].split("|")) == {"ds", "0-ds"}
    # a dataset against itself: nothing to strip (the domain classifier is at chance), centroids align
    assert cka[0]["removed_dims"] == 0 and cka[0]["value"] > 0.7
    m = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())
    metrics = {r["metric"] for r in m["records"] if r.get("value") is not None}
    assert {"probe_nmse", "mi_bound", "reference_mi_bound", "reference_probe_nmse", "mi_insample", "mi_infonce", "viewpoint_probe_accuracy",
            "crossview_token_agreement", "transfer_token_recovery", "cka"} <= metrics
    for r in m["records"]:
        if r.get("ci_low") is not None:
            assert r["ci_low"] <= r["ci_high"] and np.isfinite(r["value"]), r
    assert m["splits"]["test"]["episodes"] >= 1 and (tmp_path / "a" / "eval" / "plots" / "code_examples.png").stat().st_size > 1000
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| metric | a | b |" in md and "probe NMSE ridge onehot [test]" in md
    verdict = md[md.index("## Verdict"):md.index("## Setup")]
    assert "### a" in verdict and "### b" in verdict and verdict.count("**Verdict:") == 4  # tokens and embedding, per run
    assert verdict.count("Supervised ceiling") == 2  # b only
    assert ("recovers 100% of its explained variance" in verdict) == (nm["continuous", "test"] < 1)
    assert "share of the ceiling's explained variance" in md
    assert (tmp_path / "rep" / "mi.png").is_file() and "<table>" in (tmp_path / "rep" / "report.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "I(Z;A) held-out bound, tokens [test]" in capsys.readouterr().out


def test_figures_pool_runs_per_arm():
    """Many seeds -> one bar per arm: mean over seeds, whiskers from the lowest to the highest seed;
    a missing seed is left out of its arm's mean, a wholly missing cell stays missing."""
    from openlam.eval.report import _pooled

    series = {"a-s0": [{"value": 0.2}, None, 1.0], "a-s1": [{"value": 0.4}, None, 3.0], "b-s0": [{"value": 0.9}, {"value": 0.5}, None]}
    out = _pooled(series, ["a", "a", "b"])
    assert list(out) == ["a (n=2)", "b (n=1)"]
    assert out["a (n=2)"][0] == {"value": pytest.approx(0.3), "ci_low": 0.2, "ci_high": 0.4}
    assert out["a (n=2)"][1] is None and out["a (n=2)"][2] == 2.0  # references (plain numbers) are averaged
    assert out["b (n=1)"] == [{"value": 0.9, "ci_low": 0.9, "ci_high": 0.9}, {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}, None]


def test_bound_figure_drops_a_latent_no_run_has(tmp_path, monkeypatch):
    """With eval.bound_features=[tokens] the MI figures show the tokens' groups only, not an empty
    group per split for the continuous embedding; the floors stay aligned with their groups."""
    from openlam.eval import plots
    from openlam.eval.report import comparison_figures

    seen = {}
    monkeypatch.setattr(plots, "bars_with_ci", lambda groups, series, title, ylabel, path, reference=None:
                        seen.setdefault(path.name, (groups, series, reference)))

    def run(v):
        return {"records": [{"metric": "probe_nmse", "split": sp, "features": "onehot", "estimator": "ridge", "value": 0.5}
                            for sp in ("test", "ood")]
                + [{"metric": "mi_bound", "split": sp, "features": "tokens", "value": v, "gain_over": {"random": {"value": v}}}
                   for sp in ("test", "ood")]
                + [{"metric": "reference_mi_bound", "split": "ood", "labeller": "random", "value": -0.3}]}

    comparison_figures([run(0.7), run(0.9)], ["a", "b"], tmp_path)
    groups, series, floors = seen["mi.png"]
    assert groups == ["test tokens", "ood tokens"]
    assert [r["value"] for r in series["b"]] == [0.9, 0.9] and floors["a"] == [None, -0.3]
    assert seen["mi_gain.png"][0] == ["test tokens", "ood tokens"]
    assert "test continuous ridge" in seen["probe_nmse.png"][0]  # the probes keep every group


def test_unlabelled_video_is_evaluated_without_actions(tmp_path, capsys):
    """A LAM trained on a folder of videos (no actions) is evaluated on what needs none: codebook,
    cross-view agreement and the viewpoint probe, transfer token recovery, CKA across cameras,
    example pairs per tuple and per token, an embedding map; the metrics that need actions are
    listed as such, in metrics.json, the verdict and the report."""
    from openlam.cli import main
    from openlam.data.video import VideoAppender, VideoConfig
    from openlam.train.config import TrainConfig
    from openlam.train.trainer import train

    root = tmp_path / "videos"
    for i, ep in enumerate(moving_squares(episodes=10, length=16, size=32, seed=4)):
        for cam, frames in ep.frames.items():
            w = VideoAppender(root / f"ep{i:02d}" / f"{cam}.mp4", 10.0, 32, 32, VideoConfig())
            w.append(frames)
            w.close()
    run = tmp_path / "run"
    train(from_dict(TrainConfig, {
        "model": {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
                  "quantizer": {"kind": "nsvq", "codebook_size": 8, "code_dim": 4}, "decoder": {"dim": 32, "layers": 1, "heads": 4}},
        "data": {"dataset": str(root), "gap": {"seconds": None, "frames": 2}, "workers": 0},
        "steps": 4, "batch_size": 8, "ckpt_every": 4, "eval_batches": 1, "out": str(run)}))
    assert main(["eval", str(run), "n_boot=10", "transfer_pairs=16", "cka_rounds=3"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    measured = {r["metric"] for r in m["records"] if r.get("value") is not None}
    assert {"crossview_token_agreement", "transfer_token_recovery", "transfer_self_token_recovery", "cka"} <= measured
    assert not measured & {"mi_bound", "probe_nmse", "transfer_probe_action_nmse", "reference_mi_bound"}
    assert {"mi_bound", "probe_nmse", "share_of_ceiling"} <= set(m["needs_actions"])
    assert m["codebook"]["num_pairs"] == 10 * 2 * (16 - 2)
    for f in ("usage.png", "code_examples.png", "token_0_examples.png", "embedding.png"):
        assert (run / "eval" / "plots" / f).stat().st_size > 1000, f
    out = capsys.readouterr().out
    assert "No actions in" in out and "Not measured, as each needs the action: mi_bound" in out
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "No actions in" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["eval", str(run), "--ceiling", str(run), "n_boot=10"]) == 2  # no probe, so no ceiling to compare with
    assert "has no actions, so there is no probe to compare with a ceiling" in capsys.readouterr().err


def test_embedding_map_of_a_one_dimensional_latent(tmp_path):
    from openlam.eval.plots import embedding_map
    from openlam.eval.table import EvalTable

    n = 40
    t = EvalTable(np.repeat(np.arange(4), 10), np.tile(np.arange(10), 4), np.array(["a"] * n, dtype=object), np.ones(n, np.int64),
                  np.arange(n).reshape(-1, 1) % 3, np.linspace(0, 1, n).reshape(-1, 1).astype(np.float32), np.zeros((n, 0), np.float32),
                  np.array(["t"] * n, dtype=object), {}, {}, 3)
    embedding_map(t, tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
