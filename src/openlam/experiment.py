"""`openlam experiment CONFIG [scale=gpu] [KEY=VALUE ...]`: one command from data to a results
section. Generates the dataset once per generator config (content-addressed under `data_root`, so
every experiment naming the same benchmark file reuses it), caches it once, trains every arm with
every seed on it (same data, same steps), evaluates each run (the ceiling arm first: the others
are read against it), and writes a table (mean +- sd over seeds, per-seed values with CIs), bar
charts with CIs and the wall time into a section of docs/results.md, every number into a JSON
beside it, plus a full side-by-side report in <out>/report.

Resumable: a finished run (summary.json) or evaluation (eval/metrics.json) is not redone; a run
killed mid-training continues from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from openlam.config import apply_overrides, as_current, from_dict, load_config, to_dict
from openlam.errors import ConfigError
from openlam.eval.suite import EvalConfig
from openlam.sim.generate import GenerateConfig


@dataclass
class ArmConfig:
    name: str = "arm"
    config: str = "configs/lapa_tiny.yaml"  # a TrainConfig YAML
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE on that TrainConfig
    # KEY=VALUE on the experiment's eval config for this arm only (a ceiling is read through its
    # probes, so it can skip the token metrics: infonce_steps=0 transfer_pairs=0 ...)
    eval: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    question: str = ""  # one line: what the experiment tests (goes into the results section)
    # the generator config inline, or (in the YAML) the path of a benchmark file holding it
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    data_root: str = "runs/benchmarks"  # generated datasets live here, one folder per generator config
    arms: list[ArmConfig] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    train: list[str] = field(default_factory=list)  # KEY=VALUE on every arm's TrainConfig (steps, batch size ...)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # name of the arm that is the supervised reference (the `action` objective alone): each seed's
    # run of it is the ceiling of that seed's other runs (`openlam eval --ceiling`); None: no ceiling
    ceiling: str | None = None
    out: str = "runs/experiment"
    # the side-by-side report's folder; None: <out>/report. Two experiments that share `out` share
    # the runs they have in common (same arm config, seed and data: trained once) and name their own
    report: str | None = None
    results: str = "docs/results.md"
    figures: str = "docs/figures"  # bar charts go to <figures>/<name>/
    scale: str = "cpu"  # selects `scales[scale]`: KEY=VALUE overrides of this config
    scales: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        if len(self.arms) < 1 or not self.seeds:
            raise ConfigError("experiment: need at least one arm and one seed")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"experiment: arm names must be unique, got {names}")
        if self.ceiling is not None and self.ceiling not in names:
            raise ConfigError(f"experiment: ceiling '{self.ceiling}' is not an arm; arms: {names}")


def _benchmark_file(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """`generate: FILE` -> the generator config that file holds (a shared benchmark)."""
    if isinstance(data.get("generate"), str):
        bench = Path(data["generate"])
        if not bench.is_file():
            raise ConfigError(f"{path}: generate: benchmark file '{bench}' not found (a path relative to the working directory)")
        data["generate"] = yaml.safe_load(bench.read_text()) or {}
    return data


def experiment_data(path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """An experiment file as a dict: the YAML, then its `scales[scale]` overrides, then the command line's."""
    data = _benchmark_file(yaml.safe_load(Path(path).read_text()) or {}, path)
    data = _benchmark_file(apply_overrides(data, overrides), path)  # generate=FILE may come from the command line
    scale = data.get("scale", "cpu")
    if scale != "cpu" or scale in data.get("scales", {}):
        if scale not in data.get("scales", {}):
            raise ConfigError(f"{path}: scale '{scale}' not in scales {sorted(data.get('scales', {}))}")
        data = apply_overrides(apply_overrides(data, data["scales"][scale]), overrides)
    return data


def load_experiment(path: str | Path, overrides: list[str]) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, experiment_data(path, overrides))
    cfg.validate()
    for arm in cfg.arms:  # every arm's config is checked now, not after hours of data generation
        _train_config(cfg, arm, 0, Path("cache"), Path(cfg.out))
        arm_eval_config(cfg, arm)
    return cfg


