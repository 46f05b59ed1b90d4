"""`openlam <stage> ...`: one subcommand per pipeline stage. Thin: parse, build a typed config, call
the stage function. Trailing KEY=VALUE arguments override config fields (e.g. splits.seed=3)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from openlam.errors import OpenLAMError


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def _flags_to_overrides(pairs: dict[str, Any]) -> list[str]:
    out = []
    for k, v in pairs.items():
        if v is None:
            continue
        if isinstance(v, list):
            v = "[" + ",".join(json.dumps(x) for x in v) + "]"
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out.append(f"{k}={v}")
    return out


def cmd_generate(a: argparse.Namespace) -> int:
    from openlam.config import dump_config, load_config
    from openlam.sim.generate import GenerateConfig, generate

    flags = {
        "tasks": a.tasks, "episodes": a.episodes, "cameras": a.cameras, "size": a.size, "distractors": a.distractors,
        "action_noise": a.action_noise, "workers": a.workers, "seed": a.seed, "max_steps": a.max_steps,
        "only_success": True if a.only_success else None, "masks": False if a.no_masks else None,
    }
    cfg = load_config(GenerateConfig, a.config, _flags_to_overrides(flags) + a.overrides)
    print(dump_config(cfg), file=sys.stderr)
    s = generate(cfg, a.out, overwrite=a.overwrite)
    print(f"wrote {a.out}: {s['episodes']} episodes, {s['steps']} timesteps, success rate {s['success_rate']:.2f}, "
          f"{s['steps_per_s']:.1f} timesteps/s over {s['wall_s']:.1f} s")
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.data.cache import CacheConfig, build_cache
    from openlam.data.source import open_dataset

    cfg = load_config(CacheConfig, None, _flags_to_overrides({"size": a.size, "crop": a.crop, "cameras": a.cameras, "workers": a.workers}) + a.overrides)
    src = open_dataset(a.dataset, fps=a.fps)
    out = build_cache(src, a.out, cfg, overwrite=a.overwrite)
    print(f"wrote cache {out} ({len(src)} episodes, cameras {cfg.cameras or src.cameras}, {cfg.size} px)")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from openlam.data.validate import validate_dataset

    problems = validate_dataset(a.dataset, decode=not a.quick)
    for p in problems:
        print(f"ERROR {p}")
    if a.quick:
        print(f"{a.dataset}: --quick checked the metadata, the files and each video's frame count against its episodes; "
              "it decoded no frames, so unreadable frames, decoded lengths and frame sizes are unchecked (run without --quick)")
    if problems:
        print(f"{a.dataset}: {len(problems)} problem(s)")
        return 1
    print(f"{a.dataset}: OK")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    from openlam.data.summary import to_markdown, write_summary

    s = write_summary(a.dataset, a.out, sheet_episodes=a.episodes)
    print(to_markdown(s))
    print(f"wrote {Path(a.out) / 'summary.md'} and {Path(a.out) / 'contact_sheet.png'}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.train.config import TrainConfig
    from openlam.train.trainer import train

    cfg = load_config(TrainConfig, a.config, a.overrides)
    r = train(cfg, resume=a.resume)
    if "eval" in r:
        e = r["eval"]
        print(f"trained {r['steps']} steps in {r['train_time_s']:.0f} s -> {cfg.out}\n"
              f"held-out ({r['eval_split']}) recon MSE {e['recon_mse']:.5f} vs copy-last-frame {e['copy_last_mse']:.5f} "
              f"(another pair's latent: {e['shuffled_latent_mse']:.5f});\ncodes used {e['codes_used']}/{e['codebook_size']}, perplexity {e['perplexity']:.2f}")
    return 0


def cmd_policy(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.policy.config import PolicyTrainConfig
    from openlam.policy.train import train_policy

    cfg = load_config(PolicyTrainConfig, a.config, a.overrides)
    r = train_policy(cfg, a.cmd, resume=a.resume)
    if "steps" in r:
        print(f"{a.cmd}: trained {r['steps']} steps in {r['train_time_s']:.0f} s -> {cfg.out}/model")
        if "val" in r:
            print("held-out (val): " + ", ".join(f"{k} {v:.4f}" for k, v in r["val"].items() if not k[-1].isdigit()))
    return 0


def cmd_rollout(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.policy.rollout import RolloutConfig, rollout

    cfg = load_config(RolloutConfig, a.config, a.overrides)
    r = rollout(a.policy, a.out, cfg)
    for task, t in r["tasks"].items():
        print(f"{task}: success {t['successes']}/{t['episodes']} = {t['rate']:.2f} (95% CI {t['ci'][0]:.2f}-{t['ci'][1]:.2f})")
    n = sum(v.endswith(".mp4") for v in r["videos"])
    print(f"wrote {a.out}/rollout.json and videos of {n} episodes (mp4 + GIF) in {r['wall_s']:.0f} s")
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.label import LabelConfig, label

    cfg = load_config(LabelConfig, a.config, a.overrides)
    r = label(a.model, a.dataset, a.out, cfg)
    print(f"labelled {r['labelled_pairs_this_run']} pairs in {r['seconds']:.1f} s ({r['pairs_per_s']:.0f} pairs/s) -> {r['out']}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from openlam.config import load_config
    from openlam.eval.suite import EvalConfig, evaluate

    cfg = load_config(EvalConfig, a.config, a.overrides)
    if a.align:
        cfg.align = a.align
    if a.ceiling:
        cfg.ceiling = a.ceiling
    r = evaluate(a.run, a.dataset, a.out, cfg)
    print(f"evaluated {r['codebook']['num_pairs']} labelled pairs in {r['seconds']['total']:.0f} s -> {r['out']}/metrics.json, {r['out']}/plots/")
    from openlam.eval.report import compare_table
    from openlam.eval.verdict import verdict_lines

    compare_table([Path(r["out"])])
    print("\n".join(line.replace("**", "") for line in verdict_lines(r, all_splits=True)))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from openlam.eval.report import write_report

    md = write_report([Path(r) for r in a.runs], Path(a.out))
    print(f"report: {md} and {md.with_suffix('.html')}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from openlam.eval.report import compare_table

    compare_table([Path(r) for r in a.runs])
    return 0


def cmd_experiment(a: argparse.Namespace) -> int:
    from openlam.experiment import load_experiment, run_experiment
    from openlam.policy.experiment import is_policy_experiment, load_policy_experiment, run_policy_experiment

    if is_policy_experiment(a.config):  # stages 1-3 and rollouts: a file with `demos`
        r = run_policy_experiment(load_policy_experiment(a.config, a.overrides))
        print(f"experiment done in {r['wall_s'] / 60:.1f} min: results section in {r['results']}, every number in {r['numbers']}")
        return 0
    r = run_experiment(load_experiment(a.config, a.overrides))
    print(f"experiment done in {r['wall_s'] / 60:.1f} min: results section in {r['results']}, full report {r['report']}")
    return 0


def cmd_audit(a: argparse.Namespace) -> int:
    from openlam.bench.report import record_section
    from openlam.config import apply_overrides, from_dict, to_dict
    from openlam.eval.audit import AuditConfig, run_audit

    cfg = from_dict(AuditConfig, apply_overrides(to_dict(AuditConfig()), a.overrides))
    header = ("# Audit of the evaluation's estimators\n\nGround-truth labellings with a known I(Z; A) "
              "(`openlam.eval.groundtruth`); written by the command shown. docs/metrics.md defines each estimator.\n")
    print(record_section("audit: estimators, intervals and the phase-matched test", run_audit(cfg), path=a.out, header=header))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from openlam.bench.report import record

    if a.what == "train":
        from openlam.bench.train import bench_train
        from openlam.config import load_config
        from openlam.train.config import TrainConfig

        if not a.config:
            raise OpenLAMError("bench train needs a config: openlam bench train configs/bench/lapa_cpu.yaml")
        cfg = load_config(TrainConfig, a.config, a.overrides)
        r = bench_train(cfg, steps=a.steps)
        name = " ".join(["bench train", Path(a.config).stem, *a.overrides])  # a variant gets its own section
        notes = "target: >= 75% of the measured fp32 matmul peak on 2 CPU cores; >= 40% MFU (bf16) on a GPU at LAPA full size"
        print(record(name, r, notes, path=a.out))
        return 0
    if a.what == "label":
        from openlam.bench.label import bench_label

        if not a.config or not a.dataset:
            raise OpenLAMError("bench label needs a model/run folder and --dataset: openlam bench label runs/demo/lapa_tiny --dataset runs/demo/data")
        print(record("bench label", bench_label(a.config, a.dataset), "encoder only, batch 256, from the decoded frame cache", path=a.out))
        return 0
    if a.what == "quality":
        from openlam.bench.quality import bench_quality, to_markdown
        from openlam.bench.report import record_section

        presets = a.presets.split(",")
        rows = bench_quality(presets, a.dataset or "runs/mw/data")
        body = ("Each tiny preset trained within its time budget (time_limit_s in the preset) on 2 CPU cores; "
                "held-out = the dataset's val split (whole episodes never seen in training). MSE in [-1, 1] pixel units "
                "(features: layer-normalised DINOv2-architecture features).\n\n" + to_markdown(rows))
        print(record_section("stage 1: tiny presets vs copy-last-frame", body, path=a.results))
        return 0
    if a.what == "data":
        from openlam.bench.data import bench_data

        r = bench_data(a.dataset, batch_size=a.batch_size, workers=a.workers)
        notes = "target: >= 2,000 pairs/s at 64 px, 2 workers"
    else:
        from openlam.bench.generate import bench_generate

        r = bench_generate(workers=a.workers, episodes=a.episodes)
        notes = "target: >= 40 timesteps/s (3 cameras, 64 px, masks) on 2 cores"
    section = record(f"bench {a.what}", r, notes, path=a.out)
    print(section)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="openlam", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate a dataset from a simulator")
    g.add_argument("sim", choices=["metaworld"])
    g.add_argument("--out", required=True)
    g.add_argument("--config", help="YAML GenerateConfig; flags and KEY=VALUE override it")
    g.add_argument("--tasks", type=_csv)
    g.add_argument("--episodes", type=int, help="episodes per task")
    g.add_argument("--cameras", type=_csv)
    g.add_argument("--size", type=int)
    g.add_argument("--distractors", help="preset: none, jitter, mild, ood_camera, ood_light, ood_texture, ood_objects, ood_shake, ood_all")
    g.add_argument("--action-noise", type=float)
    g.add_argument("--workers", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--only-success", action="store_true")
    g.add_argument("--no-masks", action="store_true")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("cache", help="decode a dataset once into uint8 memmaps")
    c.add_argument("dataset")
    c.add_argument("--out", required=True)
    c.add_argument("--size", type=int)
    c.add_argument("--crop", choices=["center", "stretch"])
    c.add_argument("--cameras", type=_csv)
    c.add_argument("--fps", type=float, help="frame rate for image-sequence folders")
    c.add_argument("--workers", type=int)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_cache)

    v = sub.add_parser("validate", help="report every problem in a dataset")
    v.add_argument("dataset")
    v.add_argument("--quick", action="store_true", help="metadata, files and video frame counts only; decode no frames")
    v.set_defaults(fn=cmd_validate)

    s = sub.add_parser("summary", help="dataset summary (markdown + json) and contact sheet")
    s.add_argument("dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--episodes", type=int, default=3, help="episodes on the contact sheet")
    s.set_defaults(fn=cmd_summary)

    # the commands that train on the engine: a config, --resume, overrides
    for name, what, cfg_help, example, fn in (
        ("train", "train a latent action model (stage 1)", "YAML TrainConfig, e.g. configs/lapa_tiny.yaml", "optim.lr=1e-4 steps=2000", cmd_train),
        ("pretrain", "stage 2: a policy predicts latent tokens (data.labels) or actions (data.cache) from frame + instruction",
         "YAML PolicyTrainConfig, e.g. configs/policy_tiny.yaml", "target=latent data.labels=runs/labels data.cache=null", cmd_policy),
        ("finetune", "stage 3: a policy (init: a pretrained one, or scratch) learns actions from a few demos",
         "YAML PolicyTrainConfig, e.g. configs/policy_tiny.yaml", "init=runs/pre data.episodes_per_task=5", cmd_policy),
    ):
        t = sub.add_parser(name, help=f"{what}; torchrun for DDP")
        t.add_argument("config", help=cfg_help)
        t.add_argument("--resume", action="store_true", help="continue the run in its out folder from the latest checkpoint")
        t.add_argument("overrides", nargs="*", help=f"KEY=VALUE, e.g. {example}")
        t.set_defaults(fn=fn)

    lb = sub.add_parser("label", help="label every (t, t+H) of a dataset with a trained LAM (resumable; torchrun)")
    lb.add_argument("model", help="a run folder (model/ + config.yaml) or a model folder")
    lb.add_argument("dataset")
    lb.add_argument("--out", required=True)
    lb.add_argument("--config", help="YAML LabelConfig")
    lb.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. gap.frames=8 shard_episodes=4")
    lb.set_defaults(fn=cmd_label)

    ro = sub.add_parser("rollout", help="closed-loop Meta-World episodes of a policy: success per task with CIs, videos")
    ro.add_argument("policy", help="a policy run folder (model/) or policy folder")
    ro.add_argument("--out", required=True)
    ro.add_argument("--config", help="YAML RolloutConfig")
    ro.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. episodes=20 tasks=[reach-v3]")
    ro.set_defaults(fn=cmd_rollout)

    ev = sub.add_parser("eval", help="label a dataset with a run's LAM and measure how action-centric its latents are")
    ev.add_argument("run", help="a run folder (model/ + config.yaml) or a model folder")
    ev.add_argument("--dataset", help="default: the run's own frame cache (same splits as training)")
    ev.add_argument("--out", help="default: RUN/eval")
    ev.add_argument("--align", type=_csv, help="more datasets for cross-dataset CKA alignment (comma-separated)")
    ev.add_argument("--ceiling", help="an evaluated supervised-reference run on the same data (configs/supervised_tiny.yaml): "
                    "shows its probe NMSE and the share of it this run recovers")
    ev.add_argument("--config", help="YAML EvalConfig")
    ev.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. n_boot=200 transfer_pairs=0")
    ev.set_defaults(fn=cmd_eval)

    rp = sub.add_parser("report", help="report.md + report.html comparing evaluated runs side by side")
    rp.add_argument("runs", nargs="+", help="run folders (with eval/metrics.json) or eval folders")
    rp.add_argument("--out", required=True)
    rp.set_defaults(fn=cmd_report)

    cp = sub.add_parser("compare", help="print the evaluation metrics of runs as a table")
    cp.add_argument("runs", nargs="+", help="run folders (with eval/metrics.json) or eval folders")
    cp.set_defaults(fn=cmd_compare)

    x = sub.add_parser("experiment", help="data -> train every arm x seed -> eval -> results section, one command (resumable)")
    x.add_argument("config", help="e.g. configs/experiments/mvp_vs_lapa.yaml")
    x.add_argument("overrides", nargs="*", help="KEY=VALUE, e.g. scale=gpu seeds=[0]")
    x.set_defaults(fn=cmd_experiment)

    au = sub.add_parser("audit", help="check every MI estimator, interval and the phase test on ground-truth labellings -> docs/audit.md")
    au.add_argument("--out", default="docs/audit.md")
    au.add_argument("overrides", nargs="*", help="KEY=VALUE on AuditConfig, e.g. reps=100")
    au.set_defaults(fn=cmd_audit)

    b = sub.add_parser("bench", help="throughput benchmarks, written to docs/benchmarks.md")
    b.add_argument("what", choices=["data", "generate", "train", "quality", "label"])
    b.add_argument("config", nargs="?", help="(train) TrainConfig YAML; (label) run or model folder")
    b.add_argument("--steps", type=int, default=10, help="(train) timed steps")
    b.add_argument("--dataset", help="(data) dataset to benchmark on, default synthetic; (quality) default runs/mw/data")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--episodes", type=int, default=8, help="(generate) episodes per task")
    b.add_argument("--out", default="docs/benchmarks.md")
    b.add_argument("--presets", default="configs/lapa_tiny.yaml,configs/genie_tiny.yaml,configs/univla_tiny.yaml", help="(quality)")
    b.add_argument("--results", default="docs/results.md", help="(quality) results file")
    b.add_argument("overrides", nargs="*", help="(train) KEY=VALUE config overrides")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come anywhere after the subcommand
    unknown = [x for x in extra if "=" not in x or x.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"'{args.cmd}' takes no KEY=VALUE overrides: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.fn(args)
    except OpenLAMError as e:
        print(f"openlam {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as e:
        print(f"openlam {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
