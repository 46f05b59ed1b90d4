"""How much a labelling tells about the action, as metric records (docs/metrics.md defines each):

- `probe_records`: ridge and MLP probes, fit on train episodes, NMSE on every held-out split.
- `bound_records`: the headline held-out variational bound for the tokens and the continuous
  embedding, each with the within-task phase-matched permutation test and its gain over each
  reference labeller on the same rows; and the bound of the reference labellers (random tokens,
  episode identity: the floors a LAM must clear; task + relative phase, task + elapsed time:
  what knowing only the task and the moment gives).
- `reference_records`: the one-hot ridge probe of the reference labellers.
- `insample_records`: plug-in and kNN estimates inside each split (secondary, with their bias
  floor), and the held-out InfoNCE bound.

Every model here is fit on the train split only; every number is computed on held-out episodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from openlam.eval.bound import QModel, bound_estimate, bound_value, fit_q, gain_estimate
from openlam.eval.controls import phase_pairings, reference_tokens
from openlam.eval.intervals import mean_interval
from openlam.eval.mi import ActionBins, entropy_mm, knn_mi, per_view, permutation_null, plugin_mi, singletons
from openlam.eval.probes import fit_ridge_cv, mlp_probe, nmse, nmse_estimate, one_hot_tokens, per_dim_nmse
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
                names = table.action_names or [str(d) for d in range(y.shape[1])]
                views = {str(v): nmse(pred[r][table.view[r] == v], y[r][table.view[r] == v]) for v in np.unique(table.view[r])}
                recs.append({"metric": "probe_nmse", "split": s, "features": fname, "estimator": probe, **table.counts(r),
                             "lambda": ridge.lam if probe == "ridge" else None, **nmse_estimate(pred[r], y[r], g[r]).to_dict(),
                             "per_dim": dict(zip(names, map(float, per_dim_nmse(pred[r], y[r])))), "per_view": views})
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


MIN_PAIRINGS = 20  # below this many distinct pairings a p-value cannot reach 0.05


def phase_test(table: EvalTable, lq: np.ndarray, bins: np.ndarray, r: np.ndarray, draws: int, seed: int) -> dict[str, Any]:
    """The bound on real pairs vs on within-task, phase-matched pairings with episodes q never saw
    (`controls.phase_pairings`), over the rows whose task has >= 2 such episodes. Exact over all
    S pairings when S <= draws: p = #{pairing >= real} / S (the real pairing is one of them);
    else p = (1 + #{sampled >= real}) / (1 + draws). Ties count against the latent (1e-9 nats)."""
    if not draws:
        return {}
    pool = np.setdiff1d(np.unique(table.episode), np.unique(table.episode[table.splits["train"]]))
    pr = phase_pairings(table.episode, table.frame, table.task, r, pool, draws, seed)
    base = {"phase_rows": int(pr.usable.sum()), "phase_pairings": float(pr.distinct)}
    if pr.distinct < MIN_PAIRINGS:
        return {**base, "phase_p": None,
                "phase_note": f"{pr.distinct} distinct pairings with episodes q never saw, and a p-value needs >= {MIN_PAIRINGS}"}
    keys = table.target_keys()[r][pr.usable]
    real = bound_value(lq[pr.usable], bins[r][pr.usable], keys)
    null = np.array([bound_value(lq[pr.usable], bins[p[pr.usable]], keys) for p in pr.partners])
    hits = int((null >= real - 1e-9).sum())
    p = hits / len(null) if pr.exact else (1 + hits) / (1 + len(null))
    return {**base, "phase_real": real, "phase_null_mean": float(null.mean()), "phase_null_q95": float(np.quantile(null, 0.95)),
            "phase_p": float(p), "phase_draws": len(null), "phase_exact": pr.exact}


def bound_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """The bound for the tokens and the continuous embedding (with the phase-matched test, and
    each one's gain over every reference labeller on the same rows), and the bound of each
    reference labeller, on every held-out split."""
    _, bins = action_bins(table, train, cfg)
    keys, g = table.target_keys(), table.episode
    labellings: dict[str, tuple[QModel, np.ndarray]] = {}
    for features in dict.fromkeys(cfg.bound_features):
        x, family, standardize = _q_inputs(table, features)
        labellings[features] = fit_q(x[train], bins[train], g[train], cfg.bound_bins, family if cfg.mlp else "linear", standardize,
                                     seed=cfg.seed), x
    refs = reference_tokens(table.tokens, table.episode, table.frame, table.task, table.codebook_size, cfg.seed) if cfg.references else {}
    for name, tok in refs.items():
        x, _, _ = _q_inputs(table, "tokens", tok)
        labellings[name] = fit_q(x[train], bins[train], g[train], cfg.bound_bins, "linear", False, seed=cfg.seed), x
    recs = []
    for s in splits:
        r = table.rows(s)
        lq = {name: q.log_proba(x[r]) for name, (q, x) in labellings.items()}
        for name, (q, _) in labellings.items():
            est, extra = bound_estimate(lq[name], bins[r], keys[r], g[r])
            rec = {**est.to_dict(), **extra, "split": s, "estimator": f"ba_{q.family}", "q_c": q.c, "q_val_ce": q.val_ce,
                   "bins": int(bins.max()) + 1}
            if name in refs:
                recs.append({"metric": "reference_mi_bound", "labeller": name, "features": "tokens", **rec})
                continue
            gains = {ref: gain_estimate(lq[name], lq[ref], bins[r], keys[r], g[r]).to_dict() for ref in refs}
            recs.append({"metric": "mi_bound", "features": name, **rec, "gain_over": gains,
                         **phase_test(table, lq[name], bins, r, cfg.phase_draws, cfg.seed)})
    return recs


def reference_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """The one-hot ridge probe NMSE of each reference labeller (their bounds: `bound_records`)."""
    if not cfg.references:
        return []
    y, g = table.action, table.episode
    recs = []
    for name, tok in reference_tokens(table.tokens, table.episode, table.frame, table.task, table.codebook_size, cfg.seed).items():
        x, _, _ = _q_inputs(table, "tokens", tok)
        pred = fit_ridge_cv(x[train], y[train], g[train]).predict(x)
        for s in splits:
            r = table.rows(s)
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
