"""The headline information measure: a held-out variational lower bound on I(Z; A)
(Barber & Agakov 2003).

For any conditional model q, and A_k = the k-means bin of the action target (bins fit on train):

    I(Z; A) >= I(Z; A_k) = H(A_k) - H(A_k | Z) >= H(A_k) - E[-log q(A_k | Z)]

q is fit on train episodes and the expectation is taken over held-out episodes, so the bound only
credits what generalises to new episodes: a latent that names its episode (or memorises rare
token tuples) gets no credit, because nothing it learnt about train episodes holds on new ones.
H(A_k) is the plug-in entropy of the held-out bins with the Miller-Madow correction. Held-out
targets cluster by episode (an episode visits few bins), so with few held-out episodes this term,
and the bound with it, is biased low: the bound stays a lower bound but reads lower the fewer
held-out episodes there are (docs/audit.md measures by how much). Comparisons therefore use
`gain_estimate`: two labellings on the same rows, where the entropy term cancels. The bound is
reported unclipped:
a negative value says q does worse than the held-out marginal, i.e. no information that
generalises. Its ceiling is H(A_k).

q families (`fit_q`): "linear" = multinomial logistic regression. On one-hot tokens its logits
are a sum of one term per token position (factorised: no parameter per token tuple, so rare
tuples cannot be memorised), on raw one-hot features so that a rare code is not inflated by
standardisation. "auto" (continuous embeddings) = linear or a 2-layer MLP, whichever has the
lower cross-entropy on 20% of the train episodes held out from fitting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import numpy as np

from openlam.eval.intervals import Estimate, jackknife_interval
from openlam.eval.mi import entropy_mm
from openlam.eval.mlp import fit_mlp, standardizer, validation_episodes

UNIFORM_MIX = 1e-3  # q is mixed with the uniform distribution: finite log-loss for any bin, at most 0.001 nats lost


@dataclass
class QModel:
    """A fitted q(A_k | Z): `log_proba(x) -> (N, k)` log-probabilities over all k bins."""

    family: str
    k: int
    predict: Callable[[np.ndarray], np.ndarray]
    c: float | None = None  # inverse L2 strength of the linear family
    val_ce: float = float("nan")

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        p = np.exp(self.predict(x))
        return np.log((1 - UNIFORM_MIX) * p + UNIFORM_MIX / self.k)


def _logistic(x: np.ndarray, y: np.ndarray, k: int, c: float, standardize: bool, init: Any = None
              ) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """Multinomial logistic regression q(bin | x) and the fitted classifier. `init`: a classifier
    fit on the same classes whose weights start the optimisation (the problem is convex, so the
    optimum is the same; along a path of C values it is several times faster)."""
    from sklearn.linear_model import LogisticRegression

    scale = standardizer(x) if standardize else (lambda v: np.asarray(v, np.float64))
    classes = np.unique(y)
    if len(classes) == 1:  # one bin in the fit data: q puts all mass there
        return (lambda v: np.where(np.arange(k)[None] == classes[0], 0.0, -np.inf) * np.ones((len(v), 1))), None
    clf = LogisticRegression(C=c, max_iter=1000, tol=1e-4)
    if init is not None and np.array_equal(init.classes_, classes):
        clf.set_params(warm_start=True)
        clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
    clf.fit(scale(x), y)

    def predict(v: np.ndarray) -> np.ndarray:
        out = np.full((len(v), k), -np.inf)
        out[:, clf.classes_] = clf.predict_log_proba(scale(v))
        return out

    return predict, clf


def _val_ce(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, k: int) -> float:
    lp = np.log((1 - UNIFORM_MIX) * np.exp(predict(x)) + UNIFORM_MIX / k)
    return float(-lp[np.arange(len(y)), y].mean())


def fit_q(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, family: str = "linear", standardize: bool = True,
          cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), seed: int = 0) -> QModel:
    """Fit q(bin | x) on train rows. The linear family's C and (for "auto") the family are chosen
    by cross-entropy on 20% of the train episodes; the chosen linear model is refit on all of them."""
    if family not in ("linear", "auto"):
        raise ValueError(f"fit_q: family must be 'linear' or 'auto', got {family!r}")
    val = validation_episodes(groups, seed)
    if not val.any():  # one train episode: nothing to select on
        return QModel("linear", k, _logistic(x, y, k, 1.0, standardize)[0], 1.0)
    scores, fits, prev = {}, {}, None
    for c in sorted(cs):  # strongest penalty first, each fit starting from the last one's weights
        predict, prev = _logistic(x[~val], y[~val], k, c, standardize, prev)
        scores[c], fits[c] = _val_ce(predict, x[val], y[val], k), prev
    best_c = min(scores, key=scores.get)
    if family == "auto":
        predict, _ = fit_mlp(x, y, groups, "ce", k, seed=seed)  # early-stopped on the same validation episodes
        mlp_ce = _val_ce(predict, x[val], y[val], k)
        if mlp_ce < scores[best_c]:
            return QModel("mlp", k, predict, None, mlp_ce)
    return QModel("linear", k, _logistic(x, y, k, best_c, standardize, fits[best_c])[0], best_c, scores[best_c])


def first_of(keys: np.ndarray) -> np.ndarray:
    """Row index of the first occurrence of each distinct key (one row per action target)."""
    return np.unique(keys, return_index=True)[1]


def bound_value(logq: np.ndarray, bins: np.ndarray, keys: np.ndarray) -> float:
    """H_MM(bins over distinct targets) - mean over targets of the mean over its rows (views) of
    -log q(bin | z): both terms weigh every action target once, however many views saw it."""
    uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    lq = logq[np.arange(len(bins)), bins]
    per_target = np.bincount(inv, weights=lq, minlength=len(uniq)) / np.bincount(inv, minlength=len(uniq))
    return entropy_mm(np.bincount(bins[first])) + float(per_target.mean())


def bound_estimate(logq: np.ndarray, bins: np.ndarray, keys: np.ndarray, episodes: np.ndarray, level: float = 0.95
                   ) -> tuple[Estimate, dict[str, float | int]]:
    """The bound on held-out rows with its leave-one-episode-out jackknife interval. `keys`
    identify the action target of a row (episode, frame): the views of one pair share it and it
    counts once."""
    u = first_of(keys)
    est = jackknife_interval(lambda r: bound_value(logq[r], bins[r], keys[r]), episodes, level)
    ce = float(-logq[np.arange(len(bins)), bins].mean())
    return est, {"ceiling": entropy_mm(np.bincount(bins[u])), "cross_entropy": ce, "n_rows": len(bins), "n_targets": len(u)}


def gain_estimate(logq: np.ndarray, logq_ref: np.ndarray, bins: np.ndarray, keys: np.ndarray, episodes: np.ndarray,
                  level: float = 0.95) -> Estimate:
    """Bound of one labelling minus the bound of another on the same rows: the entropy term cancels
    exactly, leaving the difference of their held-out cross-entropies (per target), with a
    jackknife interval over episodes. Free of the entropy term's small-sample bias, so it is what
    comparisons against the floors rest on."""
    return jackknife_interval(lambda r: bound_value(logq[r], bins[r], keys[r]) - bound_value(logq_ref[r], bins[r], keys[r]), episodes, level)
