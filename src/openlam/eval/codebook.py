"""Codebook health: how many codes the encoder actually uses, overall, per view and per task.
A LAM whose tokens collapse onto a few codes can still beat copy-last-frame; these numbers catch it."""

from __future__ import annotations

from typing import Any

import numpy as np


def counts(tokens: np.ndarray, codebook_size: int) -> np.ndarray:
    """(N, K) codes -> (K, C) counts per token position."""
    K = tokens.shape[1]
    return np.stack([np.bincount(tokens[:, k], minlength=codebook_size) for k in range(K)])


def perplexity(c: np.ndarray) -> float:
    """exp(entropy) of a count vector: the effective number of codes in use."""
    p = c[c > 0] / c.sum()
    return float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0


def codebook_stats(tokens: np.ndarray, codebook_size: int, views: np.ndarray, tasks: np.ndarray) -> dict[str, Any]:
    c = counts(tokens, codebook_size)
    tuples = np.unique(tokens, axis=0, return_counts=True)[1]
    used = c > 0
    return {
        "num_pairs": int(len(tokens)),
        "codebook_size": codebook_size,
        "num_tokens": int(tokens.shape[1]),
        "usage": float(used.mean()),  # fraction of (position, code) slots used at least once
        "used_codes_per_position": used.sum(1).tolist(),
        "dead_codes_per_position": [np.nonzero(~u)[0].tolist() for u in used],
        "perplexity_per_position": [perplexity(ck) for ck in c],
        "distinct_tuples": int(len(tuples)),
        "tuple_perplexity": perplexity(tuples),
        "counts": c.tolist(),
        "per_view": {str(v): counts(tokens[views == v], codebook_size).tolist() for v in sorted(set(views.tolist()))},
        "per_task": {str(t): counts(tokens[tasks == t], codebook_size).tolist() for t in sorted(set(tasks.tolist()))},
    }
