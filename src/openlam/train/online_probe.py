"""Online linear probe during training (LAOM's protocol, fit in closed form).

Every `probe_every` steps the encoder labels fixed train pairs and fixed validation pairs without
gradient, in eval mode (no NSVQ noise, no usage update); a ridge regression from the detached
continuous latent (and, separately, from the one-hot tokens) to the action target is fit on the
train pairs, its penalty chosen by cross-validation grouped by episode, and scored as NMSE on the
validation episodes, overall and per action dim. A closed-form fit, not an SGD head: no optimiser
state to checkpoint, no lag behind the encoder, and no path by which anything reaches the LAM.
"""

from __future__ import annotations

import numpy as np
import torch

from openlam.data.pairs import PairBatch
from openlam.eval.probes import fit_ridge_cv, nmse, one_hot_tokens, per_dim_nmse
from openlam.models.lam import LatentActionModel
from openlam.objectives.reconstruction import stack_views


@torch.no_grad()
def encode_pairs(model: LatentActionModel, batches: list[PairBatch], device: torch.device) -> dict[str, np.ndarray]:
    """Continuous latent (N, K * code_dim), tokens (N, K), action target (N, A) and episode (N,), one
    row per pair and view."""
    was = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"z": [], "tokens": [], "action": [], "episode": []}
    for b in batches:
        if b.action is None:
            raise ValueError("online probe: batches carry no action targets")
        V = len(b.views)
        q = model.encode_pair(stack_views(b.to(device), b.views)).quant
        parts["z"].append(q.z_cont.flatten(1).float().cpu().numpy())
        parts["tokens"].append(q.indices.cpu().numpy())
        parts["action"].append(b.action.repeat_interleave(V, 0).numpy())
        parts["episode"].append(b.episode.repeat_interleave(V, 0).numpy())
    model.train(was)
    return {k: np.concatenate(v) for k, v in parts.items()}


class OnlineProbe:
    """Fit on `fit` batches (train split), score on `score` batches (validation episodes)."""

    def __init__(self, fit: list[PairBatch], score: list[PairBatch], action_names: list[str], codebook_size: int):
        self.fit, self.score, self.names, self.codebook_size = fit, score, action_names, codebook_size

    def __call__(self, model: LatentActionModel, device: torch.device) -> dict[str, float]:
        tr, va = encode_pairs(model, self.fit, device), encode_pairs(model, self.score, device)
        out: dict[str, float] = {}
        features = {"continuous": lambda d: d["z"], "onehot": lambda d: one_hot_tokens(d["tokens"], self.codebook_size)}
        for name, feat in features.items():
            ridge = fit_ridge_cv(feat(tr), tr["action"], tr["episode"])
            pred = ridge.predict(feat(va))
            out[f"probe/nmse_{name}"] = nmse(pred, va["action"])
            for dim, v in zip(self.names, per_dim_nmse(pred, va["action"])):
                out[f"probe/nmse_{name}/{dim}"] = float(v)
        return out