def _train_config(cfg: Any, arm: ArmConfig, seed: int, cache: Path, out: Path) -> Any:
    from openlam.train.config import TrainConfig

    t = load_config(TrainConfig, arm.config, [*cfg.train, *arm.overrides, f"data.cache={cache}", "data.dataset=null",
                                              f"out={out / 'runs' / f'{arm.name}-s{seed}'}", f"seed={seed}"])
    t.validate()
    return t


def data_key(cfg: Any) -> dict[str, Any]:
    """What determines the generated data: the generator config less its worker count."""
    key = to_dict(cfg.generate)
    key.pop("workers", None)
    return key


def benchmark_dir(cfg: Any) -> Path:
    digest = hashlib.sha256(json.dumps(data_key(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.data_root) / f"metaworld-{digest}"


def prepare_data(cfg: Any, out: Path) -> tuple[Path, Path, float]:
    """Generate and cache the benchmark unless a finished copy exists (its stamp is written last);
    remove this experiment's runs when they were made from other data."""
    from openlam.artifacts import atomic_write_json
    from openlam.data.cache import CacheConfig, build_cache
    from openlam.sim.generate import generate

    import fcntl

    root, key, t0 = benchmark_dir(cfg), data_key(cfg), time.perf_counter()
    data, cache, stamp = root / "data", root / "cache", root / "generate.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # a second experiment on the same benchmark waits here
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and json.loads(stamp.read_text()) == key and (data / "meta" / "info.json").is_file()):
            stamp.unlink(missing_ok=True)
            if cache.exists():
                shutil.rmtree(cache)
            generate(cfg.generate, data, overwrite=True)
            atomic_write_json(stamp, key)
        if not (cache / "cache.json").is_file():
            build_cache(data, cache, CacheConfig(size=cfg.generate.size), overwrite=cache.exists())
    mine = out / "data_config.json"
    if mine.is_file() and json.loads(mine.read_text()) != key and (out / "runs").exists():
        print(f"experiment: the data config changed; removing {out / 'runs'} (made from the old data)")
        shutil.rmtree(out / "runs")
    atomic_write_json(mine, key)
    return data, cache, time.perf_counter() - t0


def arm_eval_config(cfg: ExperimentConfig, arm: ArmConfig) -> EvalConfig:
    ecfg = from_dict(EvalConfig, apply_overrides(to_dict(cfg.eval), arm.eval))
    ecfg.validate()
    return ecfg


def train_run(cfg: Any, arm: ArmConfig, seed: int, cache: Path, out: Path) -> tuple[Path, float]:
    """Train (or resume, or reuse a finished run made from the same config) one arm x seed; `cfg`
    gives the common overrides (`train`) and the data. Returns the run folder and its training time."""
    from openlam.artifacts import atomic_write_json
    from openlam.errors import OpenLAMError
    from openlam.train import checkpoint
    from openlam.train.config import TrainConfig
    from openlam.train.trainer import train

    tcfg = _train_config(cfg, arm, seed, cache, out)
    run = Path(tcfg.out)
    key_path, key = run / "experiment_run.json", {"train": to_dict(tcfg), "data": data_key(cfg)}
    old = json.loads(key_path.read_text()) if key_path.is_file() else None
    if old is not None and {**old, "train": as_current(TrainConfig, old.get("train"))} != key:  # fields added since: their defaults
        raise OpenLAMError(f"{run}: made by another experiment config (see {key_path}); remove it or choose another out")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(key_path, key)
    if not (run / "summary.json").is_file():
        train(tcfg, resume=checkpoint.latest(run) is not None)
    return run, float(json.loads((run / "summary.json").read_text()).get("train_time_s", 0.0))


def _train_and_eval(cfg: ExperimentConfig, arm: ArmConfig, seed: int, cache: Path, out: Path,
                    ceiling: Path | None = None) -> tuple[Path, float, float]:
    """train_run, then evaluate the run (against the ceiling run when given) unless its evaluation
    with this config exists. Returns the run folder, its training and its evaluation time."""
    from openlam.eval.suite import evaluate

    run, train_s = train_run(cfg, arm, seed, cache, out)
    metrics = run / "eval" / "metrics.json"
    ecfg = arm_eval_config(cfg, arm)
    ecfg.ceiling = str(ceiling) if ceiling is not None else None
    if not metrics.is_file() or json.loads(metrics.read_text()).get("config") != to_dict(ecfg):
        evaluate(run, cfg=ecfg)
    return run, train_s, float(json.loads(metrics.read_text())["seconds"]["total"])


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    from openlam.eval.report import load_metrics, write_report

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data, cache, data_s = prepare_data(cfg, out)
    runs: dict[str, list[Path]] = {a.name: [] for a in cfg.arms}
    timing: dict[str, list[tuple[float, float]]] = {a.name: [] for a in cfg.arms}
    order = sorted(cfg.arms, key=lambda a: a.name != cfg.ceiling)  # the ceiling first: the others are read against it
    for seed in cfg.seeds:
        ceiling = None
        for arm in order:
            run, tr, ev = _train_and_eval(cfg, arm, seed, cache, out, ceiling if arm.name != cfg.ceiling else None)
            ceiling = run if arm.name == cfg.ceiling else ceiling
            runs[arm.name].append(run)
            timing[arm.name].append((tr, ev))
    all_runs = [r for a in cfg.arms for r in runs[a.name]]
    report = report_dir(cfg)
    write_report(all_runs, report)
    metrics = {a.name: [load_metrics(r) for r in runs[a.name]] for a in cfg.arms}
    wall = time.perf_counter() - t0
    numbers = results_json_path(cfg)
    section = results_section(cfg, metrics, all_runs, data_s, timing, wall)
    from openlam.artifacts import atomic_write_json
    from openlam.bench.report import record_section

    atomic_write_json(numbers, results_numbers(cfg, metrics, runs, data_s, timing, wall))
    record_section(f"experiment: {cfg.name} ({cfg.scale})", section, path=cfg.results)
    return {"out": str(out), "report": str(report / "report.md"), "results": cfg.results, "numbers": str(numbers),
            "wall_s": wall}


def report_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.report) if cfg.report else Path(cfg.out) / "report"


