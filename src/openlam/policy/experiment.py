"""`openlam experiment configs/experiments/policy_pretraining.yaml`: do latent actions help a policy?

One command, resumable: the benchmark's videos (generated and cached once, shared with the stage-1
experiments), each LAM trained on them (a finished run with the same config is reused: point `lam_out`
at another experiment's runs to share them) and labelling them, a policy pretrained per source
(every LAM's tokens; the real actions as the upper bound), then per number of demos and seed the
same finetuning from each pretrained policy and from scratch (and, as a control, from a policy
pretrained on one LAM's tokens permuted across frames), and closed-loop rollouts from the
same initial states for every row (paired). Writes a results section (success with Wilson
intervals, paired differences to scratch over seeds, held-out numbers, compute per stage), a JSON
of every number and a bar chart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from openlam.config import as_current, from_dict, load_config, to_dict
from openlam.errors import ConfigError
from openlam.experiment import ArmConfig, benchmark_dir, data_key, experiment_data, prepare_data, train_run
from openlam.policy.config import PolicyTrainConfig
from openlam.policy.rollout import RolloutConfig
from openlam.sim.generate import GenerateConfig

SCRATCH, ACTIONS, SHUFFLED = "scratch", "actions", "shuffled:"


@dataclass
class PolicyExperimentConfig:
    name: str = "policy_pretraining"
    question: str = ""
    generate: GenerateConfig = field(default_factory=GenerateConfig)  # or, in the YAML, a benchmark file
    data_root: str = "runs/benchmarks"
    arms: list[ArmConfig] = field(default_factory=list)  # the LAMs whose tokens pretrain a policy
    train: list[str] = field(default_factory=list)  # KEY=VALUE on every LAM's TrainConfig
    lam_out: str | None = None  # where the LAM runs live (another experiment's out shares its runs); None: out
    # the control row 'shuffled:<arm>': pretrained on that arm's labels with the token tuples permuted
    # across rows (same targets, no relation to the frames): what pretraining gives without latent actions
    shuffled: str | None = None
    policy: str = "configs/policy_tiny.yaml"  # the PolicyTrainConfig of every policy run
    policy_overrides: list[str] = field(default_factory=list)  # KEY=VALUE on every policy run
    pretrain: list[str] = field(default_factory=list)  # ... on stage 2 runs only
    finetune: list[str] = field(default_factory=list)  # ... on stage 3 runs only
    demos: list[int] = field(default_factory=lambda: [5, 20])  # finetuning episodes per task
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    out: str = "runs/exp/policy"
    results: str = "docs/results.md"
    figures: str = "docs/figures"
    scale: str = "cpu"
    scales: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names) or {SCRATCH, ACTIONS} & set(names):
            raise ConfigError(f"experiment: LAM arm names must be unique and not '{SCRATCH}' or '{ACTIONS}', got {names}")
        if self.shuffled is not None and self.shuffled not in names:
            raise ConfigError(f"experiment.shuffled: '{self.shuffled}' is not a LAM arm ({names})")
        if not self.seeds or not self.demos or min(self.demos) < 1:
            raise ConfigError("experiment: need seeds and demos (episodes per task, each >= 1)")

    def rows(self) -> list[str]:
        return [SCRATCH, *[f"latent:{a.name}" for a in self.arms], *([f"{SHUFFLED}{self.shuffled}"] if self.shuffled else []), ACTIONS]


def load_policy_experiment(path: str | Path, overrides: list[str]) -> PolicyExperimentConfig:
    data = experiment_data(path, overrides)
    cfg = from_dict(PolicyExperimentConfig, data)
    cfg.validate()
    for stage in ("pretrain", "finetune"):  # every policy config is checked now, not after the data is made
        policy_config(cfg, stage, "x", 0, Path("cache"), None, None, 1)
    return cfg


def is_policy_experiment(path: str | Path) -> bool:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(data, dict) and "demos" in data


def policy_config(cfg: PolicyExperimentConfig, stage: str, row: str, seed: int, cache: Path, labels: Path | None,
                  init: Path | None, demos: int | None, lam_run: Path | None = None) -> PolicyTrainConfig:
    out = Path(cfg.out) / "policies" / (f"pre-{row.replace(':', '-')}-s{seed}" if stage == "pretrain"
                                        else f"ft-{row.replace(':', '-')}-n{demos}-s{seed}")
    data = ([f"data.labels={labels}", "data.cache=null", "target=latent", f"expect_lam={lam_run}"] if labels is not None
            else [f"data.cache={cache}", "data.labels=null", "target=actions"])
    if row.startswith(SHUFFLED) and labels is not None:  # stage 2 of the control row; its finetuning is like every row's
        data.append("data.shuffle_tokens=true")
    extra = [f"init={init}" if init is not None else "init=null",
             f"data.episodes_per_task={demos}" if stage == "finetune" else "data.episodes_per_task=null"]
    p = load_config(PolicyTrainConfig, cfg.policy, [*cfg.policy_overrides, *(cfg.pretrain if stage == "pretrain" else cfg.finetune),
                                                    *data, *extra, f"data.subset_seed={seed}", f"seed={seed}", f"out={out}"])
    p.validate()
    return p


def _policy_run(pcfg: PolicyTrainConfig, stage: str) -> tuple[Path, dict[str, Any]]:
    """Train one policy run unless a finished one made by the same config from the same inputs (by
    content: data, labels, initial policy) is there; resume a killed one. A run whose inputs have
    changed since (a LAM or a pretrained policy made again) is made again."""
    import shutil

    from openlam.artifacts import atomic_write_json
    from openlam.errors import OpenLAMError
    from openlam.policy.train import inputs_fingerprint, train_policy
    from openlam.train import checkpoint

    run = Path(pcfg.out)
    key_path = run / "experiment_run.json"
    key = {"stage": stage, "config": to_dict(pcfg), "inputs": inputs_fingerprint(pcfg)}
    if key_path.is_file():
        old = json.loads(key_path.read_text())
        if old.get("stage") != stage or as_current(PolicyTrainConfig, old.get("config")) != key["config"]:
            raise OpenLAMError(f"{run}: made by another experiment config (see {key_path}); remove it or choose another out")
        if old.get("inputs") != key["inputs"]:
            print(f"experiment: {run} was trained on other inputs ({old.get('inputs')} -> {key['inputs']}); training it again")
            shutil.rmtree(run)
    elif (run / "summary.json").is_file():
        raise OpenLAMError(f"{run}: a finished run without {key_path.name}, so what made it cannot be checked; remove it or choose another out")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(key_path, key)
    if not (run / "summary.json").is_file():
        train_policy(pcfg, stage, resume=checkpoint.latest(run) is not None)  # type: ignore[arg-type]
    return run, json.loads((run / "summary.json").read_text())


def _rollout(cfg: PolicyExperimentConfig, run: Path) -> dict[str, Any]:
    from openlam.policy.rollout import rollout

    out = run / "rollout"
    done = out / "rollout.json"
    if done.is_file() and json.loads(done.read_text())["config"] == to_dict(cfg.rollout):
        return json.loads(done.read_text())
    return rollout(run, out, cfg.rollout)


def _references(cfg: PolicyExperimentConfig, policy_run: Path) -> dict[str, dict[str, Any]]:
    """The scripted expert (ceiling) and random actions (floor) on the rollouts' tasks, initial
    states, camera and image size; once per experiment (they do not depend on the seed)."""
    from openlam.policy.model import Policy
    from openlam.policy.rollout import REFERENCES, check_policy, reference_rollout

    spec = Policy.from_pretrained(policy_run).spec
    tasks = check_policy(Policy.from_pretrained(policy_run), cfg.rollout)
    camera = cfg.rollout.camera or spec.views[0]
    refs = {}
    for kind in REFERENCES:
        out = Path(cfg.out) / "references" / kind
        done = out / "rollout.json"
        old = json.loads(done.read_text()) if done.is_file() else {}
        if (old.get("config"), old.get("camera"), old.get("size"), sorted(old.get("tasks", {}))) == (
                to_dict(cfg.rollout), camera, spec.model.image_size, sorted(tasks)):
            refs[kind] = old
        else:
            refs[kind] = reference_rollout(kind, tasks, camera, spec.model.image_size, out, cfg.rollout)
    return refs


def _labels(run: Path, cache: Path, out: Path, views: list[str] | None) -> Path:
    """`openlam label` of the cache by the LAM in `run` (resumed when killed); a labelling by another
    LAM (the run made again since) or of other views is replaced."""
    import shutil

    from openlam.artifacts import fingerprint_files
    from openlam.label import LabelConfig, label

    meta = out / "labels.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("model_fingerprint") != fingerprint_files([run / "model" / "model.safetensors"]) or (views and m.get("views") != views):
            print(f"experiment: {out} was labelled by another LAM or for other views; labelling again")
            shutil.rmtree(out)
    if not (meta.is_file() and json.loads(meta.read_text()).get("complete")):
        label(run, cache, out, LabelConfig(views=views))
    return out


def run_policy_experiment(cfg: PolicyExperimentConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _, cache, data_s = prepare_data(cfg, out)
    views = load_config(PolicyTrainConfig, cfg.policy, cfg.policy_overrides).data.views
    lam_root = Path(cfg.lam_out or cfg.out)
    records: list[dict[str, Any]] = []
    lam_s: dict[str, list[float]] = {a.name: [] for a in cfg.arms}
    for seed in cfg.seeds:
        pre: dict[str, tuple[Path, dict[str, Any]]] = {}
        for arm in cfg.arms:
            lam, train_s = train_run(cfg, arm, seed, cache, lam_root)
            lam_s[arm.name].append(train_s)
            labels = _labels(lam, cache, out / "labels" / f"{arm.name}-s{seed}", views)
            for row in [f"latent:{arm.name}", *([f"{SHUFFLED}{arm.name}"] if arm.name == cfg.shuffled else [])]:
                pre[row] = _policy_run(policy_config(cfg, "pretrain", row, seed, cache, labels, None, None, lam), "pretrain")
        pre[ACTIONS] = _policy_run(policy_config(cfg, "pretrain", ACTIONS, seed, cache, None, None, None), "pretrain")
        for n in cfg.demos:
            for row in cfg.rows():
                init = pre[row][0] if row in pre else None
                run, summary = _policy_run(policy_config(cfg, "finetune", row, seed, cache, None, init, n), "finetune")
                ro = _rollout(cfg, run)
                records.append({"row": row, "demos": n, "seed": seed, "run": str(run), "finetune": summary,
                                "pretrain": pre[row][1] if row in pre else None, "rollout": ro})
    refs = _references(cfg, Path(records[0]["run"]))
    wall = time.perf_counter() - t0
    numbers = {"experiment": cfg.name, "scale": cfg.scale, "question": cfg.question, "wall_s": wall, "data_s": data_s,
               "data": {"dir": str(benchmark_dir(cfg)), "generate": data_key(cfg)}, "config": to_dict(cfg),
               "lam_train_s": lam_s, "references": refs, "runs": records}
    from openlam.artifacts import atomic_write_json
    from openlam.bench.report import command_line, machine, record_section

    numbers |= {"command": command_line(), "machine": machine()}
    path = Path(cfg.results).parent / "results" / f"{cfg.name}_{cfg.scale}.json"
    atomic_write_json(path, numbers)
    record_section(f"experiment: {cfg.name} ({cfg.scale})", results_section(cfg, records, refs, lam_s, data_s, wall, path),
                   path=cfg.results)
    return {"out": str(out), "results": cfg.results, "numbers": str(path), "wall_s": wall}


def _rate(r: dict[str, Any]) -> float:
    return float(r["rollout"]["overall"]["rate"])


def paired_vs_scratch(cfg: PolicyExperimentConfig, records: list[dict[str, Any]], demos: int) -> list[str]:
    """Per row, the per-seed difference in overall success to scratch (same seed, demos and rollout
    starts), its mean with a Student t 95% interval over seeds, and how many seeds are above 0."""
    from scipy.stats import t as student_t

    by = {(r["row"], r["seed"]): _rate(r) for r in records if r["demos"] == demos}
    out = [f"| row | {' | '.join(f's{s}' for s in cfg.seeds)} | mean [95% t interval] | seeds > 0 |",
           "|---|" + "---|" * len(cfg.seeds) + "---|---|"]
    for row in cfg.rows()[1:]:
        d = np.array([by[(row, s)] - by[(SCRATCH, s)] for s in cfg.seeds])
        half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        out.append(f"| {row} − scratch | " + " | ".join(f"{x:+.2f}" for x in d)
                   + f" | {d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] | {int((d > 0).sum())}/{len(d)} |")
    return out


def results_section(cfg: PolicyExperimentConfig, records: list[dict[str, Any]], refs: dict[str, dict[str, Any]],
                    lam_s: dict[str, list[float]], data_s: float, wall: float, numbers: Path) -> str:
    import os

    from openlam.policy.plots import success_figure

    gen = cfg.generate
    tasks = sorted(records[0]["rollout"]["tasks"]) if records else []
    fig_dir = Path(cfg.figures) / cfg.name / cfg.scale
    fig = success_figure(cfg.rows(), cfg.demos, cfg.seeds, records, fig_dir / "success.png")
    rel = Path(os.path.relpath(fig, Path(cfg.results).parent))
    eps = cfg.rollout.episodes
    body = [
        f"Question: {cfg.question}" if cfg.question else "", "",
        f"Data: Meta-World {', '.join(gen.tasks)}; {gen.episodes} episodes per task (pretraining: every train-split episode, "
        f"as video for the latent rows), cameras {', '.join(gen.cameras)} at {gen.size} px, action noise {gen.action_noise}. "
        f"LAMs: " + "; ".join(f"**{a.name}** = `{a.config}` {' '.join(a.overrides)}".rstrip() for a in cfg.arms)
        + f" (common: `{' '.join(cfg.train)}`). Policy: `{cfg.policy}` {' '.join(cfg.policy_overrides)}; stage 2 `{' '.join(cfg.pretrain)}`; "
        f"stage 3 `{' '.join(cfg.finetune)}` on {', '.join(map(str, cfg.demos))} demos per task (the first of each task's "
        f"train episodes in a seeded nested order). Rollouts: {eps} episodes per task, at most {cfg.rollout.max_steps} steps, "
        f"camera {cfg.rollout.camera or 'the policy’s first'}, the same initial states for every row (seed {cfg.rollout.seed}). "
        f"Seeds {cfg.seeds}: seed s trains LAM s, its labels, each pretrained policy and each finetuning."
        + (f" Control row {SHUFFLED}{cfg.shuffled}: stage 2 on {cfg.shuffled}'s labels with the token tuples permuted across "
           "rows (the same targets, unrelated to the frames), so its gain over scratch is what pretraining gives without "
           "latent actions." if cfg.shuffled else ""), "",
        f"Wall time of this invocation: {wall / 60:.1f} min (data {data_s / 60:.1f} min). Every number, per run, in `{numbers}`.", "",
    ]
    for n in cfg.demos:
        recs = [r for r in records if r["demos"] == n]
        body += [f"**{n} demos per task.** Overall success (Wilson 95% interval over the {eps * len(tasks)} rollouts of a run); "
                 "per task: mean over seeds:", "",
                 f"| row | {' | '.join(f's{s}' for s in cfg.seeds)} | mean ± sd over seeds | "
                 + " | ".join(tasks) + " | held-out action NMSE (mean) |",
                 "|---|" + "---|" * (len(cfg.seeds) + 1 + len(tasks) + 1)]
        for row in cfg.rows():
            rs = sorted((r for r in recs if r["row"] == row), key=lambda r: r["seed"])
            if not rs:
                continue
            cells = [f"{_rate(r):.2f} [{r['rollout']['overall']['ci'][0]:.2f}, {r['rollout']['overall']['ci'][1]:.2f}]" for r in rs]
            rates = np.array([_rate(r) for r in rs])
            per_task = [np.mean([r["rollout"]["tasks"][t]["rate"] for r in rs]) for t in tasks]
            nmse = np.mean([r["finetune"].get("val", {}).get("action_nmse", np.nan) for r in rs])
            body.append(f"| {row} | " + " | ".join(cells) + f" | {rates.mean():.2f} ± {rates.std(ddof=1) if len(rates) > 1 else 0:.2f} | "
                        + " | ".join(f"{x:.2f}" for x in per_task) + f" | {nmse:.3f} |")
        for kind, what in (("expert", "ceiling: the scripted expert"), ("random", "floor: uniform random actions")):
            o = refs[kind]["overall"]
            body.append(f"| {what} | " + " | ".join(["same starts"] * len(cfg.seeds))
                        + f" | {o['rate']:.2f} [{o['ci'][0]:.2f}, {o['ci'][1]:.2f}] | "
                        + " | ".join(f"{refs[kind]['tasks'][t]['rate']:.2f}" for t in tasks) + " | – |")
        body += ["", "Paired differences in overall success to scratch (same seed, demos and rollout starts):", "",
                 *(paired_vs_scratch(cfg, recs, n) if len(cfg.seeds) > 1 else ["(one seed: nothing to pair over seeds)"]), ""]
    body += ["Stage 2, held-out (val split): token accuracy of the latent-pretrained policies against the held-out "
             "majority token, and action NMSE of the action-pretrained one (mean over seeds):", ""]
    for row in cfg.rows()[1:]:
        pres = [r["pretrain"] for r in records if r["row"] == row and r["demos"] == cfg.demos[0] and r["pretrain"]]
        vals = [p.get("val", {}) for p in pres]
        if row == ACTIONS:
            body.append(f"- {row}: action NMSE {np.mean([v.get('action_nmse', np.nan) for v in vals]):.3f}")
        else:
            body.append(f"- {row}: token accuracy {np.mean([v.get('token_acc', np.nan) for v in vals]):.3f} "
                        f"(majority {np.mean([v.get('token_acc_majority', np.nan) for v in vals]):.3f})")
    tr = lambda rs, k: np.mean([r[k]["train_time_s"] for r in rs if r.get(k)]) / 60  # noqa: E731
    body += ["", "Compute (train time, mean per run): LAM " + ", ".join(f"{a} {np.mean(s) / 60:.1f} min" for a, s in lam_s.items() if s)
             + "; stage 2 " + ", ".join(f"{row} {tr([r for r in records if r['row'] == row], 'pretrain'):.1f} min" for row in cfg.rows()[1:])
             + "; stage 3 " + ", ".join(f"{n} demos {tr([r for r in records if r['demos'] == n], 'finetune'):.1f} min" for n in cfg.demos)
             + f"; rollouts {np.mean([r['rollout']['wall_s'] for r in records]) / 60:.1f} min per run.", "",
             f"![Success per row]({rel})", ""]
    return "\n".join(body)
