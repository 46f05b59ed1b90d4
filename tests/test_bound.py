"""The headline held-out bound and its controls on labellings with a known I(Z; A): a lower bound
whose interval covers the truth or sits below it, ~0 for episode identity, most of a real signal
recovered; the phase-matched shuffle rejects a per-episode action quantiser and not a labeller
that knows only task and phase."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval import groundtruth as gt
from openlam.eval.bound import bound_estimate, bound_value, entropy_mm, fit_q
from openlam.eval.controls import phase_bins, phase_pairings, reference_tokens
from openlam.eval.information import bound_records, phase_test
from openlam.eval.probes import one_hot_tokens
from openlam.eval.suite import EvalConfig

CFG = EvalConfig(mlp=False, infonce_steps=0, phase_draws=199)


def bound(case: gt.Case, features: str = "tokens", cfg: EvalConfig = CFG) -> dict:
    t = case.table
    recs = bound_records(t, t.rows("train"), ["test"], cfg)
    return next(r for r in recs if r["features"] == features)


@pytest.mark.parametrize("make, recover", [(gt.quantised_ar, 0.45), (gt.informative_token, 0.6), (gt.phase_only, 0.5)])
def test_bound_is_a_lower_bound_that_recovers_most_of_a_real_signal(make, recover):
    case = make()
    r = bound(case)
    assert r["ci_low"] <= case.truth and r["value"] <= case.truth + 0.05, r
    assert r["value"] >= recover * case.truth, (r["value"], case.truth)
    assert r["ci_high"] - r["ci_low"] < 0.7 and r["ceiling"] > r["value"]


def test_bound_reads_zero_for_episode_identity():
    """Tokens that name the episode, actions phase-locked across episodes (true MI 0): the
    in-sample estimators read 0.3-0.7 nats here, the held-out bound must not."""
    case = gt.episode_identity()
    for features in ("tokens", "continuous"):
        r = bound(case, features)
        assert r["value"] <= 0.05 and r["ci_low"] <= 0.0, (features, r)


def test_continuous_embedding_gets_an_mlp_q_when_it_generalises_better():
    case = gt.informative_token()
    r = bound(case, "continuous", EvalConfig(mlp=True, infonce_steps=0, phase_draws=0))
    assert r["estimator"] in ("ba_linear", "ba_mlp") and r["ci_low"] <= case.truth and r["value"] >= 0.5 * case.truth


def test_bound_value_counts_each_action_target_once():
    """Two views of the same 4 targets: the entropy term is that of the 4 targets (Miller-Madow
    with N = 4), and the cross-entropy is the mean over all 8 rows."""
    bins = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    keys = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    logq = np.log(np.full((8, 2), 0.5))
    assert bound_value(logq, bins, keys) == pytest.approx(entropy_mm(np.array([2, 2])) - np.log(2))
    assert entropy_mm(np.array([2, 2])) == pytest.approx(np.log(2) + 1 / 8)
    perfect = np.log(np.where(np.eye(2)[bins] > 0, 1.0, 1e-300))
    est, extra = bound_estimate(perfect, bins, keys, np.array([0, 0, 1, 1, 0, 0, 1, 1]))
    assert est.value == pytest.approx(np.log(2) + 1 / 8) and extra["n_targets"] == 4 and extra["n_rows"] == 8
    # uneven views: a target seen by 3 views weighs as much as one seen once
    lq = np.log(np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.5, 0.5]]))
    assert bound_value(lq, np.array([0, 0, 0, 1]), np.array([7, 7, 7, 8])) == pytest.approx(
        entropy_mm(np.array([1, 1])) + (np.log(0.9) + np.log(0.5)) / 2)


def test_q_fit_on_train_does_not_credit_a_mapping_that_changes_on_new_episodes():
    """Train episodes: token = action bin; held-out episodes: the same bins under another code
    permutation. q fit on train is confidently wrong there: bound far below 0."""
    rng = np.random.default_rng(0)
    E, T = 30, 40
    ep = np.repeat(np.arange(E), T)
    bins = rng.integers(0, 8, E * T)
    test = ep >= 20
    tok = np.where(test, (bins + 3) % 8, bins)
    x = np.eye(8)[tok]
    q = fit_q(x[~test], bins[~test], ep[~test], 8, "linear", False)
    keys = np.arange(E * T)
    assert bound_value(q.log_proba(x[~test]), bins[~test], keys[~test]) > 1.5
    assert bound_value(q.log_proba(x[test]), bins[test], keys[test]) < -1.0


def test_pairings_permute_unseen_episodes_of_the_same_task_at_the_same_phase():
    lengths = [20, 30, 25, 40, 35, 10, 12, 28]
    task_of = np.array(["a", "a", "a", "b", "b", "c", "a", "b"], dtype=object)
    ep = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)])
    fr = np.concatenate([np.arange(n) for n in lengths])
    ep, fr = np.tile(ep, 2), np.tile(fr, 2)  # two views
    task = task_of[ep]
    rows = np.nonzero(np.isin(ep, [0, 3, 5]))[0]  # the split: episodes 0 (a), 3 (b), 5 (c)
    pool = np.array([0, 1, 3, 4, 5])  # never seen by q; 2, 6 (a) and 7 (b) were
    pr = phase_pairings(ep, fr, task, rows, pool, draws=200, seed=0)
    assert not pr.usable[ep[rows] == 5].any() and pr.usable[ep[rows] != 5].all()  # task c: one episode
    assert pr.distinct == 4 and pr.exact and len(pr.partners) == 4  # 0 -> {0, 1}, 3 -> {3, 4}
    r = rows[pr.usable]
    p = pr.partners[:, pr.usable]
    assert set(np.unique(ep[p])) == {0, 1, 3, 4} and (task[p] == task[r][None]).all()
    assert any((ep[q] == ep[r]).all() for q in p)  # the real pairing is one of the pairings
    L = np.array(lengths)
    np.testing.assert_array_equal(fr[p], np.rint(fr[r][None] * (L[ep[p]] - 1) / (L[ep[r]][None] - 1)))
    big = phase_pairings(ep, fr, task, rows, np.arange(8), draws=5, seed=0)  # 4 x 3 = 12 > 5 pairings: sampled
    assert big.distinct == 12 and not big.exact and len(big.partners) == 5


def test_phase_test_rejects_an_action_quantiser_but_not_task_and_phase():
    for make, reject in ((gt.phase_locked_quantiser, True), (gt.phase_only, False)):
        r = bound(make())
        assert (r["phase_p"] <= 0.01) == reject and r["phase_draws"] == 199, (make.__name__, r)
        if reject:
            assert r["phase_p"] == pytest.approx(1 / 200) and r["phase_real"] > r["phase_null_q95"]
        else:  # tokens fixed by (task, phase), equal lengths, partners among the same episodes: every pairing ties
            assert r["phase_p"] == 1.0 and r["phase_real"] == pytest.approx(r["phase_null_mean"], abs=1e-9)


def test_phase_test_p_is_uniform_when_the_latent_knows_only_task_and_phase():
    """Tokens = (phase bin, task), actions phase-locked: under this null p must spread over (0, 1]
    (partners from q's own training episodes pushed it to ~1; ties decided by rounding and
    single-partner tasks pushed it to the minimum)."""
    case = gt.phase_only(E=160, test_episodes=120)
    t = case.table
    train = t.episode < 40
    t.splits = {"train": train, "test": ~train}
    x = one_hot_tokens(t.tokens, 8)
    from openlam.eval.information import action_bins

    _, bins = action_bins(t, np.nonzero(train)[0], CFG)
    q = fit_q(x[train], bins[train], t.episode[train], 32, "linear", False)
    lq = q.log_proba(x)
    rng = np.random.default_rng(0)
    held = np.unique(t.episode[~train])
    ps = []
    for i in range(40):
        r = np.nonzero(np.isin(t.episode, rng.choice(held, 12, replace=False)))[0]
        ps.append(phase_test(t, lq[r], bins, r, 99, seed=i)["phase_p"])
    ps = np.array(ps)
    assert (ps <= 0.05).mean() <= 0.15 and 0.2 <= np.median(ps) <= 0.8, np.round(np.sort(ps), 2)


def test_phase_test_is_undefined_with_too_few_pairings():
    """Two unseen episodes per task give each episode one alternative partner: 2^tasks pairings,
    too few for a p-value of 0.05 with 4 tasks; a task with a single episode gives none."""
    case = gt.quantised_ar(E=16, test_episodes=8)
    t = case.table
    test_eps = np.unique(t.episode[t.splits["test"]])
    t.task = np.array([f"t{np.searchsorted(test_eps, e) // 2}" if e in test_eps else "other" for e in t.episode], dtype=object)
    r = t.rows("test")
    res = phase_test(t, np.zeros((len(r), 2)), np.zeros(len(t), np.int64), r, 199, 0)
    assert res["phase_p"] is None and res["phase_pairings"] == 16 and res["phase_rows"] == len(r)
    t.task = np.array([f"solo{e}" for e in t.episode], dtype=object)
    res = phase_test(t, np.zeros((len(r), 2)), np.zeros(len(t), np.int64), r, 199, 0)
    assert res["phase_p"] is None and res["phase_rows"] == 0
    # each held-out episode shares its task only with train episodes: q has fit their actions, so
    # they are no partners, and nothing can be paired
    train_eps = np.unique(t.episode[t.splits["train"]])
    task_of = {e: f"t{i}" for i, e in enumerate(test_eps)} | {e: f"t{i % len(test_eps)}" for i, e in enumerate(train_eps)}
    t.task = np.array([task_of[e] for e in t.episode], dtype=object)
    res = phase_test(t, np.zeros((len(r), 2)), np.zeros(len(t), np.int64), r, 199, 0)
    assert res["phase_p"] is None and res["phase_rows"] == 0


def test_reference_labellers_carry_what_they_claim():
    ep = np.repeat(np.arange(20), 16)
    fr = np.tile(np.arange(16), 20)
    task = np.where(ep < 10, "x", "y").astype(object)
    tok = np.random.default_rng(0).integers(0, 8, (len(ep), 3))
    refs = reference_tokens(tok, ep, fr, task, 8, seed=0)
    assert sorted(map(tuple, refs["random"])) == sorted(map(tuple, tok)) and (refs["random"] != tok).any()
    assert len({tuple(r) for r in refs["episode_id"]}) == 20 and all(len({tuple(r) for r in refs["episode_id"][ep == e]}) == 1 for e in range(20))
    code = np.array([refs["episode_id"][ep == e][0] @ np.array([1, 8, 64]) for e in range(20)])
    assert sorted(code) == list(range(20)) and (code != np.arange(20)).any()  # a random code, not the index (which follows the tasks)
    np.testing.assert_array_equal(refs["task_phase"][:, 0], phase_bins(ep, fr, 8))
    np.testing.assert_array_equal(refs["task_phase"][:, 0], fr // 2)
    assert set(refs["task_phase"][:, 1]) == {0, 1} and (refs["task_phase"][:, 2] == 0).all()
    np.testing.assert_array_equal(refs["task_time"][:, 0], fr // 2)  # all episodes 16 frames: elapsed = relative here
    one = reference_tokens(tok[:, :1], ep, fr, task, 8)  # K = 1: task and phase share the code
    assert len({tuple(r) for r in one["task_phase"]}) == 8 and (one["task_phase"][task == "x"] < 4).all()


def test_interval_is_over_episodes():
    from openlam.eval.intervals import jackknife_interval

    case = gt.quantised_ar(E=20, test_episodes=6)
    t = case.table
    r = t.rows("test")
    rng = np.random.default_rng(0)
    logq = np.log(rng.dirichlet(np.ones(4), len(r)))
    bins, keys = rng.integers(0, 4, len(r)), t.target_keys()[r]
    est, _ = bound_estimate(logq, bins, keys, t.episode[r])
    ref = jackknife_interval(lambda i: bound_value(logq[i], bins[i], keys[i]), t.episode[r])
    assert est.n_episodes == 6 and (est.low, est.high) == pytest.approx((ref.low, ref.high))


def test_verdict_rests_on_the_gains_over_the_floors_and_the_phase_test():
    from openlam.eval.verdict import judge

    up = {"value": 0.2, "ci_low": 0.05, "ci_high": 0.35}
    rec = {"value": 0.1, "ci_low": -0.1, "ci_high": 0.3, "phase_p": 0.01, "gain_over": {"random": up, "episode_id": up, "task_phase": up}}
    assert judge(rec).startswith("carries information about the action beyond task and relative phase")  # the gain decides, not the bound's own interval
    assert judge({**rec, "gain_over": {**rec["gain_over"], "random": {**up, "ci_low": -0.01}}}).startswith("no action information detectable")
    for other in ("episode_id", "task_phase"):  # a wide, far-below-zero episode-identity floor does not block the verdict
        assert judge({**rec, "gain_over": {**rec["gain_over"], other: {**up, "ci_low": -5.0}}}).startswith("carries")
    assert judge({**rec, "phase_p": 0.4}).startswith("predicts the action on held-out episodes, but not detectably beyond")
    assert "untested" in judge({**rec, "phase_p": None, "phase_note": "3 distinct pairings"})
    assert judge({"value": 0.3, "ci_low": 0.1, "ci_high": 0.5, "phase_p": 0.01}).startswith("carries")  # no references: the bound vs 0
    assert judge({"value": 0.3, "ci_low": -0.1, "ci_high": 0.5}).startswith("no action information detectable")
    assert judge({**rec, "gain_over": {"random": {**up, "ci_low": None}}, "n_episodes": 1}).startswith("undetermined")


def test_gain_over_a_reference_cancels_the_entropy_term():
    from openlam.eval.bound import gain_estimate

    rng = np.random.default_rng(0)
    n = 60
    bins, keys, ep = rng.integers(0, 4, n), np.arange(n), np.repeat(np.arange(6), 10)
    la, lb = np.log(rng.dirichlet(np.ones(4), n)), np.log(rng.dirichlet(np.ones(4), n))
    g = gain_estimate(la, lb, bins, keys, ep)
    assert g.value == pytest.approx(la[np.arange(n), bins].mean() - lb[np.arange(n), bins].mean()) and g.n_episodes == 6


def test_warm_started_c_path_finds_the_cold_starts_optimum():
    """fit_q starts each C's fit from the last one's weights: the problem is convex, so the chosen C
    and the fitted q match fits started from zero."""
    from openlam.eval.bound import UNIFORM_MIX, _logistic, _val_ce, fit_q
    from openlam.eval.mlp import validation_episodes

    rng = np.random.default_rng(0)
    n, k = 1200, 5
    x = rng.standard_normal((n, 12))
    y = np.argmax(x[:, :k] * 2 + rng.standard_normal((n, k)), 1)
    groups = np.arange(n) // 20
    q = fit_q(x, y, groups, k, "linear", True, seed=0)
    cold = {}
    val = validation_episodes(groups, 0)
    for c in (0.01, 0.1, 1.0, 10.0):
        cold[c] = _val_ce(_logistic(x[~val], y[~val], k, c, True)[0], x[val], y[val], k)
    assert q.c == min(cold, key=cold.get) and q.val_ce == pytest.approx(cold[q.c], abs=1e-4)
    ref = _logistic(x, y, k, q.c, True)[0]
    np.testing.assert_allclose(q.log_proba(x), np.log((1 - UNIFORM_MIX) * np.exp(ref(x)) + UNIFORM_MIX / k), atol=1e-2)  # lbfgs tolerance
