"""How much a labelling tells about the action, as metric records (docs/metrics.md defines each):

- `probe_records`: ridge and MLP probes, fit on train episodes, NMSE on every held-out split.
- `bound_records`: the headline held-out variational bound for the tokens and the continuous
  embedding, each with the within-task phase-matched shuffle test.
- `reference_records`: the same bound and the one-hot ridge probe for the reference labellers
  (random tokens, episode identity, task + phase): the floors a LAM must clear.
- `insample_records`: plug-in and kNN estimates inside each split (secondary, with their bias
  floor), and the held-out InfoNCE bound.

Every model here is fit on the train split only; every number is computed on held-out episodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from openlam.eval.bound import QModel, bound_estimate, bound_value, fit_q
from openlam.eval.controls import phase_partners, reference_tokens
from openlam.eval.intervals import mean_interval
from openlam.eval.mi import ActionBins, entropy_mm, knn_mi, per_view, permutation_null, plugin_mi, singletons
from openlam.eval.probes import fit_ridge_cv, mlp_probe, nmse_estimate, one_hot_tokens
from openlam.eval.table import EvalTable

if TYPE_CHECKING:
    from openlam.eval.suite import EvalConfig


def probe_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records, and the fitted ridge probe per feature kind (transfer consistency reuses the one-hot one)."""
    y, g = table.action, table.episode
    recs, ridges = [], {}
    held = np.concatenate([table.rows(s) for s in splits])
    for fname, x in table.features().items():
        ridge = ridges[fname] = fit_ridge_cv(x[train], y[train], g[train])
        preds = {"ridge": ridge.predict(x)}
        if cfg.mlp:
            p = np.full(y.shape, np.nan)
            p[held] = mlp_probe(x[train], y[train], g[train], x[held], seed=cfg.seed)
            preds["mlp"] = p
        for probe, pred in preds.items():
            for s in splits:
                r = table.rows(s)
                recs.append({"metric": "probe_nmse", "split": s, "features": fname, "estimator": probe, **table.counts(r),
                             "lambda": ridge.lam if probe == "ridge" else None, **nmse_estimate(pred[r], y[r], g[r]).to_dict()})
    return recs, ridges


def action_bins(table: EvalTable, train: np.ndarray, cfg: EvalConfig) -> tuple[ActionBins, np.ndarray]:
    """k-means bins fit on the train split's action targets (one per target), and every row's bin."""
    from openlam.eval.bound import first_of

    keys = table.target_keys()
    bins = ActionBins.fit(table.action[train][first_of(keys[train])], cfg.bound_bins, cfg.seed)
    return bins, bins.assign(table.action)


def _q_inputs(table: EvalTable, features: str, tokens: np.ndarray | None = None) -> tuple[np.ndarray, str, bool]:
    """Features, q family and whether to standardise: one-hot tokens go raw into a factorised
    linear q; the continuous embedding is standardised and may get an MLP q."""
    if features == "tokens":
        return one_hot_tokens(table.tokens if tokens is None else tokens, table.codebook_size), "linear", False
    return table.z, "auto", True


