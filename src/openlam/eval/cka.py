"""Alignment of latent actions across domains (datasets, embodiments, cameras), following the
Motion-Focused LAM protocol (seed 004, IV-C):

1. Iterative domain-subspace stripping: a logistic-regression classifier predicts the domain from
   the embedding (fit on half of each domain's episodes, scored on the other half). While its
   held-out accuracy is above chance (beyond a binomial 95% margin over held-out episode groups),
   the top principal direction of the current embeddings is projected out, and the classifier is
   refit.
2. Token-centroid CKA: for every token (position k, code c) that occurs in both domains, a centroid
   of the stripped embeddings per domain; linear CKA between the two centroid matrices. Each of
   `rounds` bootstrap rounds draws half of each token's samples per domain (the paper: 50 rounds).

Reported next to it: the same CKA with the token correspondence shuffled between domains (what
CKA gives for matrices whose rows do not correspond), because linear CKA of few, low-rank
centroid matrices is far from 0 even without alignment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between row-aligned matrices (n, dx), (n, dy)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else 0.0


@dataclass
class Stripping:
    z: np.ndarray  # embeddings with the domain subspace projected out
    removed: int  # principal directions removed
    accuracy: list[float]  # held-out domain accuracy before each removal, and after the last
    chance: float  # majority-class rate on the held-out half


def _domain_accuracy(z: np.ndarray, domain: np.ndarray, fit: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(domain[fit])) < 2:
        return 1.0
    clf = LogisticRegression(max_iter=500).fit(z[fit], domain[fit])
    return float((clf.predict(z[~fit]) == domain[~fit]).mean())


def strip_domain(z: np.ndarray, domain: np.ndarray, episode: np.ndarray, max_remove: int | None = None, seed: int = 0) -> Stripping:
    """The classifier is fit on half of each domain's episodes and scored on the other half. The
    margin over chance counts held-out (episode, domain) groups, not rows: frames of one episode
    are not independent trials, and a row-count margin would keep stripping action directions."""
    z = np.asarray(z, np.float64)
    z = (z - z.mean(0)) / np.where(z.std(0) > 1e-12, z.std(0), 1.0)
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(z), bool)
    groups = 0
    for d in np.unique(domain):
        eps = np.unique(episode[domain == d])
        if len(eps) < 2:
            raise ValueError(f"domain {d!r} has {len(eps)} episode(s); stripping needs >= 2 per domain (one to fit, one to score)")
        fit |= (domain == d) & np.isin(episode, rng.choice(eps, len(eps) // 2, replace=False))
        groups += len(eps) - len(eps) // 2
    held = domain[~fit]
    chance = float(np.max(np.unique(held, return_counts=True)[1]) / len(held))
    margin = 1.96 * np.sqrt(chance * (1 - chance) / groups)
    limit = z.shape[1] - 1 if max_remove is None else min(max_remove, z.shape[1] - 1)
    accs = [_domain_accuracy(z, domain, fit)]
    removed = 0
    while accs[-1] > chance + margin and removed < limit:
        zc = z - z.mean(0)
        top = np.linalg.svd(zc, full_matrices=False)[2][0]  # the highest-variance direction left
        z = z - np.outer(zc @ top, top)
        removed += 1
        accs.append(_domain_accuracy(z, domain, fit))
    return Stripping(z, removed, accs, chance)


def _token_rows(tokens: np.ndarray, mask: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    out = {}
    for k in range(tokens.shape[1]):
        for c in np.unique(tokens[mask, k]):
            out[(k, int(c))] = np.nonzero(mask & (tokens[:, k] == c))[0]
    return out


def centroid_cka(z: np.ndarray, tokens: np.ndarray, domain: np.ndarray, a: Any, b: Any, rounds: int = 50, seed: int = 0,
                 min_count: int = 2) -> dict[str, Any]:
    """CKA between per-token centroids of domains a and b, over `rounds` half-sample rounds, and
    the shuffled-correspondence control."""
    ra, rb = _token_rows(tokens, domain == a), _token_rows(tokens, domain == b)
    shared = sorted(k for k in ra if k in rb and len(ra[k]) >= min_count and len(rb[k]) >= min_count)
    if len(shared) < 3:
        return {"shared_tokens": len(shared), "error": "fewer than 3 tokens occur in both domains"}
    rng = np.random.default_rng(seed)
    vals, shuffled = [], []
    for _ in range(rounds):
        ca = np.stack([z[rng.choice(ra[t], max(1, len(ra[t]) // 2), replace=False)].mean(0) for t in shared])
        cb = np.stack([z[rng.choice(rb[t], max(1, len(rb[t]) // 2), replace=False)].mean(0) for t in shared])
        vals.append(linear_cka(ca, cb))
        shuffled.append(linear_cka(ca, cb[rng.permutation(len(shared))]))
    v, s = np.array(vals), np.array(shuffled)
    return {
        "shared_tokens": len(shared), "rounds": rounds,
        "cka": {"value": float(v.mean()), "std": float(v.std()), "ci_low": float(np.quantile(v, 0.025)), "ci_high": float(np.quantile(v, 0.975))},
        "cka_shuffled": {"value": float(s.mean()), "std": float(s.std()), "ci_low": float(np.quantile(s, 0.025)), "ci_high": float(np.quantile(s, 0.975))},
    }


def cka_alignment(z: np.ndarray, tokens: np.ndarray, domain: np.ndarray, episode: np.ndarray, rounds: int = 50, seed: int = 0
                  ) -> list[dict[str, Any]]:
    """Strip the domain subspace jointly, then token-centroid CKA for every pair of domains."""
    names = sorted(set(domain.tolist()))
    if len(names) < 2:
        return []
    try:
        strip = strip_domain(z, domain, episode, seed=seed)
    except ValueError as e:
        return [{"metric": "cka", "domains": "|".join(map(str, names)), "value": None, "error": str(e)}]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            r = centroid_cka(strip.z, tokens, domain, a, b, rounds=rounds, seed=seed)
            base = {"domains": f"{a}|{b}", "removed_dims": strip.removed, "domain_accuracy": strip.accuracy,
                    "domain_chance": strip.chance, "shared_tokens": r["shared_tokens"]}
            if "error" in r:
                out.append({"metric": "cka", **base, "value": None, "error": r["error"]})
                continue
            out.append({"metric": "cka", **base, **r["cka"], "n_boot": rounds, "estimator": "linear_cka_centroids"})
            out.append({"metric": "cka_shuffled", **base, **r["cka_shuffled"], "n_boot": rounds, "estimator": "linear_cka_centroids"})
    return out
