"""`openlam eval RUN [--dataset D] [--out DIR]`: label the dataset with the run's model, then measure
how much the latent actions tell about the real actions (docs/metrics.md defines every number).

Output: DIR/metrics.json — {"run", "dataset", "config", "splits", "records": [...], "codebook": {...}}
where each record is one number with its metric, split, estimator / features, n and CI — plus
DIR/plots/*.png. Probes and the InfoNCE critic are fit on the train split only; everything is
scored on held-out episodes (test) and on each OOD split the dataset defines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlam.artifacts import atomic_write_json
from openlam.config import to_dict
from openlam.data.cache import FrameCache
from openlam.data.pairs import GapConfig
from openlam.errors import ConfigError, DataError
from openlam.eval.codebook import codebook_stats
from openlam.eval.information import bound_records, insample_records, probe_records, reference_records
from openlam.eval.intervals import mean_interval
from openlam.eval.mlp import standardizer
from openlam.eval.probes import one_hot_tokens
from openlam.eval.table import EvalTable, build_table


@dataclass
class EvalConfig:
    gap: GapConfig | None = None  # None: the gap the model was trained with
    bound_bins: int = 32  # k-means bins of the action target for the held-out bound (its ceiling is their entropy)
    # latents the held-out bound is computed for: the tokens (what labels data) and the continuous
    # embedding. The continuous one chooses between a linear q over a C path and an MLP q; on a
    # 1,024-dim embedding that is ~4 min of a ~8-min evaluation on 2 cores, so many-run experiments
    # may keep to the tokens (the continuous embedding keeps its ridge and MLP probes)
    bound_features: list[str] = field(default_factory=lambda: ["tokens", "continuous"])
    phase_draws: int = 200  # within-task phase-matched pairings behind the bound's p-value (0: skip)
    references: bool = True  # also score the reference labellers (random, episode identity, task + phase / time)
    n_boot: int = 100  # episode resamples for the bootstrap intervals (cross-view, transfer)
    plugin_bins: int = 16  # k-means bins of the action for the in-sample plug-in estimator
    knn_k: int = 3
    infonce_steps: int = 1500  # 0: skip the InfoNCE bound
    mlp: bool = True  # also the MLP probe, and an MLP q for the continuous embedding's bound
    transfer_pairs: int = 512  # 0: skip transfer consistency
    cka_rounds: int = 50  # 0: skip CKA alignment
    cka_max_rows: int = 4000  # rows sampled (by episode) for domain stripping
    # domain kinds CKA aligns across: "view" (cameras), "task" (tasks of one embodiment: does a token
    # mean the same change whatever the task?)
    cka_domains: list[str] = field(default_factory=lambda: ["view"])
    example_codes: int = 8  # per-code example grid: most frequent token tuples shown
    batch_size: int = 256  # labelling batch
    seed: int = 0
    device: str = "auto"
    align: list[str] = field(default_factory=list)  # more datasets for CKA (domains = datasets); empty: domains = views
    ceiling: str | None = None  # an evaluated supervised-reference run on the same data: its NMSE and the share recovered

    def validate(self) -> None:
        if self.n_boot < 2:
            raise ConfigError("eval: n_boot must be >= 2")
        if self.bound_bins < 2:
            raise ConfigError("eval: bound_bins must be >= 2")
        if not self.bound_features or any(f not in ("tokens", "continuous") for f in self.bound_features):
            raise ConfigError(f"eval: bound_features must be a non-empty subset of ['tokens', 'continuous'], got {self.bound_features}")
        bad = [d for d in self.cka_domains if d not in ("view", "task")]
        if bad:
            raise ConfigError(f"eval: cka_domains must be among ['view', 'task'], got {bad}")
        if self.phase_draws and self.phase_draws < 99:
            raise ConfigError("eval: phase_draws must be 0 (skip) or >= 99 (a p-value needs enough draws)")


def _run_dataset(run: Path) -> str:
    """A run folder evaluates on its own frame cache (same splits, no second decode)."""
    if (run / "cache" / "cache.json").is_file():
        return str(run / "cache")
    if (run / "config.yaml").is_file():
        from openlam.config import load_config
        from openlam.train.config import TrainConfig

        d = load_config(TrainConfig, run / "config.yaml").data
        if d.cache or d.dataset:
            return str(d.cache or d.dataset)
    raise ConfigError(f"{run}: not a run folder with a cache or config.yaml; pass --dataset")


def evaluate(run: str | Path, dataset: str | Path | None = None, out: str | Path | None = None, cfg: EvalConfig | None = None) -> dict[str, Any]:
    from openlam.label import LabelConfig, label, labelled_cache, resolve_model
    from openlam.models.lam import LatentActionModel
    from openlam.train import distributed

    cfg = cfg or EvalConfig()
    cfg.validate()
    run = Path(run)
    mdir, _ = resolve_model(run)
    dataset = str(dataset) if dataset is not None else _run_dataset(run)
    out = Path(out) if out is not None else run / "eval"
    t0 = time.perf_counter()
    lcfg = LabelConfig(gap=cfg.gap, batch_size=cfg.batch_size, device=cfg.device)
    label(run, dataset, out / "labels", lcfg)
    seconds_label = time.perf_counter() - t0
    _, device = distributed.init(cfg.device)
    model = LatentActionModel.from_pretrained(mdir, map_location=device).eval()

    cache = FrameCache(labelled_cache(out / "labels"))
    table = build_table(out / "labels", cache, require_actions=False)
    has_actions = cache.action_space is not None
    if cfg.ceiling and not has_actions:
        raise ConfigError(f"--ceiling: {dataset} has no actions, so there is no probe to compare with a ceiling")
    records = (metric_records if has_actions else unlabelled_records)(table, cfg, model=model, cache=cache, device=device)
    align_recs: list[dict[str, Any]] = []
    if cfg.cka_rounds and cfg.align:
        align_recs = _align_datasets(run, dataset, table, out, cfg)
    records += align_recs
    result = {
        "run": str(run), "model": str(mdir), "dataset": dataset, "out": str(out),
        "gap": table.meta["gap"], "config": to_dict(cfg),
        "splits": {s: {"rows": int(table.splits[s].sum()), "episodes": int(len(np.unique(table.episode[table.splits[s]])))}
                   for s in sorted(table.splits)},
        "records": records,
        "codebook": codebook_stats(table.tokens, table.codebook_size, table.view, table.task),
        "seconds": {"label": seconds_label, "total": time.perf_counter() - t0},
    }
    if not has_actions:
        result["needs_actions"] = NEEDS_ACTIONS
    if cfg.ceiling:
        from openlam.eval.ceiling import ceiling_records, check_same_data
        from openlam.eval.report import load_metrics

        ref = load_metrics(Path(cfg.ceiling))
        check_same_data(result, ref, table.meta, Path(ref["_dir"]))
        result["records"] += ceiling_records(records, ref, cfg.ceiling)
    atomic_write_json(out / "metrics.json", result)
    from openlam.eval.plots import eval_plots

    eval_plots(result, table, cache, out / "plots", cfg.example_codes, cfg.seed)
    return result


def metric_records(table: EvalTable, cfg: EvalConfig, model: Any = None, cache: FrameCache | None = None,
                   device: Any = "cpu") -> list[dict[str, Any]]:
    """Every number that needs only the labels (+ the model for transfer consistency)."""
    train = table.rows("train")
    if not len(train):
        raise DataError(table.meta.get("cache", "labels"), "splits.train", "labelled rows in the train split (probes are fit there)", "none")
    splits = table.eval_splits()
    if not splits:
        raise DataError(table.meta.get("cache", "labels"), "splits.test", "a held-out split with labelled rows", "none")
    C = table.codebook_size
    recs = bound_records(table, train, splits, cfg)  # the headline first: reports list records in this order
    recs += reference_records(table, train, splits, cfg)
    probes, ridges = probe_records(table, train, splits, cfg)
    recs += probes
    recs += insample_records(table, train, splits, cfg)
    recs += viewpoint_records(table, train, splits, cfg)
    held = "test" if "test" in splits else splits[0]  # cross-view and transfer: the in-distribution split when there is one
    test = table.rows(held)
    from openlam.eval.crossview import cross_view

    if len(set(table.view[test].tolist())) > 1:
        recs += [{**r, "split": held} for r in cross_view(table.episode[test], table.frame[test], table.view[test], table.tokens[test], C,
                                                            n_boot=cfg.n_boot, seed=cfg.seed)]
    if model is not None and cache is not None and cfg.transfer_pairs:
        from openlam.eval.transfer import transfer_consistency

        probe = ridges["onehot"]  # the one-hot ridge probe fit on train above
        recs += [{**r, "split": held} for r in transfer_consistency(
            model, cache, table.episode, table.frame, table.gap, table.view, table.tokens,
            lambda t: probe.predict(one_hot_tokens(t, C)), a_pool=test, n=cfg.transfer_pairs, n_boot=cfg.n_boot, seed=cfg.seed, device=device)]
    if cache is not None:
        from openlam.eval.distractors import distractor_records

        recs += distractor_records(table, cache, train, splits)
    return recs + cka_records(table, cfg)


def cka_records(table: EvalTable, cfg: EvalConfig) -> list[dict[str, Any]]:
    """CKA alignment across each domain kind of `cka_domains` with more than one value (views:
    cameras; tasks: the tasks of one embodiment), unless --align datasets are the domains."""
    from openlam.eval.cka import cka_alignment

    if not cfg.cka_rounds or cfg.align:
        return []
    recs: list[dict[str, Any]] = []
    for kind in cfg.cka_domains:
        domain = table.view if kind == "view" else table.task
        names = sorted(set(domain.tolist()))
        if len(names) < 2:
            continue
        # whole episodes, drawn per domain: every domain keeps episodes to fit and score its classifier
        # on (a draw over all episodes can leave a task with one); views of one episode share its draw
        rows = np.concatenate([_sample_episodes(table.episode, np.nonzero(domain == d)[0], cfg.cka_max_rows // len(names), cfg.seed)
                               for d in names])
        recs += [{**r, "split": "all", "domain": kind} for r in cka_alignment(
            table.z[rows], table.tokens[rows], domain[rows], table.episode[rows], rounds=cfg.cka_rounds, seed=cfg.seed)]
    return recs


# what an evaluation of data without actions leaves out, and why (metrics.json `needs_actions`)
NEEDS_ACTIONS = {
    "mi_bound": "held-out bound on I(Z; A): A is the action",
    "reference_mi_bound / reference_probe_nmse": "floors and task/phase labellers are scored against the action",
    "probe_nmse": "probes predict the action",
    "phase-matched permutation test": "tests whether the latent knows each episode's own action",
    "insample_mi": "in-sample I(Z; A)",
    "transfer_probe_action_nmse": "compares the probed actions of z and of its transferred re-encoding",
    "share_of_ceiling": "the ceiling is a supervised model of the action",
}


def unlabelled_records(table: EvalTable, cfg: EvalConfig, model: Any = None, cache: FrameCache | None = None,
                       device: Any = "cpu") -> list[dict[str, Any]]:
    """Every number that needs no actions, for unlabelled video: cross-view agreement and the
    viewpoint probe where there are several cameras, transfer consistency (token recovery, without
    the probe term) and CKA across cameras. Held-out rows are the test split when there is one,
    else every labelled pair (nothing is fit on them but the viewpoint probe, which needs a split)."""
    held = table.rows("test") if "test" in table.splits and table.splits["test"].any() else np.arange(len(table))
    C = table.codebook_size
    recs: list[dict[str, Any]] = []
    split = "test" if len(held) < len(table) else "all"
    if len(set(table.view[held].tolist())) > 1:
        from openlam.eval.crossview import cross_view

        recs += [{**r, "split": split} for r in cross_view(table.episode[held], table.frame[held], table.view[held], table.tokens[held], C,
                                                            n_boot=cfg.n_boot, seed=cfg.seed)]
        if "train" in table.splits and table.splits["train"].any() and split == "test":
            recs += viewpoint_records(table, table.rows("train"), ["test"], cfg)
    if model is not None and cache is not None and cfg.transfer_pairs:
        from openlam.eval.transfer import transfer_consistency

        recs += [{**r, "split": split} for r in transfer_consistency(
            model, cache, table.episode, table.frame, table.gap, table.view, table.tokens, None, a_pool=held,
            n=cfg.transfer_pairs, n_boot=cfg.n_boot, seed=cfg.seed, device=device)]
    return recs + cka_records(table, cfg)


def _sample_episodes(episode: np.ndarray, rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most ~max_rows rows (but >= 2 episodes), keeping whole episodes (never a frame-level subsample)."""
    if len(rows) <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    eps = rng.permutation(np.unique(episode[rows]))
    keep, n = [], 0
    for e in eps:
        r = rows[episode[rows] == e]
        if len(keep) >= 2 and n + len(r) > max_rows:
            continue  # too large for what is left; a smaller episode may still fit
        keep.append(r)
        n += len(r)
    return np.sort(np.concatenate(keep))


