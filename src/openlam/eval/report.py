"""`openlam report RUN... --out DIR` (report.md + report.html) and `openlam compare RUN...` (terminal
table): evaluated runs side by side, every number with its 95% CI, bar charts with CIs across runs.

Both read only eval/metrics.json (and the eval plots), so a report can be re-made without
re-evaluating. One list of blocks renders to both Markdown and HTML.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from openlam.artifacts import atomic_write_bytes, atomic_write_text
from openlam.errors import OpenLAMError


def load_metrics(path: Path) -> dict[str, Any]:
    for p in (path / "eval" / "metrics.json", path / "metrics.json", path):
        if p.is_file():
            try:
                m = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise OpenLAMError(f"{p}: not valid JSON ({e}); re-run `openlam eval`") from e
            missing = [k for k in ("records", "codebook", "splits", "dataset", "gap", "seconds") if k not in m]
            if missing:
                raise OpenLAMError(f"{p}: missing keys {missing}; expected a metrics.json written by `openlam eval`")
            m["_dir"] = str(p.parent)
            return m
    raise OpenLAMError(f"{path}: no eval/metrics.json or metrics.json; run `openlam eval {path}` first")


def run_names(paths: list[Path]) -> list[str]:
    """Short unique names: the run folder's name, with its parent's when two collide."""
    def base(p: Path) -> Path:
        p = p.resolve()
        return p.parent if p.name == "eval" or p.name == "metrics.json" else p

    names = [base(p).name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{base(p).parent.name}/{base(p).name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def key_rows(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Row label -> record (value, CI) for the numbers a comparison shows, in display order."""
    rows: dict[str, dict[str, Any]] = {}
    for r in m["records"]:
        k, s = r["metric"], r.get("split")
        if k == "mi_bound":
            lab = f"I(Z;A) held-out bound, {r['features']} [{s}] nats"
            rows[lab] = r
            rows[f"{lab}: upper limit H(A binned)"] = {"value": r.get("ceiling")}
            for ref, gain in (r.get("gain_over") or {}).items():
                rows[f"{lab}: gain over reference {ref}"] = gain
            rows[f"{lab}: phase-matched pairings, mean"] = {"value": r.get("phase_null_mean")}
            rows[f"{lab}: phase-matched pairings, p"] = {"value": r.get("phase_p")}
        elif k == "reference_mi_bound":
            rows[f"I(Z;A) held-out bound, reference {r['labeller']} [{s}] nats"] = r
        elif k == "probe_nmse":
            rows[f"probe NMSE {r['estimator']} {r['features']} [{s}] (lower better)"] = r
        elif k == "ceiling_probe_nmse":
            rows[f"probe NMSE {r['estimator']} continuous [{s}], supervised ceiling"] = r
        elif k == "share_of_ceiling":
            rows[f"probe NMSE {r['estimator']} {r['features']} [{s}]: share of the ceiling's explained variance"] = r
        elif k == "reference_probe_nmse":
            rows[f"probe NMSE ridge onehot, reference {r['labeller']} [{s}]"] = r
        elif k == "mi_infonce":
            rows[f"I(Z;A) held-out InfoNCE, tokens, factorised critic [{s}] nats"] = r
        elif k == "mi_insample":
            rows[f"I(Z;A) in-sample {r['estimator']} [{s}] nats (biased, secondary)"] = r
            rows[f"I(Z;A) in-sample {r['estimator']} [{s}]: value on shuffled rows (bias floor)"] = {"value": r.get("null")}
            if "rows_dropped" in r:
                rows[f"I(Z;A) in-sample {r['estimator']} [{s}]: rows dropped (tuple seen once)"] = {"value": r["rows_dropped"]}
        elif k == "viewpoint_probe_accuracy":
            rows[f"viewpoint probe acc {r['features']}"] = r
            rows["viewpoint probe chance (majority camera)"] = {"value": r["chance"]}
        elif k.startswith("crossview_") and r.get("views") == "mean":
            rows[f"cross-view {k[len('crossview_'):].replace('_', ' ')} (mean over view pairs)"] = r
        elif k.startswith("transfer") and r.get("value") is not None:
            rows[k.replace("_", " ")] = r
        elif k == "distractor_probe_nmse":
            rows[f"distractor probe NMSE {r['features']} -> {r['target']} [{s}] (1 = carries none)"] = r
        elif k in ("cka", "cka_shuffled"):
            rows[f"{k.replace('_', ' ')} {r['domain']}s {r['domains']}"] = r
            rows[f"cka {r['domain']}s {r['domains']}: dims stripped"] = {"value": r.get("removed_dims")}
    cb = m["codebook"]
    rows["codebook usage (share of codes used)"] = {"value": cb["usage"]}
    rows["codebook perplexity per token (mean)"] = {"value": sum(cb["perplexity_per_position"]) / len(cb["perplexity_per_position"])}
    rows["distinct token tuples"] = {"value": cb["distinct_tuples"]}
    return rows


