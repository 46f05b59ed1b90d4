"""Each MI estimator recovers a known I(Z; A) (nats) on synthetic data within a stated tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from openlam.eval.mi import bootstrap_ci, infonce_mi, knn_mi, plugin_mi


def channel(n: int, p: float, m: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Z uniform on m symbols; A = Z with prob p, else uniform. Exact MI in closed form."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, m, n)
    a = np.where(rng.random(n) < p, z, rng.integers(0, m, n))
    row = np.array([p + (1 - p) / m] + [(1 - p) / m] * (m - 1))
    return z, a, float(np.log(m) + (row * np.log(row)).sum())


def mixture(n: int, sep: float, m: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Z uniform on m symbols; A ~ N(sep * Z, 1). MI = h(mixture) - h(N(0,1)), integrated numerically."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, m, n)
    a = sep * z + rng.standard_normal(n)
    x = np.linspace(-8, sep * m + 8, 20001)
    dens = np.mean([np.exp(-0.5 * (x - sep * k) ** 2) / np.sqrt(2 * np.pi) for k in range(m)], 0)
    h_mix = -np.trapezoid(dens * np.log(np.maximum(dens, 1e-300)), x)
    return z, a[:, None], float(h_mix - 0.5 * np.log(2 * np.pi * np.e))


@pytest.mark.parametrize("p", [0.0, 0.5, 0.9])
def test_plugin_recovers_discrete_channel(p):
    z, a, true = channel(20000, p)
    assert plugin_mi(z, a, a_discrete=True) == pytest.approx(true, abs=0.01)


@pytest.mark.parametrize("sep", [0.0, 1.0, 3.0])
def test_knn_recovers_gaussian_mixture(sep):
    z, a, true = mixture(4000, sep)
    assert knn_mi(z, a) == pytest.approx(true, abs=0.05)


def test_plugin_on_continuous_actions_is_a_lower_bound():
    z, a, true = mixture(8000, 3.0)
    est = plugin_mi(z, a, bins=16)
    assert true - 0.25 < est <= true + 0.03  # discretisation loses some information, never adds


def test_infonce_is_a_tight_lower_bound():
    z, a, true = mixture(6000, 3.0, seed=1)
    est = infonce_mi(z[:4000], a[:4000], z[4000:], a[4000:], num_codes=4, steps=800)
    assert true - 0.2 < est < true + 0.08


def test_token_tuples_and_independence():
    rng = np.random.default_rng(3)
    z = rng.integers(0, 8, (5000, 2))  # two tokens per latent action
    a = rng.standard_normal((5000, 2))
    assert knn_mi(z, a) < 0.05 and plugin_mi(z, a, bins=8) < 0.05


def test_episode_resampling_intervals_cover_the_truth():
    z, a, true = mixture(3000, 2.0, seed=5)
    episodes = np.repeat(np.arange(60), 50)
    est = bootstrap_ci(lambda rows: knn_mi(z[rows], a[rows]), episodes, n_boot=30, method="half")
    assert est.low <= true <= est.high and est.high - est.low < 0.3
    zc, ac, truec = channel(6000, 0.6, seed=2)
    est = bootstrap_ci(lambda rows: plugin_mi(zc[rows], ac[rows], a_discrete=True), np.repeat(np.arange(60), 100), n_boot=50)
    assert est.low <= truec <= est.high and est.high - est.low < 0.15


def test_episode_shuffle_null_separates_episode_identity_from_action_information():
    """z names the episode and a is an episode-specific constant + noise: a row permutation says
    "dependent", the episode-shuffle null is just as high (the MI is episode identity). When z
    quantizes a itself, the episode-shuffle null collapses."""
    from openlam.eval.mi import episode_shuffle_null, permutation_null

    rng = np.random.default_rng(0)
    E, T = 12, 60
    ep, fr = np.repeat(np.arange(E), T), np.tile(np.arange(T), E)
    a_ep = (rng.standard_normal(E) * 3)[ep] + 0.3 * rng.standard_normal(E * T)
    z_id = ep % 8
    est = lambda z, a: knn_mi(z, a)  # noqa: E731
    full = est(z_id, a_ep)
    assert full > 1.0 and permutation_null(est, z_id, a_ep) < 0.05
    assert episode_shuffle_null(est, z_id, a_ep, ep, fr) > 0.6 * full
    a = rng.standard_normal(E * T)
    z_act = np.digitize(a, [-1, 0, 1])
    assert est(z_act, a) > 1.0 and episode_shuffle_null(est, z_act, a, ep, fr) < 0.05