def viewpoint_records(table: EvalTable, train: np.ndarray, splits: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """How much the latent tells about which camera saw the pair (MVP-LAM referee's control):
    logistic regression latent -> view, fit on train, accuracy on test vs the majority rate."""
    from sklearn.linear_model import LogisticRegression

    views_train = table.view[train]
    if len(set(views_train.tolist())) < 2 or "test" not in splits:
        return []
    test = table.rows("test")
    keep = np.isin(table.view[test], np.unique(views_train))
    test = test[keep]
    if not len(test):
        return []
    chance = float(np.max(np.unique(table.view[test], return_counts=True)[1]) / len(test))
    recs = []
    for fname, x in table.features().items():
        scale = standardizer(x[train])
        clf = LogisticRegression(max_iter=1000).fit(scale(x[train]), views_train)
        ok = (clf.predict(scale(x[test])) == table.view[test]).astype(np.float64)
        recs.append({"metric": "viewpoint_probe_accuracy", "split": "test", "features": fname, "estimator": "logreg",
                     **table.counts(test), "chance": chance, **mean_interval(ok, table.episode[test]).to_dict()})
    return recs


def _align_datasets(run: Path, dataset: str, table: EvalTable, out: Path, cfg: EvalConfig) -> list[dict[str, Any]]:
    """CKA across datasets: each --align dataset is labelled with the same model; domain = dataset."""
    from openlam.eval.cka import cka_alignment
    from openlam.label import LabelConfig, label, labelled_cache

    zs, toks, doms, eps = [], [], [], []
    sets = [(Path(dataset).name or "dataset", table)]
    for i, d in enumerate(cfg.align):
        ldir = out / "align" / f"{i}-{Path(d).name}" / "labels"
        label(run, d, ldir, LabelConfig(gap=cfg.gap, batch_size=cfg.batch_size, device=cfg.device))

        other_cache = FrameCache(labelled_cache(ldir))
        sets.append((f"{i}-{Path(d).name}", build_table(ldir, other_cache, require_actions=False)))
    for j, (name, t) in enumerate(sets):
        rows = _sample_episodes(t.episode, np.arange(len(t)), cfg.cka_max_rows // len(sets), cfg.seed)
        zs.append(t.z[rows])
        toks.append(t.tokens[rows])
        doms.append(np.full(len(rows), name, dtype=object))
        eps.append(t.episode[rows] + j * 10**9)  # episodes of different datasets never coincide
    return [{**r, "split": "all", "domain": "dataset"} for r in cka_alignment(
        np.concatenate(zs), np.concatenate(toks), np.concatenate(doms), np.concatenate(eps), rounds=cfg.cka_rounds, seed=cfg.seed)]
