"""Probe sanity: tokens that quantise the true action predict it (low NMSE, high MI); random tokens
do not (NMSE ~ 1, MI ~ 0 within its CI). Splits are by episode."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval.mi import bootstrap_ci, knn_mi, plugin_mi
from openlam.eval.probes import fit_ridge_cv, mlp_probe, nmse, one_hot_tokens


def data(n_eps: int = 80, per: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_eps * per, 2))
    eps = np.repeat(np.arange(n_eps), per)
    edges = np.quantile(a, [0.25, 0.5, 0.75], axis=0)  # 4 bins per dim -> 2 tokens of 4 codes
    oracle = np.stack([np.searchsorted(edges[:, d], a[:, d]) for d in range(2)], 1)
    random = rng.integers(0, 4, oracle.shape)
    return a, eps, oracle, random


def split(eps):
    test = eps >= 60
    return ~test, test


def test_oracle_tokens_are_predictive_random_are_not():
    a, eps, oracle, random = data()
    tr, te = split(eps)
    res = {}
    for name, z in (("oracle", oracle), ("random", random)):
        x = one_hot_tokens(z, 4)
        probe = fit_ridge_cv(x[tr], a[tr], eps[tr])
        res[name] = nmse(probe.predict(x[te]), a[te])
    assert res["oracle"] < 0.15  # 4-level quantisation of a Gaussian keeps ~88% of the variance
    assert res["random"] == pytest.approx(1.0, abs=0.05)


def test_mlp_probe_agrees():
    a, eps, oracle, random = data()
    tr, te = split(eps)
    for z, lo, hi in ((oracle, 0.0, 0.2), (random, 0.9, 1.15)):
        x = one_hot_tokens(z, 4)
        assert lo <= nmse(mlp_probe(x[tr], a[tr], eps[tr], x[te], epochs=60), a[te]) <= hi


def test_mi_high_for_oracle_and_zero_within_ci_for_random():
    a, eps, oracle, random = data()
    o = bootstrap_ci(lambda r: knn_mi(oracle[r], a[r]), eps, n_boot=20, method="half")
    r = bootstrap_ci(lambda rows: knn_mi(random[rows], a[rows]), eps, n_boot=20, method="half")
    assert o.low > 1.5  # log(16) = 2.77 nats is the ceiling for 16 joint codes
    assert r.low <= 0.0 + 0.02 and r.value < 0.05
    assert plugin_mi(oracle, a) > 1.5 and plugin_mi(random, a) < 0.05


def test_one_hot_layout():
    x = one_hot_tokens(np.array([[0, 3], [2, 1]]), 4)
    np.testing.assert_array_equal(x, [[1, 0, 0, 0, 0, 0, 0, 1], [0, 0, 1, 0, 0, 1, 0, 0]])