def fmt(r: dict[str, Any] | None) -> str:
    if r is None or r.get("value") is None:
        return "–"
    v = r["value"]
    s = f"{v:.3f}" if isinstance(v, float) else str(v)
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        s += f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    return s


def comparison(metrics: list[dict[str, Any]], names: list[str]) -> tuple[list[str], list[list[str]]]:
    per = [key_rows(m) for m in metrics]
    labels: list[str] = []
    for p in per:
        labels += [k for k in p if k not in labels]
    return ["metric"] + names, [[lab] + [fmt(p.get(lab)) for p in per] for lab in labels]


def compare_table(paths: list[Path]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    metrics = [load_metrics(p) for p in paths]
    header, rows = comparison(metrics, run_names(paths))
    t = Table(title="latent action evaluation (value [95% CI])", show_lines=False)
    for h in header:
        t.add_column(h, overflow="fold")
    for r in rows:
        t.add_row(*map(escape, r))
    Console(width=max(120, 40 + 30 * len(paths))).print(t)


def _series(metrics: list[dict[str, Any]], names: list[str], groups: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any] | None]]:
    def find(m: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
        for r in m["records"]:
            if all(r.get(k) == v for k, v in want.items()):
                return r
        return None

    return {n: [find(m, w) for _, w in groups] for n, m in zip(names, metrics)}


def _floor(m: dict[str, Any], split: str) -> float | None:
    """The higher of the random-token and episode-identity bounds on a split (None: not scored)."""
    from openlam.eval.verdict import FLOORS

    vals = [r["value"] for r in m["records"] if r["metric"] == "reference_mi_bound" and r["split"] == split
            and r["labeller"] in FLOORS and r.get("value") is not None]
    return max(vals) if vals else None


def _pooled(series: dict[str, list[Any]], arm_of: list[str]) -> dict[str, list[Any]]:
    """Per-run bars -> one bar per arm: the mean over its seeds, the whiskers spanning the lowest and
    highest seed (references: their mean). Keeps a figure of many seeds readable."""
    names, out = list(series), {}
    for arm in dict.fromkeys(arm_of):
        runs = [series[n] for n, a in zip(names, arm_of) if a == arm]
        cells = []
        for j in range(len(runs[0])):
            vals = [r[j] if not isinstance(r[j], dict) else r[j].get("value") for r in runs]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if not vals:
                cells.append(None)
            elif isinstance(runs[0][j], dict) or any(isinstance(r[j], dict) for r in runs):
                cells.append({"value": sum(vals) / len(vals), "ci_low": min(vals), "ci_high": max(vals)})
            else:
                cells.append(sum(vals) / len(vals))
        out[f"{arm} (n={len(runs)})"] = cells
    return out


def comparison_figures(metrics: list[dict[str, Any]], names: list[str], out: Path, arm_of: list[str] | None = None) -> list[tuple[str, str]]:
    """Bar charts with CIs across runs; dashed markers: floors (MI) and chance levels. With `arm_of`
    (the arm of each run) the bars are per arm: mean over seeds, whiskers from the lowest to the
    highest seed."""
    from openlam.eval import plots

    def bars_with_ci(groups: list[str], series: dict[str, list[Any]], title: str, ylabel: str, path: Path,
                     reference: dict[str, list[Any]] | None = None) -> None:
        if arm_of is not None:
            series = _pooled(series, arm_of)
            reference = _pooled(reference, arm_of) if reference else None
            title += "; per arm: mean over seeds, whiskers lowest to highest seed"
        plots.bars_with_ci(groups, series, title, ylabel, path, reference)

    splits = list(dict.fromkeys(r["split"] for m in metrics for r in m["records"] if r["metric"] == "probe_nmse"))
    figs: list[tuple[str, str]] = []
    g = [(f"{s} {f} {e}", {"metric": "probe_nmse", "split": s, "features": f, "estimator": e})
         for s in splits for f in ("onehot", "continuous") for e in ("ridge", "mlp")]
    bars_with_ci([x for x, _ in g], _series(metrics, names, g), "held-out probe NMSE (1 = no better than the mean)", "NMSE",
                 out / "probe_nmse.png")
    figs.append(("Probe NMSE", "probe_nmse.png"))
    g = [(f"{s} {f}", {"metric": "mi_bound", "split": s, "features": f}) for s in splits for f in ("tokens", "continuous")]
    ser = _series(metrics, names, g)
    # a latent no run has a bound for (eval.bound_features) gets no empty group
    kept = [j for j in range(len(g)) if any(ser[n][j] is not None for n in names)]
    g, ser = [g[j] for j in kept], {n: [v[j] for j in kept] for n, v in ser.items()}
    floors = {n: [_floor(m, w["split"]) for _, w in g] for n, m in zip(names, metrics)}
    bars_with_ci([x for x, _ in g], ser, "held-out bound on I(Z; A), 95% CI (dashed: best floor, random tokens / episode identity)",
                 "nats", out / "mi.png", floors)
    figs.append(("I(Z;A), held-out bound", "mi.png"))
    gains = {n: [((r or {}).get("gain_over") or {}).get("random") for r in recs] for n, recs in ser.items()}
    if any(x is not None for v in gains.values() for x in v):
        bars_with_ci([x for x, _ in g], gains, "gain of the bound over random tokens on the same rows, 95% CI (the verdict's test: above 0)",
                     "nats", out / "mi_gain.png", {n: [0.0] * len(g) for n in names})
        figs.append(("I(Z;A), gain over random tokens", "mi_gain.png"))
    g = [("view probe onehot", {"metric": "viewpoint_probe_accuracy", "features": "onehot"}),
         ("view probe continuous", {"metric": "viewpoint_probe_accuracy", "features": "continuous"}),
         ("cross-view token agreement", {"metric": "crossview_token_agreement", "views": "mean"}),
         ("transfer token recovery", {"metric": "transfer_token_recovery"}),
         ("transfer self recovery", {"metric": "transfer_self_token_recovery"})]
    chance_of = [("", {"metric": "crossview_chance_agreement", "views": "mean"}), ("", {"metric": "transfer_chance_token_recovery"})]
    ser, chance_ser = _series(metrics, names, g), _series(metrics, names, chance_of)
    chance = {n: [(r or {}).get("chance") for r in ser[n][:2]] + [(r or {}).get("value") for r in chance_ser[n]] + [None] for n in names}
    bars_with_ci([x for x, _ in g], ser, "viewpoint, cross-view and transfer (dashed: chance)", "rate", out / "consistency.png", chance)
    figs.append(("Viewpoint probe, cross-view agreement, transfer consistency", "consistency.png"))
    return figs


def write_report(paths: list[Path], out: Path) -> Path:
    metrics = [load_metrics(p) for p in paths]
    names = run_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    from openlam.eval.verdict import verdict_lines

    blocks: list[tuple[str, Any]] = [("h1", "Latent action evaluation report"), ("h2", "Verdict")]
    for n, m in zip(names, metrics):
        blocks += [("h3", f"{n}")] + [("p", line) for line in verdict_lines(m)]
    blocks.append(("p", "Held-out split shown; every split is read in the run's own section below. How to read this: "
                        "the held-out bound is a lower bound on I(Z; A) computed on episodes that neither the LAM's probes "
                        "nor q saw; the floors are what a labeller with no action information scores through the same "
                        "pipeline, and the gain over each is measured on the same rows; the phase-matched permutation test "
                        "asks whether the latent knows this episode's action or only the task and the relative phase of the "
                        "moment. docs/metrics.md has the exact definitions."))
    blocks.append(("h2", "Setup"))
    blocks.append(("p", "Values carry [95% interval] where one is defined: over episodes (leave-one-episode-out jackknife t "
                        "intervals for the bound, probe NMSE, InfoNCE and the viewpoint probe; percentile bootstrap for "
                        "cross-view and transfer rates); over half-sample rounds of token centroids for CKA. In-sample MI "
                        "estimates are secondary: they stand beside their value on shuffled rows (their bias floor) and "
                        "carry no interval. Probes, q and the InfoNCE critic are fit on train episodes and scored on "
                        "held-out ones."))
    header, rows = comparison(metrics, names)
    blocks += [("h2", "Side by side"), ("table", [header] + rows)]
    for title, f in comparison_figures(metrics, names, out):
        blocks += [("h2", title), ("img", f)]
    from openlam.eval.plots import online_probe_curves, online_probe_plot

    curves = online_probe_curves({n: Path(m["run"]) for n, m in zip(names, metrics)})
    if curves:
        ceiling = {n: next((r["value"] for r in m["records"] if r["metric"] == "ceiling_probe_nmse" and r["split"] == "test"
                            and r["estimator"] == "ridge"), None) for n, m in zip(names, metrics)}
        online_probe_plot(curves, out / "online_probe.png", ceiling)
        blocks += [("h2", "Online linear probe during training"), ("img", "online_probe.png")]
    for n, m in zip(names, metrics):
        blocks.append(("h2", f"Run {n}"))
        splits = ", ".join(f"{s}: {v['episodes']} episodes / {v['rows']} pairs" for s, v in m["splits"].items())
        blocks.append(("p", f"Splits — {splits}."))
        blocks += [("p", line) for line in verdict_lines(m, all_splits=True)]
        cb = m["codebook"]
        blocks.append(("p", f"Codes used per token position: {cb['used_codes_per_position']} of {cb['codebook_size']}; "
                            f"dead codes: {cb['dead_codes_per_position']}."))
        src = Path(m["_dir"]) / "plots"
        for f in ("usage.png", "code_examples.png", "embedding.png"):
            if (src / f).is_file():
                dst = Path("runs") / n.replace("/", "_") / f
                (out / dst).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(out / dst, (src / f).read_bytes())
                blocks.append(("img", str(dst)))
    md = out / "report.md"
    atomic_write_text(md, _markdown(blocks))
    atomic_write_text(out / "report.html", _html(blocks))
    return md


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    lines: list[str] = []
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + f" {c}", ""]
        elif kind == "p":
            lines += [c, ""]
        elif kind == "img":
            lines += [f"![{Path(c).stem}]({c})", ""]
        elif kind == "table":
            esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
            lines.append("| " + " | ".join(map(esc, c[0])) + " |")
            lines.append("|" + "---|" * len(c[0]))
            lines += ["| " + " | ".join(map(esc, r)) + " |" for r in c[1:]]
            lines.append("")
    return "\n".join(lines)


def _html(blocks: list[tuple[str, Any]]) -> str:
    e = html.escape
    body: list[str] = []
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(c)}</{kind}>")
        elif kind == "p":
            body.append("<p>" + re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e(c)) + "</p>")
        elif kind == "img":
            body.append(f'<p><img src="{e(c)}" alt="{e(Path(c).stem)}"></p>')
        elif kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in c[0])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in c[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>openlam report</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
