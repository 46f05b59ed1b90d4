"""Confidence intervals with the episode as the unit.

Rows of one episode are not independent: neighbouring frames share content and actions, and every
view of a pair repeats the same action target. So every interval here treats whole episodes as
the independent draws, and none counts a view copy as extra evidence.

- `jackknife_interval`: for the held-out numbers (bound, probe NMSE, accuracies). Leave one episode
  out at a time; SE^2 = (G-1)/G * sum_g (theta_(g) - mean)^2; interval theta +- t_{G-1} * SE. Student's
  t with G-1 degrees of freedom, not 1.96 (which covers 69-89% with 4-8 episodes). The normaliser of
  a ratio such as NMSE is recomputed on each leave-one-out sample, so its uncertainty is counted,
  without the downward bias a bootstrap's duplicated episodes give a variance. Coverage with 4-16
  episodes is measured by `openlam audit` (docs/audit.md).
- `bootstrap_ci`: percentile bootstrap over episodes, for rates over matched pairs (cross-view,
  transfer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Estimate:
    value: float
    low: float
    high: float
    method: str
    n_episodes: int

    def to_dict(self) -> dict[str, float | int | str | None]:
        """NaN bounds (too few episodes for an interval) become None."""
        ci = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
        return {"value": None if np.isnan(self.value) else float(self.value), "ci_low": ci(self.low), "ci_high": ci(self.high),
                "ci_method": self.method, "n_episodes": self.n_episodes}


def jackknife_interval(fn: Callable[[np.ndarray], float], episodes: np.ndarray, level: float = 0.95) -> Estimate:
    """fn(row indices) on all rows, and on all rows but one episode's, for each episode. Fewer
    than 2 episodes, or a non-finite value: NaN bounds."""
    from scipy.stats import t as student_t

    uniq, inv = np.unique(episodes, return_inverse=True)
    inv = inv.reshape(-1)
    G = len(uniq)
    value = float(fn(np.arange(len(inv))))
    if G < 2 or not np.isfinite(value):
        return Estimate(value, float("nan"), float("nan"), "jackknife_t", G)
    loo = np.array([fn(np.nonzero(inv != g)[0]) for g in range(G)], np.float64)
    se = float(np.sqrt((G - 1) / G * ((loo - loo.mean()) ** 2).sum()))
    q = float(student_t.ppf(1 - (1 - level) / 2, G - 1))
    return Estimate(value, value - q * se, value + q * se, "jackknife_t", G)


def mean_interval(x: np.ndarray, episodes: np.ndarray, level: float = 0.95) -> Estimate:
    """Mean of per-row values (accuracy, per-row log-likelihood, ...) with its jackknife interval."""
    x = np.asarray(x, np.float64)
    return jackknife_interval(lambda r: float(x[r].mean()) if len(r) else float("nan"), episodes, level)


def bootstrap_ci(fn: Callable[[np.ndarray], float], episodes: np.ndarray, n_boot: int = 100, level: float = 0.95,
                 seed: int = 0) -> Estimate:
    """Percentile interval of fn(rows) over resamples of whole episodes (drawn with replacement);
    `fn` receives the row indices of a resample. Fewer than 2 episodes: NaN bounds."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(episodes, return_inverse=True)
    rows_of = [np.nonzero(inv == i)[0] for i in range(len(uniq))]
    value = fn(np.arange(len(episodes)))
    if len(uniq) < 2:
        return Estimate(float(value), float("nan"), float("nan"), "bootstrap", len(uniq))
    boots = np.array([fn(np.concatenate([rows_of[i] for i in rng.integers(0, len(uniq), len(uniq))])) for _ in range(n_boot)], np.float64)
    if np.isnan(boots).all():  # undefined on every resample (e.g. NMSE of a target that never varies)
        return Estimate(float(value), float("nan"), float("nan"), "bootstrap", len(uniq))
    lo, hi = np.nanquantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Estimate(float(value), float(lo), float(hi), "bootstrap", len(uniq))
