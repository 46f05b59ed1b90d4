"""Which latent carries the distractors? Probes from each token set to the distractor state.

Distractors that move with time (light flicker, moving bodies, camera shake) change the frame
between o_t and o_t+H as much as the robot does, so a reconstruction-trained latent may spend its
tokens on them (LAOM's failure case). Where the data records the distractor state per frame
(`observation.distractors`, written by the Meta-World generator), a ridge probe fit on the train
split predicts, from each latent, two targets on every held-out split:

- state: the distractor values at t+H (what a background bottleneck has to encode, since its
  decoder path sees no o_t);
- change: their change from t to t+H (what an action latent would carry if it encoded the
  distractors' motion as "what changed").

Only the dims that move within the train split's episodes are targets (per-episode factors are
constant over a pair; a dim that never moves in train cannot be learned there); a camera's shake is
read for the rows of that camera. The reference "action" feature is the real
action target over the gap: what an ideally action-centric latent knows, so an action latent that
predicts the distractors clearly better than it carries them. NMSE 1 = no better than the mean.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from openlam.data.cache import FrameCache
from openlam.errors import DataError
from openlam.eval.probes import fit_ridge_cv, nmse_estimate, one_hot_tokens, per_dim_nmse
from openlam.eval.table import EvalTable

DISTRACTORS = "observation.distractors"
TARGETS = ("state", "change")


def distractor_targets(table: EvalTable, cache: FrameCache, fit: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(state at t+H, change t -> t+H, names) per labelled row over the dims that move within the
    episodes of the `fit` rows (all rows when None): a dim that never moves where the probe is fit
    cannot be learned, and would read as a failure on a split where it does move. None when the
    data records no distractors or none of them moves."""
    if "extras" not in cache.meta:
        warnings.warn(f"{cache.path}: a frame cache made before per-frame extras were cached; rebuild it for the "
                      "distractor probes (they are skipped)", stacklevel=2)
    if DISTRACTORS not in cache.extras or not len(table):
        return None
    x = np.asarray(cache.extra(DISTRACTORS), np.float64)
    names = list(cache.episodes[0]["metadata"].get("distractor_params") or [])
    if not names:  # unnamed dims: none is a camera's shake, every one is read for every row
        names = [f"d{i}" for i in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise DataError(cache.path / "cache.json", "episodes[0].metadata.distractor_params",
                        f"{x.shape[1]} names, one per {DISTRACTORS} dim", str(len(names)))
    index = {n: i for i, n in enumerate(names)}
    shake_axes = ("rx", "ry", "rz")
    # per row: the non-shake dims, then the shake of the row's own camera (zeros for a camera without)
    cols = [i for i, n in enumerate(names) if not n.startswith("shake_")]
    own = np.zeros((len(table), 3), np.int64)
    has = np.zeros(len(table), bool)
    for v in np.unique(table.view):
        keys = [f"shake_{v}_{a}" for a in shake_axes]
        if all(k in index for k in keys):
            own[table.view == v] = [index[k] for k in keys]
            has[table.view == v] = True
    g0 = cache.starts[table.episode] + table.frame
    g1 = g0 + table.gap

    def at(g: np.ndarray) -> np.ndarray:
        return np.concatenate([x[g][:, cols], np.where(has[:, None], x[g[:, None], own], 0.0)], 1)

    s0, s1 = at(g0), at(g1)
    all_names = [names[i] for i in cols] + [f"shake_{a}" for a in shake_axes]
    rows = np.arange(len(table)) if fit is None else np.asarray(fit)
    _, inv = np.unique(table.episode[rows], return_inverse=True)
    inv = inv.reshape(-1)
    y = s1[rows]
    mean = np.zeros((inv.max() + 1, y.shape[1]))
    np.add.at(mean, inv, y)
    mean /= np.bincount(inv)[:, None]
    moving = ((y - mean[inv]) ** 2).mean(0) > 1e-10  # varies within the fit episodes
    if not moving.any():
        return None
    return s1[:, moving], (s1 - s0)[:, moving], [n for n, m in zip(all_names, moving) if m]


def latent_sets(table: EvalTable) -> dict[str, np.ndarray]:
    """The latents probed: the action tokens (continuous, one-hot), the background tokens where the
    model has them, and the real action as the reference."""
    out = {"action continuous": table.z, "action onehot": one_hot_tokens(table.tokens, table.codebook_size)}
    if table.bg_tokens is not None and table.bg_z is not None:
        out |= {"background continuous": table.bg_z, "background onehot": one_hot_tokens(table.bg_tokens, table.bg_codebook_size)}
    if table.action.shape[1]:
        out["reference: real action"] = table.action
    return out


def distractor_records(table: EvalTable, cache: FrameCache, train: np.ndarray, splits: list[str]) -> list[dict[str, Any]]:
    """distractor_probe_nmse per latent, target (state, change) and held-out split."""
    got = distractor_targets(table, cache, train)
    if got is None:
        return []
    state, change, names = got
    y = np.concatenate([state, change], 1)  # one ridge per latent; its penalty chosen on both targets
    d = state.shape[1]
    recs = []
    for fname, x in latent_sets(table).items():
        ridge = fit_ridge_cv(x[train], y[train], table.episode[train])
        pred = ridge.predict(x)
        for s in splits:
            r = table.rows(s)
            for target, cols in zip(TARGETS, (slice(0, d), slice(d, 2 * d))):
                est = nmse_estimate(pred[r][:, cols], y[r][:, cols], table.episode[r])
                if est.value != est.value:  # NaN: nothing moves in this split
                    continue
                recs.append({"metric": "distractor_probe_nmse", "split": s, "features": fname, "target": target,
                             "estimator": "ridge", "lambda": ridge.lam, **table.counts(r), **est.to_dict(),
                             "per_dim": dict(zip(names, map(float, per_dim_nmse(pred[r][:, cols], y[r][:, cols]))))})
    return recs
