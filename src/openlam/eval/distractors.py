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

Only the dims that move within episodes are targets (per-episode factors are constant over a pair);
a camera's shake is read for the rows of that camera. The reference "action" feature is the real
action target over the gap: what an ideally action-centric latent knows, so an action latent that
predicts the distractors clearly better than it carries them. NMSE 1 = no better than the mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from openlam.data.cache import FrameCache
from openlam.eval.probes import fit_ridge_cv, nmse_estimate, one_hot_tokens, per_dim_nmse
from openlam.eval.table import EvalTable

DISTRACTORS = "observation.distractors"
TARGETS = ("state", "change")


def distractor_targets(table: EvalTable, cache: FrameCache) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(state at t+H, change t -> t+H, names) per labelled row over the moving dims; None when the
    data records no distractors or none of them moves."""
    if DISTRACTORS not in cache.extras or not len(table):
        return None
    x = np.asarray(cache.extra(DISTRACTORS), np.float64)
    names = list(cache.episodes[0]["metadata"].get("distractor_params") or [f"d{i}" for i in range(x.shape[1])])
    if len(names) != x.shape[1]:
        names = [f"d{i}" for i in range(x.shape[1])]
    starts = cache.starts
    ep_of_frame = np.repeat(np.arange(len(starts)), [e["length"] for e in cache.episodes])
    sums = np.zeros((len(starts), x.shape[1]))
    np.add.at(sums, ep_of_frame, x)
    episode_mean = sums / np.maximum(np.bincount(ep_of_frame, minlength=len(starts)), 1)[:, None]
    moving = ((x - episode_mean[ep_of_frame]) ** 2).mean(0) > 1e-10  # varies within episodes
    common = [i for i, n in enumerate(names) if moving[i] and not n.startswith("shake_")]
    shake_axes = ("rx", "ry", "rz")
    has_shake = any(moving[i] for i, n in enumerate(names) if n.startswith("shake_"))
    g0 = starts[table.episode] + table.frame
    g1 = g0 + table.gap
    cols = [x[:, common]]
    out_names = [names[i] for i in common]
    if has_shake:  # each row reads its own camera's shake
        own = np.zeros((len(table), 3), np.int64)
        has = np.zeros(len(table), bool)
        index = {n: i for i, n in enumerate(names)}
        for v in np.unique(table.view):
            keys = [f"shake_{v}_{a}" for a in shake_axes]
            if all(k in index for k in keys):
                rows = table.view == v
                own[rows] = [index[k] for k in keys]
                has[rows] = True
        s0 = np.where(has[:, None], x[g0[:, None], own], 0.0)
        s1 = np.where(has[:, None], x[g1[:, None], own], 0.0)
        out_names += [f"shake_{a}" for a in shake_axes]
    if not out_names:
        return None
    state = np.concatenate([cols[0][g1]] + ([s1] if has_shake else []), 1)
    change = state - np.concatenate([cols[0][g0]] + ([s0] if has_shake else []), 1)
    return state, change, out_names


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
    got = distractor_targets(table, cache)
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