def results_json_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.results).parent / "results" / f"{cfg.name}_{cfg.scale}.json"


def results_numbers(cfg: ExperimentConfig, metrics: dict[str, list[dict[str, Any]]], runs: dict[str, list[Path]],
                    data_s: float, timing: dict[str, list[tuple[float, float]]], wall: float) -> dict[str, Any]:
    """Every number of the results section, per arm and seed, with how it was made: the JSON that
    sits beside docs/results.md (the markdown is for reading, this is for re-analysis)."""
    import datetime as dt

    from openlam.bench.report import command_line, machine
    from openlam.eval.report import key_rows
    from openlam.eval.verdict import readings

    keep = ("value", "ci_low", "ci_high", "per_dim", "per_view")
    arms = {}
    for a in cfg.arms:
        seeds = {}
        for s, m, run, (tr, ev) in zip(cfg.seeds, metrics[a.name], runs[a.name], timing[a.name]):
            rows = {lab: {k: r[k] for k in keep if k in r} for lab, r in key_rows(m).items()}
            seeds[str(s)] = {"run": str(run), "train_s": tr, "eval_s": ev, "numbers": rows,
                             "verdicts": [{k: r[k] for k in ("split", "features", "verdict")} for r in readings(m)]}
        arms[a.name] = {"config": a.config, "overrides": a.overrides, "eval": to_dict(arm_eval_config(cfg, a)), "seeds": seeds}
    return {"experiment": cfg.name, "scale": cfg.scale, "question": cfg.question, "command": command_line(),
            "machine": machine(), "date": dt.date.today().isoformat(), "wall_s": wall, "data_s": data_s,
            "data": {"dir": str(benchmark_dir(cfg)), "generate": data_key(cfg)}, "train": cfg.train,
            "ceiling": cfg.ceiling, "arms": arms}


