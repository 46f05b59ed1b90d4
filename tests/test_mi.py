"""In-sample MI estimators (secondary numbers): exact values on tiny tables, known MI on large
samples, per-dim scale invariance, and kNN's "undefined" when too few rows remain."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval.mi import ActionBins, entropy_mm, knn_mi, per_view, plugin_mi, singletons


def channel(n: int, p: float, m: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Z uniform on m symbols; A = Z with prob p, else uniform. Exact MI in closed form."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, m, n)
    a = np.where(rng.random(n) < p, z, rng.integers(0, m, n))
    row = np.array([p + (1 - p) / m] + [(1 - p) / m] * (m - 1))
    return z, a, float(np.log(m) + (row * np.log(row)).sum())


def mixture(n: int, sep: float, m: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Z uniform on m symbols; A ~ N(sep * Z, 1). MI = h(mixture) - h(N(0,1)), integrated numerically."""
    from openlam.eval.groundtruth import gaussian_mixture_mi

    rng = np.random.default_rng(seed)
    z = rng.integers(0, m, n)
    return z, (sep * z + rng.standard_normal(n))[:, None], gaussian_mixture_mi(sep * np.arange(m, dtype=float), 1.0)


def test_entropy_and_plugin_exact_values():
    # counts (3, 1): plug-in 0.5623 + Miller-Madow (2 - 1) / (2 * 4)
    assert entropy_mm(np.array([3, 1, 0])) == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) + 1 / 8, abs=1e-12)
    # Z = A on 2 symbols, 4 rows: H(Z) = H(A) = H(Z, A) = ln 2 + 1/8  ->  I = ln 2 + 1/8
    z = np.array([0, 0, 1, 1])
    assert plugin_mi(z, z, a_discrete=True) == pytest.approx(np.log(2) + 1 / 8, abs=1e-12)
    # tuples (K = 2) are symbols: z = ((0,1), (1,0), (0,1), (1,0)) against a = (5, 7, 5, 7); symbols must not collide
    zz = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    assert plugin_mi(zz, np.array([5, 7, 5, 7]), a_discrete=True) == pytest.approx(np.log(2) + 1 / 8, abs=1e-12)
    assert plugin_mi(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]), a_discrete=True) == pytest.approx(
        (np.log(4) + 3 / 8) + (np.log(2) + 1 / 8) - (np.log(4) + 3 / 8), abs=1e-12)


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_plugin_recovers_discrete_channel(p):
    z, a, true = channel(20000, p)
    assert plugin_mi(z, a, a_discrete=True) == pytest.approx(true, abs=0.01)


@pytest.mark.parametrize("sep", [0.0, 1.0, 3.0])
def test_knn_recovers_gaussian_mixture(sep):
    z, a, true = mixture(4000, sep)
    assert knn_mi(z, a).value == pytest.approx(true, abs=0.05)


def test_estimators_ignore_per_dim_scale():
    """The informative dim is 1e-3 of a noise dim's scale: without standardising A, kNN
    neighbourhoods and k-means bins would see only the noise dim."""
    z, a, true = mixture(4000, 3.0)
    noise = np.random.default_rng(1).standard_normal((4000, 1))
    wide = np.concatenate([1e-3 * a, noise], 1)
    assert knn_mi(z, wide).value > true - 0.35
    assert plugin_mi(z, wide, bins=16) > 0.7 * true
    # every bin is used, and assignment is a pure function of the action
    bins = ActionBins.fit(wide, 16)
    assert (bins.assign(wide) == bins.assign(wide.copy())).all() and len(np.unique(bins.assign(wide))) == 16


def test_plugin_on_continuous_actions_is_a_lower_bound():
    z, a, true = mixture(8000, 3.0)
    assert true - 0.25 < plugin_mi(z, a, bins=16) <= true + 0.03  # binning loses information, never adds


def test_knn_is_undefined_with_too_few_rows_and_reports_drops():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 2))
    est = knn_mi(np.arange(50), a)  # every tuple once: nothing left
    assert np.isnan(est.value) and est.rows_used == 0 and est.rows_dropped == 50
    z = np.concatenate([np.arange(46), [100, 100, 101, 101]])  # 4 rows left < k + 2 = 5
    est = knn_mi(z, a)
    assert np.isnan(est.value) and est.rows_used == 4 and est.rows_dropped == 46
    np.testing.assert_array_equal(singletons(z), np.r_[np.ones(46, bool), np.zeros(4, bool)])


def test_token_tuples_and_independence():
    rng = np.random.default_rng(3)
    z = rng.integers(0, 8, (5000, 2))
    a = rng.standard_normal((5000, 2))
    assert knn_mi(z, a).value < 0.05 and plugin_mi(z, a, bins=8) < 0.05


def test_per_view_averages_views_weighted_by_rows():
    z = np.array([0, 0, 1, 1, 0, 1])
    a = np.array([0, 0, 1, 1, 0, 0])
    view = np.array(["a"] * 4 + ["b"] * 2, dtype=object)
    mean, vals = per_view(lambda zz, aa: float(len(zz)), z, a, view)
    assert vals == {"a": 4.0, "b": 2.0} and mean == pytest.approx((4 * 4 + 2 * 2) / 6)