def _bound(table: EvalTable, q: QModel, x: np.ndarray, bins: np.ndarray, r: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    lq = q.log_proba(x[r])
    est, extra = bound_estimate(lq, bins[r], table.target_keys()[r], table.episode[r])
    return {**est.to_dict(), **extra, "n_episodes": est.n_episodes}, lq


def phase_test(table: EvalTable, lq: np.ndarray, bins: np.ndarray, r: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """The bound on real pairs vs on `draws` within-task phase-matched shuffles, over the rows
    whose task has >= 2 episodes. p = (1 + #{null >= real}) / (1 + draws)."""
    if not draws:
        return {}
    partners, usable = phase_partners(table.episode, table.frame, table.task, r, draws, seed)
    if not usable.any():
        return {"phase_p": None, "phase_rows": 0, "phase_note": "no task with >= 2 episodes: the shuffle is undefined"}
    keys = table.target_keys()[r][usable]
    real = bound_value(lq[usable], bins[r][usable], keys)
    null = np.array([bound_value(lq[usable], bins[partners[d, usable]], keys) for d in range(draws)])
    return {"phase_real": real, "phase_null_mean": float(null.mean()), "phase_null_q95": float(np.quantile(null, 0.95)),
            "phase_p": float((1 + (null >= real).sum()) / (1 + draws)), "phase_draws": draws, "phase_rows": int(usable.sum())}


def bound_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    _, bins = action_bins(table, train, cfg)
    recs = []
    for features in ("tokens", "continuous"):
        x, family, standardize = _q_inputs(table, features)
        q = fit_q(x[train], bins[train], table.episode[train], cfg.bound_bins, family if cfg.mlp else "linear", standardize, seed=cfg.seed)
        for s in splits:
            r = table.rows(s)
            rec, lq = _bound(table, q, x, bins, r)
            recs.append({"metric": "mi_bound", "split": s, "features": features, "estimator": f"ba_{q.family}", "q_c": q.c,
                         "bins": int(bins.max()) + 1, **rec, **phase_test(table, lq, bins, r, cfg.phase_draws, cfg.seed)})
    return recs


def reference_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """The bound (tokens) and the one-hot ridge probe NMSE of each reference labeller."""
    if not cfg.references:
        return []
    _, bins = action_bins(table, train, cfg)
    y, g = table.action, table.episode
    recs = []
    refs = reference_tokens(table.tokens, table.episode, table.frame, table.task, table.codebook_size, cfg.seed)
    for name, tok in refs.items():
        x, _, _ = _q_inputs(table, "tokens", tok)
        q = fit_q(x[train], bins[train], g[train], cfg.bound_bins, "linear", False, seed=cfg.seed)
        ridge = fit_ridge_cv(x[train], y[train], g[train])
        pred = ridge.predict(x)
        for s in splits:
            r = table.rows(s)
            rec, _ = _bound(table, q, x, bins, r)
            recs.append({"metric": "reference_mi_bound", "labeller": name, "split": s, "features": "tokens", "estimator": "ba_linear", **rec})
            recs.append({"metric": "reference_probe_nmse", "labeller": name, "split": s, "features": "onehot", "estimator": "ridge",
                         **table.counts(r), **nmse_estimate(pred[r], y[r], g[r]).to_dict()})
    return recs


def insample_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Plug-in and kNN inside each split, per view then averaged, each with its permutation null
    (the value it reports for independent variables: its bias floor); the held-out InfoNCE bound."""
    z, a, g, view = table.tokens, table.action, table.episode, table.view
    nan_none = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    recs = []
    for s in splits:
        r = table.rows(s)
        zr, ar, vr = z[r], a[r], view[r]
        # the plug-in's bins are fit once per view: permuting the actions permutes their bins
        binned = np.zeros(len(r), np.int64)
        for v in set(vr.tolist()):
            m = vr == v
            binned[m] = ActionBins.fit(ar[m], cfg.plugin_bins, cfg.seed).assign(ar[m])
        estimators = {"plugin_mm": (lambda zz, bb: plugin_mi(zz, bb, a_discrete=True), binned),
                      "knn_ross": (lambda zz, aa: knn_mi(zz, aa, k=cfg.knn_k).value, ar)}
        for name, (est, target) in estimators.items():
            value, views = per_view(est, zr, target, vr)
            null, _ = per_view(lambda zz, aa, est=est: permutation_null(est, zz, aa, seed=cfg.seed), zr, target, vr)
            rec = {"metric": "mi_insample", "split": s, "estimator": name, **table.counts(r), "value": nan_none(value),
                   "null": nan_none(null), "per_view": {v: nan_none(x) for v, x in views.items()}}
            if name == "knn_ross":  # rows whose tuple occurs once in their view have no neighbour of their own tuple
                rec["rows_dropped"] = int(sum(singletons(zr[vr == v]).sum() for v in views))
            else:  # its ceiling: the entropy of the binned action
                rec["ceiling"] = per_view(lambda zz, bb: entropy_mm(np.bincount(bb)), zr, binned, vr)[0]
            recs.append(rec)
    if cfg.infonce_steps:
        from openlam.eval.infonce import InfoNCECritic

        critic = InfoNCECritic(z[train], a[train], g[train], view[train], table.codebook_size, steps=cfg.infonce_steps, seed=cfg.seed)
        for s in splits:
            r = table.rows(s)
            idx, terms = critic.row_terms(z[r], a[r], view[r], seed=cfg.seed)
            est = mean_interval(terms, g[r][idx])
            recs.append({"metric": "mi_infonce", "split": s, "estimator": "infonce_factorised", **table.counts(r), "n_scored": int(len(idx)),
                         "batch": int(min(critic.batch, len(r))), **est.to_dict()})
    return recs
