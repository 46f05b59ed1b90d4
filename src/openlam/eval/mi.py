"""In-sample mutual information I(Z; A) between discrete latent actions Z (token tuples) and
continuous action targets A, in nats. These are *secondary* numbers: both estimators measure
dependence inside the scored rows, so with many distinct tuples of 1-3 rows each the plug-in
estimate reads far too high and kNN drops most rows. The headline is the held-out bound
(`openlam.eval.bound`). docs/metrics.md has the exact definitions.

- `plugin_mi`: A binned by k-means on standardised A (`ActionBins`), plug-in entropies with the
  Miller-Madow correction.
- `knn_mi`: Ross (2014) mixed discrete-continuous kNN estimator on standardised A; undefined (NaN)
  when too few rows remain after dropping tuples seen once.
- `per_view`: an estimator on each view's rows separately, then averaged: the views of a pair
  share one action target, and pooling them would count each target once per camera (for kNN,
  identical copies are zero-distance neighbours).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

from openlam.eval.mlp import standardizer


def symbols(z: np.ndarray) -> np.ndarray:
    """Rows of token tuples (N, K) -> one integer symbol per distinct row."""
    z = np.asarray(z)
    if z.ndim == 1:
        return z.astype(np.int64)
    return np.unique(z, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def entropy_mm(counts: np.ndarray) -> float:
    """Plug-in entropy with the Miller-Madow correction (m - 1) / 2N, m = observed symbols."""
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    n = counts.sum()
    p = counts / n
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2 * n))


@dataclass
class ActionBins:
    """k-means bins of the action target, on per-dim standardised actions (so a dim in metres and
    one in millimetres weigh the same), fit on one set of targets and applied to any other."""

    scale: Callable[[np.ndarray], np.ndarray]
    centres: np.ndarray

    @classmethod
    def fit(cls, a: np.ndarray, k: int, seed: int = 0) -> ActionBins:
        from sklearn.cluster import KMeans

        a = np.asarray(a, np.float64).reshape(len(a), -1)
        scale = standardizer(a)
        xs = scale(a)
        k = max(1, min(k, len(np.unique(xs, axis=0))))
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(xs)
        return cls(scale, km.cluster_centers_)

    @property
    def k(self) -> int:
        return len(self.centres)

    def assign(self, a: np.ndarray) -> np.ndarray:
        xs = self.scale(np.asarray(a, np.float64).reshape(len(a), -1))
        return cKDTree(self.centres).query(xs)[1].astype(np.int64)


def plugin_mi(z: np.ndarray, a: np.ndarray, bins: int = 16, a_discrete: bool = False) -> float:
    """I(Z; A_binned) = H(Z) + H(A) - H(Z, A), each with the Miller-Madow correction; bins fit on
    these same rows (in-sample)."""
    zs = symbols(z)
    asym = symbols(a) if a_discrete else ActionBins.fit(a, bins).assign(a)
    joint = symbols(np.stack([zs, asym], 1))
    h = lambda s: entropy_mm(np.bincount(s))  # noqa: E731
    return max(0.0, h(zs) + h(asym) - h(joint))


def singletons(z: np.ndarray) -> np.ndarray:
    """Mask of rows whose token tuple occurs once."""
    zs = symbols(z)
    return np.bincount(zs)[zs] == 1


@dataclass
class KnnEstimate:
    value: float  # NaN: undefined (fewer than k + 2 rows left)
    rows_used: int
    rows_dropped: int  # rows whose token tuple occurs once in the scored rows


def knn_mi(z: np.ndarray, a: np.ndarray, k: int = 3) -> KnnEstimate:
    """Ross (2014): I = psi(N) - <psi(N_z)> + psi(k) - <psi(m)>, where for each point the distance
    to its k-th neighbour among points with the same z sets the radius in which m points of any z
    are counted. Actions are standardised; points whose symbol occurs once are dropped (they have
    no neighbour of their own z) and counted in `rows_dropped`."""
    zs = symbols(z)
    a = np.asarray(a, np.float64).reshape(len(zs), -1)
    a = standardizer(a)(a)
    a = a + 1e-10 * np.random.default_rng(0).standard_normal(a.shape)  # break ties of repeated actions
    counts = np.bincount(zs)
    keep = counts[zs] > 1
    zs, a = zs[keep], a[keep]
    n = len(zs)
    dropped = int((~keep).sum())
    if n < k + 2:
        return KnnEstimate(float("nan"), n, dropped)
    radius = np.empty(n)
    n_z = counts[zs]
    for s in np.unique(zs):
        idx = np.nonzero(zs == s)[0]
        kk = min(k, len(idx) - 1)
        d, _ = cKDTree(a[idx]).query(a[idx], k=kk + 1, p=np.inf)
        radius[idx] = d[:, -1]
    # m_i: points of any z within the radius, the k-th neighbour included, the point itself not
    m = cKDTree(a).query_ball_point(a, radius * (1 + 1e-12), p=np.inf, return_length=True) - 1
    kk = np.minimum(k, n_z - 1)
    value = digamma(n) - digamma(n_z).mean() + digamma(kk).mean() - digamma(np.maximum(m, 1)).mean()
    return KnnEstimate(max(0.0, float(value)), n, dropped)


def permutation_null(fn: Callable[[np.ndarray, np.ndarray], float], z: np.ndarray, a: np.ndarray, n: int = 5, seed: int = 0) -> float:
    """Mean of an estimator on (z, a) with a's rows shuffled: what it reports for independent
    variables with these marginals and this sample size (its bias floor)."""
    rng = np.random.default_rng(seed)
    return float(np.nanmean([fn(z, a[rng.permutation(len(a))]) for _ in range(n)]))


def per_view(fn: Callable[[np.ndarray, np.ndarray], float], z: np.ndarray, a: np.ndarray, view: np.ndarray) -> tuple[float, dict[str, float]]:
    """fn on each view's rows, and the row-weighted mean over views (NaN views are left out)."""
    vals, weights = {}, {}
    for v in sorted(set(view.tolist())):
        r = view == v
        vals[str(v)], weights[str(v)] = float(fn(z[r], a[r])), int(r.sum())
    ok = [v for v in vals if np.isfinite(vals[v])]
    mean = float(np.average([vals[v] for v in ok], weights=[weights[v] for v in ok])) if ok else float("nan")
    return mean, vals


def per_position_mi(zu: np.ndarray, zv: np.ndarray) -> float:
    """Mean over token positions k of I(Z_u[k]; Z_v[k]) (plug-in, Miller-Madow): a C x C table
    per position stays well sampled where the joint over whole tuples would not."""
    return float(np.mean([plugin_mi(zu[:, k], zv[:, k], a_discrete=True) for k in range(zu.shape[1])]))
