"""Intervals over episodes: exact jackknife arithmetic, the episode (not the row) as the unit,
Student's t with few episodes, and coverage checked by simulation with 4-8 episodes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from openlam.eval.groundtruth import ar1
from openlam.eval.intervals import bootstrap_ci, jackknife_interval, mean_interval
from openlam.eval.probes import nmse_estimate


def test_jackknife_mean_exact():
    # episodes A: (1, 1), B: (3), C: (2, 2, 2); leave-one-out means 9/4 (no A), 8/5 (no B), 5/3 (no C)
    x = np.array([1, 1, 3, 2, 2, 2], float)
    ep = np.array([0, 0, 1, 2, 2, 2])
    loo = np.array([9 / 4, 8 / 5, 5 / 3])
    se = np.sqrt(2 / 3 * ((loo - loo.mean()) ** 2).sum())
    est = mean_interval(x, ep)
    q = student_t.ppf(0.975, 2)  # 4.30 with 3 episodes, not 1.96
    assert est.value == pytest.approx(11 / 6) and est.n_episodes == 3
    assert est.low == pytest.approx(11 / 6 - q * se) and est.high == pytest.approx(11 / 6 + q * se)


def test_the_unit_is_the_episode_not_the_row():
    """A value constant within each of 20 episodes (+-1): the spread is over 20 draws, not 2,000 rows."""
    rng = np.random.default_rng(0)
    per_ep = rng.choice([-1.0, 1.0], 20)
    ep = np.repeat(np.arange(20), 100)
    x = per_ep[ep]
    se_episode = per_ep.std(ddof=1) / np.sqrt(20)
    j = mean_interval(x, ep)
    assert (j.high - j.low) / 2 == pytest.approx(student_t.ppf(0.975, 19) * se_episode, rel=1e-6)
    b = bootstrap_ci(lambda r: float(x[r].mean()), ep, n_boot=400)
    assert (b.high - b.low) / 2 > 0.6 * 1.96 * se_episode  # resampling rows would give ~1/10 of this
    assert np.isnan(mean_interval(x[:100], ep[:100]).low) and np.isnan(bootstrap_ci(lambda r: 1.0, np.zeros(5)).low)


def _clustered_targets(rng, G, T=30):
    """2-dim targets on scales 1 and 50 with a per-episode offset and AR(1) noise (var 1 per dim
    before scaling); prediction 0.6 y + noise -> population NMSE exactly 0.16 + 0.09 = 0.25."""
    s = np.array([1.0, 50.0])
    y = (np.sqrt(0.5) * rng.standard_normal((G, 1, 2)) + np.sqrt(0.5) * ar1(rng, (G, T, 2), 0.9)) * s
    pred = 0.6 * y + 0.3 * s * rng.standard_normal((G, T, 2))
    return pred.reshape(-1, 2), y.reshape(-1, 2), np.repeat(np.arange(G), T)


@pytest.mark.parametrize("G", [4, 8])
def test_coverage_with_few_episodes(G):
    """Nominal 95%: the mean's and the NMSE's intervals must cover >= 90% of 400 draws with 4 or
    8 episodes (1.96 instead of t, rows as units, or a frozen NMSE normaliser fall below)."""
    rng = np.random.default_rng(G)
    hit_mean = hit_nmse = 0
    R = 400
    for _ in range(R):
        u = rng.standard_normal(G)
        x = (u[:, None] + 0.7 * rng.standard_normal((G, 20))).reshape(-1)
        m = mean_interval(x, np.repeat(np.arange(G), 20))
        hit_mean += m.low <= 0.0 <= m.high
        pred, y, ep = _clustered_targets(rng, G)
        n = nmse_estimate(pred, y, ep)
        hit_nmse += n.low <= 0.25 <= n.high
    assert hit_mean / R >= 0.9 and hit_nmse / R >= 0.9, (hit_mean / R, hit_nmse / R)


def test_jackknife_recomputes_a_ratio_on_each_leave_one_out_sample():
    calls = []
    jackknife_interval(lambda r: calls.append(len(r)) or float(len(r)), np.array([0, 0, 1, 2, 2, 2]))
    assert calls == [6, 4, 5, 3]
