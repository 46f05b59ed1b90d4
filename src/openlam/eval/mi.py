"""Mutual information I(Z; A) between discrete latent actions Z and continuous actions A, in nats,
by three estimators with different biases (docs/metrics.md has the exact definitions):

- `plugin_mi`: A discretised (k-means on standardised actions, fit on the estimation data), plug-in
  entropies with the Miller-Madow bias correction. Biased low by the discretisation.
- `knn_mi`: Ross (2014) mixed discrete-continuous kNN estimator; no discretisation of A.
- `infonce_mi`: InfoNCE lower bound with a critic trained on the train split and evaluated on
  held-out data; bounded above by log(batch size).

`bootstrap_ci` resamples whole episodes, never frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma


def _symbols(z: np.ndarray) -> np.ndarray:
    """Rows of token tuples (N, K) -> one integer symbol per row."""
    z = np.asarray(z)
    if z.ndim == 1:
        return z.astype(np.int64)
    return np.unique(z, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _entropy_mm(counts: np.ndarray) -> float:
    """Plug-in entropy with the Miller-Madow correction (m - 1) / 2N, m = observed symbols."""
    counts = counts[counts > 0]
    n = counts.sum()
    p = counts / n
    return float(-(p * np.log(p)).sum() + (len(counts) - 1) / (2 * n))


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means with k-means++ init; returns (labels, centres)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(x))
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min(((x[:, None] - np.array(centres)[None]) ** 2).sum(-1), 1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.array(centres, dtype=np.float64)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return labels, c


def discretize_actions(a: np.ndarray, bins: int = 16, seed: int = 0) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    std = a.std(0)
    a = (a - a.mean(0)) / np.where(std > 0, std, 1)
    return kmeans(a, bins, seed)[0]


def plugin_mi(z: np.ndarray, a: np.ndarray, bins: int = 16, a_discrete: bool = False) -> float:
    """I(Z; A_binned) = H(Z) + H(A) - H(Z, A), each with Miller-Madow correction."""
    zs = _symbols(z)
    asym = _symbols(a) if a_discrete else discretize_actions(a, bins)
    joint = zs * (asym.max() + 1) + asym
    h = lambda s: _entropy_mm(np.bincount(s))  # noqa: E731
    return max(0.0, h(zs) + h(asym) - h(np.unique(joint, return_inverse=True)[1]))


def knn_mi(z: np.ndarray, a: np.ndarray, k: int = 3) -> float:
    """Ross (2014): I = psi(N) - <psi(N_z)> + psi(k) - <psi(m)>, where for each point the distance
    to its k-th neighbour among points with the same z sets the radius in which m points of any z
    are counted. Actions are standardised; points whose symbol occurs once are dropped."""
    zs = _symbols(z)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    std = a.std(0)
    a = (a - a.mean(0)) / np.where(std > 0, std, 1)
    a = a + 1e-10 * np.random.default_rng(0).standard_normal(a.shape)  # break ties of repeated actions
    counts = np.bincount(zs)
    keep = counts[zs] > 1
    zs, a = zs[keep], a[keep]
    n = len(zs)
    if n < k + 2:
        return 0.0
    radius = np.empty(n)
    n_z = counts[zs]
    for s in np.unique(zs):
        idx = np.nonzero(zs == s)[0]
        kk = min(k, len(idx) - 1)
        d, _ = cKDTree(a[idx]).query(a[idx], k=kk + 1, p=np.inf)
        radius[idx] = d[:, -1]
    tree = cKDTree(a)
    # m_i: points of any z within the radius, the k-th neighbour included, the point itself not
    m = tree.query_ball_point(a, radius * (1 + 1e-12), p=np.inf, return_length=True) - 1
    kk = np.array([min(k, c - 1) for c in n_z])
    return max(0.0, float(digamma(n) - digamma(n_z).mean() + digamma(kk).mean() - digamma(np.maximum(m, 1)).mean()))


class InfoNCECritic:
    """Critic f(z, a) = <e(z), g(a)> for the InfoNCE bound, fit on train pairs; `bound` evaluates
    E[f(z_i, a_i) - log mean_j exp f(z_i, a_j)] on held-out data in batches of `batch`."""

    def __init__(self, z_train: np.ndarray, a_train: np.ndarray, num_codes: int, batch: int = 256, steps: int = 1500, seed: int = 0,
                 groups: np.ndarray | None = None):
        import torch

        self.torch = torch
        self.g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        z_train, a_train = np.asarray(z_train), np.asarray(a_train)
        val = np.zeros(len(z_train), bool)
        if groups is not None and len(np.unique(groups)) >= 5:  # early stopping on 20% of the train episodes
            rng = np.random.default_rng(seed)
            uniq = np.unique(groups)
            val = np.isin(groups, rng.choice(uniq, len(uniq) // 5, replace=False))
        z_val, a_val = z_train[val], a_train[val]
        z_train, a_train = z_train[~val], a_train[~val]
        zt = torch.as_tensor(z_train, dtype=torch.long).reshape(len(z_train), -1)
        K = zt.shape[1]
        a_tr = np.asarray(a_train, dtype=np.float32).reshape(len(a_train), -1)
        sd = a_tr.std(0)
        self.mu, self.sd = a_tr.mean(0), np.where(sd > 1e-12, sd, 1.0).astype(np.float32)
        at = torch.as_tensor((a_tr - self.mu) / self.sd)
        self.emb = torch.nn.Embedding(K * num_codes, 64)
        self.za = torch.nn.Sequential(torch.nn.Linear(64 * K, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        self.aa = torch.nn.Sequential(torch.nn.Linear(at.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
        self.offs = torch.arange(K) * num_codes
        self.batch = batch
        params = list(self.emb.parameters()) + list(self.za.parameters()) + list(self.aa.parameters())
        opt = torch.optim.Adam(params, lr=3e-3)
        b = min(batch, len(zt))
        best, best_state = -np.inf, None
        for step in range(steps):
            i = torch.randint(0, len(zt), (b,), generator=self.g)
            s = self._scores(zt[i], at[i])
            loss = -(s.diag() - torch.logsumexp(s, 1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if len(z_val) >= 2 and (step + 1) % 100 == 0:
                v = self.bound(z_val, a_val, seed=seed)
                if v > best:
                    best, best_state = v, [p.detach().clone() for p in params]
        if best_state is not None:
            with torch.no_grad():
                for p, q in zip(params, best_state):
                    p.copy_(q)

    def _scores(self, z, a):  # type: ignore[no-untyped-def]
        return self.za(self.emb(z + self.offs).flatten(1)) @ self.aa(a).t()

    def bound(self, z: np.ndarray, a: np.ndarray, seed: int = 0) -> float:
        torch = self.torch
        zv = torch.as_tensor(np.asarray(z), dtype=torch.long).reshape(len(z), -1)
        av = torch.as_tensor((np.asarray(a, dtype=np.float32).reshape(len(a), -1) - self.mu) / self.sd)
        bv = min(self.batch, len(zv))
        if bv < 2:
            return 0.0
        vals = []
        with torch.no_grad():
            perm = torch.randperm(len(zv), generator=torch.Generator().manual_seed(seed))
            for s0 in range(0, len(zv) - bv + 1, bv):
                i = perm[s0 : s0 + bv]
                s = self._scores(zv[i], av[i])
                vals.append((s.diag() - torch.logsumexp(s, 1)).mean().item() + np.log(bv))
        return float(np.mean(vals))  # not clipped: a negative bound says the critic does not generalise


def infonce_mi(z_train: np.ndarray, a_train: np.ndarray, z_test: np.ndarray, a_test: np.ndarray, num_codes: int,
               batch: int = 256, steps: int = 1500, seed: int = 0) -> float:
    """InfoNCE lower bound: critic fit on (z_train, a_train), bound evaluated on held-out data
    (clipped at 0 here: a valid bound on MI >= 0)."""
    return max(0.0, InfoNCECritic(z_train, a_train, num_codes, batch, steps, seed).bound(z_test, a_test, seed))


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    n_boot: int

    def to_dict(self) -> dict[str, float | None]:
        """NaN bounds (too few episodes for an interval) become None."""
        ci = lambda x: None if np.isnan(x) else x  # noqa: E731
        return {"value": self.value, "ci_low": ci(self.low), "ci_high": ci(self.high), "n_boot": self.n_boot}


def bootstrap_ci(fn: Callable[[np.ndarray], float], episodes: np.ndarray, n_boot: int = 100, level: float = 0.95, seed: int = 0,
                 method: str = "bootstrap") -> Estimate:
    """CI of fn(rows) from resampling whole episodes; `fn` receives the row indices of a resample.

    method="bootstrap": episodes drawn with replacement, percentile interval.
    Too few episodes to resample (< 2; < 4 for "half") give NaN bounds.

    method="half": for estimators that duplicated rows would fool (kNN: a copy is a zero-distance
    neighbour): half of the episodes drawn without replacement (delete-half jackknife); the spread
    of (half estimate - full estimate) approximates the full-data standard error, and the interval
    is the full estimate +- z * that spread.
    """
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(episodes, return_inverse=True)
    rows_of = [np.nonzero(inv == i)[0] for i in range(len(uniq))]
    value = fn(np.arange(len(episodes)))
    if len(uniq) < (4 if method == "half" else 2):  # no interval from resampling 1 (or, halving, < 4) episodes
        return Estimate(float(value), float("nan"), float("nan"), 0)
    boots = []
    for _ in range(n_boot):
        if method == "half":
            pick = rng.choice(len(uniq), max(2, len(uniq) // 2), replace=False)
        else:
            pick = rng.integers(0, len(uniq), len(uniq))
        boots.append(fn(np.concatenate([rows_of[i] for i in pick])))
    if method == "half":
        se = float(np.std(np.array(boots) - value))
        zq = float(norm.ppf(1 - (1 - level) / 2))
        return Estimate(float(value), float(value - zq * se), float(value + zq * se), n_boot)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(float(value), float(lo), float(hi), n_boot)


def permutation_null(fn: Callable[[np.ndarray, np.ndarray], float], z: np.ndarray, a: np.ndarray, n: int = 5, seed: int = 0) -> float:
    """Mean of an estimator on (z, a) with a's rows shuffled: what it reports for independent
    variables with these marginals and this sample size (its bias floor)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([fn(z, a[rng.permutation(len(a))]) for _ in range(n)]))