HEADLINE = ("I(Z;A) held-out bound, tokens", "I(Z;A) held-out bound, continuous", "probe NMSE ridge onehot", "probe NMSE mlp continuous")


def paired_differences(arms: list[str], rows_by_arm: dict[str, list[dict[str, dict[str, Any]]]], seeds: list[int]) -> list[str]:
    """Markdown rows: for each arm after the first and each headline number, the per-seed
    difference to the first arm (same seed = same data, same initialisation seed), its mean with a
    Student t 95% interval over seeds, and how many seeds agree in sign."""
    from scipy.stats import t as student_t

    base = arms[0]
    labels = [lab for lab in rows_by_arm[base][0] if lab.startswith(HEADLINE) and "reference" not in lab
              and lab.endswith(("nats", "(lower better)"))]
    out = [f"| number | difference | {' | '.join(f's{s}' for s in seeds)} | mean [95% t interval over seeds] | seeds > 0 |",
           "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for arm in arms[1:]:
        for lab in labels:
            d = []
            for kb, ka in zip(rows_by_arm[base], rows_by_arm[arm]):
                vb, va = (kb.get(lab) or {}).get("value"), (ka.get(lab) or {}).get("value")
                d.append(None if vb is None or va is None else va - vb)
            vals = np.array([x for x in d if x is not None])
            if len(vals) < 2:
                continue
            half = student_t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
            cells = " | ".join("–" if x is None else f"{x:+.3f}" for x in d)
            out.append(f"| {lab.replace('|', chr(92) + '|')} | {arm} − {base} | {cells} | {vals.mean():+.3f} "
                       f"[{vals.mean() - half:+.3f}, {vals.mean() + half:+.3f}] | {int((vals > 0).sum())}/{len(vals)} |")
    return out


def seen_table(metrics: dict[str, list[dict[str, Any]]], split: str = "test") -> list[str]:
    """Markdown rows: per arm and latent (continuous, one-hot), the ridge probe's NMSE per action
    dim and per camera, averaged over seeds."""
    rows: list[tuple[str, dict[str, float]]] = []
    for arm, ms in metrics.items():
        for feats in ("continuous", "onehot"):
            recs = [r for m in ms for r in m["records"] if r["metric"] == "probe_nmse" and r["split"] == split
                    and r["features"] == feats and r["estimator"] == "ridge" and r.get("per_dim")]
            if recs:
                vals = [{**{f"dim {k}": v for k, v in r["per_dim"].items()}, **{f"camera {k}": v for k, v in r["per_view"].items()}}
                        for r in recs]
                cols = list(dict.fromkeys(c for v in vals for c in v))
                rows.append((f"{arm} {feats}", {c: float(np.nanmean([v.get(c, np.nan) for v in vals])) for c in cols}))
    if not rows:
        return ["(no per-dim records)"]
    cols = list(dict.fromkeys(c for _, r in rows for c in r))
    out = [f"| arm, latent | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    out += [f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c in r else "–" for c in cols) + " |" for name, r in rows]
    return out


def results_section(cfg: ExperimentConfig, metrics: dict[str, list[dict[str, Any]]], all_runs: list[Path], data_s: float,
                    timing: dict[str, list[tuple[float, float]]], wall: float) -> str:
    from openlam.eval.report import comparison_figures, fmt, key_rows

    arms = list(metrics)
    rows_by_arm = {a: [key_rows(m) for m in metrics[a]] for a in arms}
    labels: list[str] = []
    for a in arms:
        for kr in rows_by_arm[a]:
            labels += [k for k in kr if k not in labels]
    lines = [f"| metric | {' | '.join(f'{a} (mean ± sd over {len(metrics[a])} seeds)' for a in arms)} | "
             + " | ".join(f"{a} s{s}" for a in arms for s in cfg.seeds) + " |",
             "|---|" + "---|" * (len(arms) + sum(len(metrics[a]) for a in arms))]
    for lab in labels:
        cells = []
        for a in arms:
            vals = [kr[lab]["value"] for kr in rows_by_arm[a] if lab in kr and isinstance(kr[lab].get("value"), (int, float))]
            cells.append(f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0.0:.3f}" if vals else "–")
        per_seed = [fmt(kr.get(lab)) for a in arms for kr in rows_by_arm[a]]
        lines.append(f"| {lab.replace('|', chr(92) + '|')} | " + " | ".join(cells + per_seed) + " |")
    import os

    fig_dir = Path(cfg.figures) / cfg.name / cfg.scale
    fig_dir.mkdir(parents=True, exist_ok=True)
    rel = Path(os.path.relpath(fig_dir, Path(cfg.results).parent))
    names = [f"{a}-s{s}" for a in arms for s in cfg.seeds]
    figs = comparison_figures([m for a in arms for m in metrics[a]], names, fig_dir, arm_of=[a for a in arms for _ in metrics[a]])
    train_s = {a: [t for t, _ in timing[a]] for a in arms}
    eval_s = [e for a in arms for _, e in timing[a]]
    gen = cfg.generate
    ood = [s for s in metrics[arms[0]][0]["splits"] if s.startswith("ood")]
    from openlam.eval.verdict import readings

    verdicts = []
    for a in arms:
        for s, m in zip(cfg.seeds, metrics[a]):
            rds = readings(m)
            verdicts += [f"- {a} s{s}, {r['features']}: {r['verdict']}" for r in rds if rds and r["split"] == rds[0]["split"]]
    body = [
        f"Question: {cfg.question}" if cfg.question else "",
        "",
        f"Data: Meta-World {', '.join(gen.tasks)}; {gen.episodes} episodes per task, cameras {', '.join(gen.cameras)} at {gen.size} px, "
        f"distractors `{gen.distractors}`, action noise {gen.action_noise}; OOD: {', '.join(ood) or 'none'} "
        f"(held-out cameras: {', '.join(gen.splits.holdout_cameras) or 'none'}). Arms: "
        + "; ".join((f"**{a.name}** = `{a.config}` {' '.join(a.overrides)}".rstrip()
                     + (f" (evaluated with `{' '.join(a.eval)}`)" if a.eval else "")) for a in cfg.arms)
        + f"; common overrides: `{' '.join(cfg.train)}`; seeds {cfg.seeds}.",
        "",
        f"Wall time of this invocation: {wall / 60:.1f} min (data {data_s / 60:.1f} min). Training time per run, from each "
        "run's summary.json: " + ", ".join(f"{a} {np.mean(train_s[a]) / 60:.1f} min" for a in arms)
        + f"; evaluation per run {np.mean(eval_s) / 60:.1f} min. "
        f"Full side-by-side report: `{report_dir(cfg) / 'report.md'}`; every number below, per seed, in "
        f"`{results_json_path(cfg)}`.",
        "",
        "Verdicts on the held-out test split (`openlam report` and the table below have the numbers behind each):",
        "",
        "\n".join(verdicts),
        "",
        f"Paired differences on the headline numbers (each seed's {arms[0]} run and other arm share data and seed; "
        f"with {len(cfg.seeds)} seed(s) the t interval is wide, and a sign shared by every seed is the most a reading should rest on):",
        "",
        "(one arm: nothing to pair)" if len(arms) < 2 else "(one seed: no interval over seeds; compare the per-run intervals below)"
        if len(cfg.seeds) < 2 else "\n".join(paired_differences(arms, rows_by_arm, cfg.seeds)),
        "",
        "What the latent sees: ridge-probe NMSE on the test split per action dim and per camera (mean over seeds; "
        "1 = no better than the mean):",
        "",
        "\n".join(seen_table(metrics)),
        "",
        "All numbers, mean ± sd over seeds and per seed with its 95% interval:",
        "",
        "\n".join(lines),
        "",
    ]
    for title, f in figs:
        body += [f"![{title}]({rel / f})", ""]
    return "\n".join(body)
