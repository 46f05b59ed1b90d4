"""The headline held-out bound and its controls on labellings with a known I(Z; A): a lower bound
whose interval covers the truth or sits below it, ~0 for episode identity, most of a real signal
recovered; the phase-matched shuffle rejects a per-episode action quantiser and not a labeller
that knows only task and phase."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval import groundtruth as gt
from openlam.eval.bound import bound_estimate, bound_value, entropy_mm, fit_q
from openlam.eval.controls import phase_bins, phase_partners, reference_tokens
from openlam.eval.information import bound_records, phase_test
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


def test_phase_partners_are_other_episodes_of_the_same_task_at_the_same_phase():
    rng = np.random.default_rng(0)
    lengths = [20, 30, 25, 40, 35, 10]
    task_of = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
    ep = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)])
    fr = np.concatenate([np.arange(n) for n in lengths])
    ep, fr = np.tile(ep, 2), np.tile(fr, 2)  # two views
    task = task_of[ep]
    rows = np.nonzero(np.isin(ep, [0, 3, 5]))[0]
    partners, usable = phase_partners(ep, fr, task, rows, draws=50, seed=0)
    assert not usable[ep[rows] == 5].any() and usable[ep[rows] != 5].all()  # task c has one episode
    p = partners[:, usable]
    r = rows[usable]
    assert (ep[p] != ep[r][None]).all() and (task[p] == task[r][None]).all()
    L = np.array(lengths)
    expect = np.rint(fr[r][None] * (L[ep[p]] - 1) / (L[ep[r]][None] - 1))
    np.testing.assert_array_equal(fr[p], expect)
    assert len(np.unique(ep[p][:, ep[r] == 0])) == 2  # both other episodes of task a get drawn
    del rng


def test_phase_test_rejects_an_action_quantiser_but_not_task_and_phase():
    for make, reject in ((gt.phase_locked_quantiser, True), (gt.phase_only, False)):
        r = bound(make())
        assert (r["phase_p"] <= 0.01) == reject and r["phase_draws"] == 199, (make.__name__, r)
        if reject:
            assert r["phase_p"] == pytest.approx(1 / 200) and r["phase_real"] > r["phase_null_q95"]


def test_phase_test_is_undefined_without_a_second_episode_per_task():
    case = gt.quantised_ar(E=12, test_episodes=4)
    t = case.table
    t.task = np.array([f"solo{e}" for e in t.episode], dtype=object)
    r = phase_test(t, np.zeros((len(t.rows("test")), 2)), np.zeros(len(t), np.int64), t.rows("test"), 199, 0)
    assert r["phase_p"] is None and r["phase_rows"] == 0


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


def test_verdict_rests_on_the_floors_and_the_phase_test():
    from openlam.eval.verdict import judge

    rec = {"value": 0.3, "ci_low": 0.1, "ci_high": 0.5, "phase_p": 0.01}
    assert judge(rec, [0.0, -0.1]).startswith("carries information about the action beyond task and phase")
    assert judge(rec, [0.15]).startswith("no action information detectable")  # above 0 but not above a floor
    assert judge({**rec, "phase_p": 0.4}, [0.0]).startswith("predicts the action on held-out episodes, but no better")
    assert judge({**rec, "ci_low": -0.01}, []).startswith("no action information detectable")
    assert judge({**rec, "ci_low": None, "n_episodes": 1}, []).startswith("undetermined")
