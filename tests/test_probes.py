"""Probes: tokens that quantise the true action predict it (low NMSE), random tokens do not
(NMSE ~ 1); NMSE normalises each dim by its own variance; features are standardised with the
fit data's statistics; the ridge penalty is chosen by CV grouped by episode and scored on
held-out folds."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval.probes import episode_folds, fit_ridge_cv, mlp_probe, nmse, one_hot_tokens


def data(n_eps: int = 80, per: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_eps * per, 2))
    eps = np.repeat(np.arange(n_eps), per)
    edges = np.quantile(a, [0.25, 0.5, 0.75], axis=0)  # 4 bins per dim -> 2 tokens of 4 codes
    oracle = np.stack([np.searchsorted(edges[:, d], a[:, d]) for d in range(2)], 1)
    random = rng.integers(0, 4, oracle.shape)
    return a, eps, oracle, random


def test_oracle_tokens_are_predictive_random_are_not():
    a, eps, oracle, random = data()
    tr, te = eps < 60, eps >= 60
    res = {}
    for name, z in (("oracle", oracle), ("random", random)):
        x = one_hot_tokens(z, 4)
        res[name] = nmse(fit_ridge_cv(x[tr], a[tr], eps[tr]).predict(x[te]), a[te])
    assert res["oracle"] < 0.15  # 4-level quantisation of a Gaussian keeps ~88% of the variance
    assert res["random"] == pytest.approx(1.0, abs=0.05)


def test_mlp_probe_agrees():
    a, eps, oracle, random = data()
    tr, te = eps < 60, eps >= 60
    for z, lo, hi in ((oracle, 0.0, 0.2), (random, 0.9, 1.15)):
        x = one_hot_tokens(z, 4)
        assert lo <= nmse(mlp_probe(x[tr], a[tr], eps[tr], x[te], epochs=60), a[te]) <= hi


def test_nmse_normalises_each_dim_by_its_own_variance():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((1000, 2)) * np.array([100.0, 1.0])
    pred = np.stack([y[:, 0], np.full(1000, y[:, 1].mean())], 1)  # dim 0 perfect, dim 1 = its mean
    assert nmse(pred, y) == pytest.approx(0.5, abs=1e-9)  # pooling the variance over dims would give ~1e-4
    assert nmse(y, y) == 0.0
    y[:, 1] = 3.0  # a dim that never varies has no scale: left out, not counted as a perfect 0
    assert nmse(pred, y) == pytest.approx(0.0) and nmse(np.zeros_like(y) + y.mean(0), y) == pytest.approx(1.0)
    assert np.isnan(nmse(y * 0, np.ones((10, 2))))


def test_features_are_standardised_with_training_statistics():
    """Train features span [-1, 1]; held-out rows come from [0.5, 1] only and y = 3 x exactly.
    Standardising held-out rows with their own statistics would map them onto the whole range."""
    rng = np.random.default_rng(0)
    x_tr = rng.uniform(-1, 1, (2000, 1))
    x_te = rng.uniform(0.5, 1, (400, 1))
    groups = np.repeat(np.arange(50), 40)
    ridge = fit_ridge_cv(x_tr, 3 * x_tr, groups)
    assert nmse(ridge.predict(x_te), 3 * x_te) < 0.01
    assert nmse(mlp_probe(x_tr, 3 * x_tr, groups, x_te, epochs=80), 3 * x_te) < 0.2


def test_penalty_is_chosen_on_held_out_episodes():
    """Each episode has its own offset in y and a random 40-dim signature in x. Within an episode
    the signature predicts the offset, so CV folds by row (or CV scored on its training folds)
    pick the weakest penalty; on new episodes that fit is noise. Grouped CV must pick a strong
    penalty and generalise."""
    rng = np.random.default_rng(0)
    E, T = 30, 40
    ep = np.repeat(np.arange(E + 10), T)
    sig = rng.standard_normal((E + 10, 40))[ep] + 0.05 * rng.standard_normal((len(ep), 40))
    signal = rng.standard_normal((len(ep), 1))
    y = signal + 2.0 * rng.standard_normal((E + 10, 1))[ep] + 0.1 * rng.standard_normal((len(ep), 1))
    x = np.concatenate([signal, sig], 1)
    tr = ep < E
    ridge = fit_ridge_cv(x[tr], y[tr], ep[tr])
    assert ridge.lam >= 0.1, ridge.cv_nmse
    best = min(nmse(type(ridge)(lam).fit(x[tr], y[tr]).predict(x[~tr]), y[~tr]) for lam in ridge.cv_nmse)
    assert nmse(ridge.predict(x[~tr]), y[~tr]) <= best + 0.02


def test_episode_folds_never_split_an_episode():
    ep = np.repeat(np.arange(12), 7)
    f = episode_folds(ep, 5)
    assert all(len(set(f[ep == e])) == 1 for e in range(12)) and set(f) == set(range(5))


def test_one_hot_layout():
    x = one_hot_tokens(np.array([[0, 3], [2, 1]]), 4)
    np.testing.assert_array_equal(x, [[1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 1, 0, 0]])


def test_per_dim_nmse_exact():
    from openlam.eval.probes import per_dim_nmse

    target = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0], [4.0, 1.0, 5.0]])
    pred = np.array([[1.0, 0.0, 5.0], [2.0, 0.0, 5.0], [3.0, 0.0, 5.0]])
    got = per_dim_nmse(pred, target)
    assert got[0] == pytest.approx((2 / 3) / (8 / 3)) and np.isnan(got[1]) and np.isnan(got[2])  # constant dims: undefined
