"""Cross-view agreement: do synchronized cameras of the same (t, t+H) get the same latent action?

For each pair of views (u, v), rows are matched on (episode, frame). Reported: per-position token
agreement, exact-tuple agreement, the agreement two independent labellers with the same code
marginals would reach by chance (sum_c p_u(c) p_v(c), averaged over positions), and the mutual
information between the two views' codes (mean over token positions of the plug-in, Miller-Madow
estimate, in-sample, with its permutation null); rates carry a bootstrap CI over episodes."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from openlam.eval.intervals import bootstrap_ci
from openlam.eval.mi import per_position_mi, permutation_null


def matched(episode: np.ndarray, frame: np.ndarray, view: np.ndarray, tokens: np.ndarray, u: str, v: str
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens of views u and v at the (episode, frame) keys both have: (ep, tok_u, tok_v)."""
    iu, iv = np.nonzero(view == u)[0], np.nonzero(view == v)[0]
    ku = episode[iu] * (frame.max() + 1) + frame[iu]
    kv = episode[iv] * (frame.max() + 1) + frame[iv]
    common, a, b = np.intersect1d(ku, kv, return_indices=True)
    return episode[iu[a]], tokens[iu[a]], tokens[iv[b]]


def chance_agreement(tu: np.ndarray, tv: np.ndarray, codebook_size: int) -> float:
    p = [np.bincount(tu[:, k], minlength=codebook_size) / len(tu) for k in range(tu.shape[1])]
    q = [np.bincount(tv[:, k], minlength=codebook_size) / len(tv) for k in range(tv.shape[1])]
    return float(np.mean([(pk * qk).sum() for pk, qk in zip(p, q)]))


def cross_view(episode: np.ndarray, frame: np.ndarray, view: np.ndarray, tokens: np.ndarray, codebook_size: int,
               n_boot: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """One record per view pair and metric, plus the mean over view pairs ("all")."""
    views = sorted(set(view.tolist()))
    out: list[dict[str, Any]] = []
    per_metric: dict[str, list[float]] = {}
    for u, v in combinations(views, 2):
        ep, tu, tv = matched(episode, frame, view, tokens, u, v)
        if len(ep) < 2:
            continue
        fns = {
            "token_agreement": lambda r, tu=tu, tv=tv: float((tu[r] == tv[r]).mean()),
            "tuple_agreement": lambda r, tu=tu, tv=tv: float((tu[r] == tv[r]).all(1).mean()),
            "chance_agreement": lambda r, tu=tu, tv=tv: chance_agreement(tu[r], tv[r], codebook_size),
        }
        for name, fn in fns.items():
            est = bootstrap_ci(fn, ep, n_boot=n_boot, seed=seed)
            out.append({"metric": f"crossview_{name}", "views": f"{u}|{v}", "n": int(len(ep)), **est.to_dict(), "estimator": "rate"})
            per_metric.setdefault(name, []).append(est.value)
        # in-sample MI between the views' codes: a value beside its permutation null (bias floor), no interval
        mi = per_position_mi(tu, tv)
        out.append({"metric": "crossview_mi_views", "views": f"{u}|{v}", "n": int(len(ep)), "value": mi, "estimator": "plugin_mm_per_position",
                    "null": permutation_null(per_position_mi, tu, tv, seed=seed)})
        per_metric.setdefault("mi_views", []).append(mi)
    for name, vals in per_metric.items():
        out.append({"metric": f"crossview_{name}", "views": "mean", "value": float(np.mean(vals)), "n": len(vals),
                    "estimator": "plugin_mm_per_position" if name == "mi_views" else "rate"})
    return out
