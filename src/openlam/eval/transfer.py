"""Transfer consistency (CycleMimic's semantic-consistency test): a latent action should mean the
same motion whatever scene it is applied to.

For pairs A (held-out) and B (same view, another episode): decode z^A on o_t^B, re-encode
(o_t^B, generated) -> z'. Reported: token recovery (z' == z^A, per position and whole tuple), the
same when z^A is decoded on its own frame o_t^A ("self", the reconstruction loop's ceiling), the
rate independent codes with the marginals of z^A and of z' would reach by chance, and how well the probe's
action for z' matches the probe's action for z^A (NMSE relative to the variance of the latter).
Needs a pixel-target model: a feature-target decoder generates features, which the encoder
cannot re-read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from openlam.data.cache import FrameCache
from openlam.eval.intervals import bootstrap_ci
from openlam.eval.probes import nmse
from openlam.models.lam import LatentActionModel, normalize


@torch.no_grad()
def _loop(model: LatentActionModel, o_cond: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    gen = model.decode(o_cond, tokens).clamp(-1, 1)
    return model.encode(o_cond, gen).indices.cpu().numpy()


def transfer_consistency(model: LatentActionModel, cache: FrameCache, episode: np.ndarray, frame: np.ndarray, gap: np.ndarray,
                         view: np.ndarray, tokens: np.ndarray, predict_action: Any, a_pool: np.ndarray | None = None, n: int = 512,
                         batch: int = 128, n_boot: int = 100, seed: int = 0, device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Arrays cover every labelled pair; A is drawn from `a_pool` (row indices, e.g. the held-out
    split; None: all), B from any other episode. `predict_action(tokens (M, K)) -> (M, A)`: the
    probe fit on train episodes (None: no probe term, for data without actions)."""
    if model.cfg.target != "pixels":
        return [{"metric": "transfer", "value": None, "error": "needs a pixel-target model (this one predicts features)"}]
    rng = np.random.default_rng(seed)
    pool = np.arange(len(episode)) if a_pool is None else np.asarray(a_pool)
    a_rows = rng.choice(pool, min(n, len(pool)), replace=False)
    b_rows = np.empty_like(a_rows)
    for i, r in enumerate(a_rows):  # a partner from another episode, same view
        cand = np.nonzero((view == view[r]) & (episode != episode[r]))[0]
        if not len(cand):
            return [{"metric": "transfer", "value": None, "error": "needs at least two episodes per view"}]
        b_rows[i] = rng.choice(cand)
    starts = cache.starts
    z_self, z_cross = [], []
    for s in range(0, len(a_rows), batch):
        ra, rb = a_rows[s:s + batch], b_rows[s:s + batch]
        frames = {v: cache.frames(v) for v in set(view[ra].tolist())}
        o_a = np.stack([frames[view[r]][starts[episode[r]] + frame[r]] for r in ra])
        o_b = np.stack([frames[view[r]][starts[episode[r]] + frame[r]] for r in rb])
        to = lambda x: normalize(torch.from_numpy(x).permute(0, 3, 1, 2).to(device))  # noqa: E731
        tok = torch.from_numpy(tokens[ra]).to(device)
        z_self.append(_loop(model, to(o_a), tok))
        z_cross.append(_loop(model, to(o_b), tok))
    za, zs, zc = tokens[a_rows], np.concatenate(z_self), np.concatenate(z_cross)
    C = model.cfg.codebook_size
    # chance: independent codes with the marginals of z^A and of the re-encoded z' (a re-encoder
    # that always answers the most common code scores above sum p^2, so both marginals matter)
    p_a = [np.bincount(za[:, k], minlength=C) / len(za) for k in range(za.shape[1])]
    p_c = [np.bincount(zc[:, k], minlength=C) / len(zc) for k in range(zc.shape[1])]
    chance = float(np.mean([(p * q).sum() for p, q in zip(p_a, p_c)]))
    ep = episode[a_rows]
    recs = []
    measures = [
        ("transfer_token_recovery", lambda r: float((zc[r] == za[r]).mean()), "rate"),
        ("transfer_tuple_recovery", lambda r: float((zc[r] == za[r]).all(1).mean()), "rate"),
        ("transfer_self_token_recovery", lambda r: float((zs[r] == za[r]).mean()), "rate"),
    ]
    if predict_action is not None:  # without actions (unlabelled video) there is no probe
        pa, pc = predict_action(za), predict_action(zc)
        measures.append(("transfer_probe_action_nmse", lambda r: nmse(pc[r], pa[r]), "ridge_onehot"))
    for name, fn, est in measures:
        recs.append({"metric": name, "n": int(len(a_rows)), "estimator": est, **bootstrap_ci(fn, ep, n_boot=n_boot, seed=seed).to_dict()})
    recs.append({"metric": "transfer_chance_token_recovery", "n": int(len(za)), "value": chance, "estimator": "sum_c p_A(c) p_re(c)"})
    return recs