def per_position_mi(zu: np.ndarray, zv: np.ndarray) -> float:
    """Mean over token positions k of I(Z_u[k]; Z_v[k]) (plug-in, Miller-Madow): a C x C table
    per position stays well sampled where the joint over whole tuples would not."""
    return float(np.mean([plugin_mi(zu[:, k], zv[:, k], a_discrete=True) for k in range(zu.shape[1])]))


def episode_shuffle_null(fn: Callable[[np.ndarray, np.ndarray], float], z: np.ndarray, a: np.ndarray, episode: np.ndarray,
                         frame: np.ndarray, view: np.ndarray | None = None, n: int = 5, seed: int = 0) -> float | None:
    """Mean of an estimator when each episode's latents are paired with *another* episode's actions
    at the same frame index (and view): every within-episode structure (temporal autocorrelation,
    what identifies an episode) survives, only the pairing of a latent with its own action is cut.
    An in-sample estimate near this null says the latent tells which episode / moment it is, not
    which action was taken. None with fewer than 2 episodes."""
    eps = np.unique(episode)
    if len(eps) < 2:
        return None
    vid = np.unique(view if view is not None else np.zeros(len(z)), return_inverse=True)[1].reshape(-1)
    F, V = int(frame.max()) + 1, int(vid.max()) + 1
    ep_idx = np.searchsorted(eps, episode)
    key = (ep_idx * F + frame) * V + vid
    order = np.argsort(key)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        shuffled = rng.permutation(len(eps))
        partner = np.empty(len(eps), np.int64)
        partner[shuffled] = np.roll(shuffled, -1)  # a cyclic relabelling: no episode keeps its own actions
        want = (partner[ep_idx] * F + frame) * V + vid
        pos = np.clip(np.searchsorted(key[order], want), 0, len(key) - 1)
        hit = key[order][pos] == want
        vals.append(fn(z[hit], a[order][pos][hit]))
    return float(np.mean(vals))
