"""Held-out probes from latent actions to the action target over the gap.

NMSE = mean over action dims of MSE_d / Var_d, with Var_d the variance of the scored (held-out)
targets: 1.0 means no better than predicting their mean. Probes are fit on train episodes only;
the ridge penalty is chosen by cross-validation grouped by episode inside the train split. The
interval is the leave-one-episode-out jackknife of that ratio (`nmse_estimate`), normaliser
included; a percentile bootstrap would recompute the normaliser on resamples with duplicated
episodes, bias it low and push the interval up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from openlam.eval.intervals import Estimate, jackknife_interval
from openlam.eval.mlp import fit_mlp, standardizer


def one_hot_tokens(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, K) codes -> (N, K * C) concatenated one-hot vectors."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1)
    N, K = tokens.shape
    out = np.zeros((N, K * codebook_size), np.float32)
    out[np.arange(N)[:, None], np.arange(K)[None] * codebook_size + tokens] = 1.0
    return out


def nmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean over the target dims that vary in the scored rows of MSE_d / Var_d; NaN when none varies
    (a dim that never varies has no scale to normalise by, and would read as a perfect 0)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    var = target.var(0)
    varies = var > 1e-12
    if not varies.any():
        return float("nan")
    return float((((pred - target) ** 2).mean(0)[varies] / var[varies]).mean())


def per_dim_nmse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MSE_d / Var_d per target dim (NaN where the scored targets do not vary)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    var = target.var(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 1e-12, ((pred - target) ** 2).mean(0) / var, np.nan)


def nmse_estimate(pred: np.ndarray, target: np.ndarray, episodes: np.ndarray, level: float = 0.95) -> Estimate:
    """NMSE with its leave-one-episode-out jackknife interval (the normaliser is recomputed on each
    leave-one-out sample)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return jackknife_interval(lambda r: nmse(pred[r], target[r]), episodes, level)


@dataclass
class Ridge:
    """Closed-form ridge regression on features standardised with the fit data's statistics (the
    intercept is not penalised)."""

    lam: float

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        self.scale = standardizer(x)
        xs = self.scale(x)
        y = np.asarray(y, np.float64)
        self.b = y.mean(0)
        a = xs.T @ xs + self.lam * len(xs) * np.eye(xs.shape[1])
        self.w = np.linalg.solve(a, xs.T @ (y - self.b))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scale(x) @ self.w + self.b


def episode_folds(groups: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row; every episode lies in exactly one fold."""
    uniq = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(uniq), np.arange(len(uniq)) % folds))
    return np.array([fold_of[g] for g in groups])


def fit_ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, lams: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                 folds: int = 5) -> Ridge:
    """Pick the penalty by K-fold CV grouped by episode (scored on each held-out fold), refit on all."""
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return Ridge(lams[len(lams) // 2]).fit(x, y)
    f = episode_folds(groups, folds)
    scores = [np.mean([nmse(Ridge(lam).fit(x[f != k], y[f != k]).predict(x[f == k]), y[f == k]) for k in range(folds)]) for lam in lams]
    ridge = Ridge(lams[int(np.argmin(scores))]).fit(x, y)
    ridge.cv_nmse = dict(zip(lams, map(float, scores)))
    return ridge


def mlp_probe(x_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, x_test: np.ndarray, hidden: int = 128,
              epochs: int = 200, seed: int = 0) -> np.ndarray:
    """Small MLP regression probe (2 hidden layers), early stopping on 20% of the train episodes.
    Returns test predictions."""
    predict, _ = fit_mlp(x_train, np.asarray(y_train, np.float64), groups, "mse", np.shape(y_train)[1], hidden, epochs, seed=seed)
    return predict(x_test)
