"""Figures of one evaluation (written by `openlam eval`) and bar charts with CIs across runs (used by
`openlam report`). matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from openlam.artifacts import atomic_write_bytes
from openlam.data.cache import FrameCache
from openlam.eval.table import EvalTable


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def usage_plot(codebook: dict[str, Any], path: Path) -> None:
    """Per token position: how often each code is used (all labelled pairs), and per view."""
    plt = _plt()
    c = np.asarray(codebook["counts"])
    K, C = c.shape
    views = sorted(codebook["per_view"])
    fig, axes = plt.subplots(2, K, figsize=(2.6 * K, 5), squeeze=False)
    for k in range(K):
        ax = axes[0, k]
        ax.bar(np.arange(C), c[k] / max(1, c[k].sum()), color="tab:blue")
        ax.set_title(f"token {k}: {int((c[k] > 0).sum())}/{C} used, ppl {codebook['perplexity_per_position'][k]:.1f}", fontsize=8)
        ax.set_xlabel("code", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        h = np.array([np.asarray(codebook["per_view"][v])[k] for v in views], dtype=np.float64)
        h = h / np.maximum(h.sum(1, keepdims=True), 1)
        ax = axes[1, k]
        ax.imshow(h, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(views)), views, fontsize=7)
        ax.set_xlabel("code (share per view)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("share of pairs", fontsize=8)
    fig.suptitle(f"codebook usage ({codebook['num_pairs']} pairs, {codebook['distinct_tuples']} distinct token tuples)", fontsize=9)
    _save(fig, path)


def code_examples(table: EvalTable, cache: FrameCache, path: Path, codes: int = 8, per_code: int = 6, seed: int = 0,
                  position: int | None = None) -> None:
    """For each of the most frequent token tuples (or, with `position`, the most frequent codes at
    that token position), frame pairs (o_t | o_t+H, side by side) that receive it, drawn from as
    many different episodes and views as there are."""
    keys = table.tokens if position is None else table.tokens[:, [position]]
    uniq, inv, cnt = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.argsort(-cnt)[:codes]
    rng = np.random.default_rng(seed)
    S = cache.size
    label_w, pad, sep = 150, 2, 14  # pad inside a pair, sep between examples
    cell = 2 * S + pad
    img = Image.new("RGB", (label_w + per_code * (cell + sep), len(order) * (S + sep) + sep), "white")
    draw = ImageDraw.Draw(img)
    starts = cache.starts
    for row, u in enumerate(order):
        rows = rng.permutation(np.nonzero(inv == u)[0])
        picked, seen = [], set()
        for r in rows:  # one per (episode, view) first, then fill
            key = (table.episode[r], table.view[r])
            if key not in seen:
                seen.add(key)
                picked.append(r)
            if len(picked) == per_code:
                break
        picked += [r for r in rows if r not in picked][: per_code - len(picked)]
        y = sep + row * (S + sep)
        draw.text((4, y + 2), f"tokens {uniq[u].tolist()}" if position is None else f"token {position} = {int(uniq[u][0])}", fill="black")
        draw.text((4, y + 16), f"{cnt[u]} pairs", fill="gray")
        for j, r in enumerate(picked):
            g0 = starts[table.episode[r]] + table.frame[r]
            fr = cache.frames(str(table.view[r]))
            x = label_w + j * (cell + sep)
            img.paste(Image.fromarray(np.asarray(fr[g0])), (x, y))
            img.paste(Image.fromarray(np.asarray(fr[g0 + table.gap[r]])), (x + S + pad, y))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def bars_with_ci(groups: list[str], series: dict[str, list[dict[str, Any] | None]], title: str, ylabel: str, path: Path,
                 reference: dict[str, list[float | None]] | None = None) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per series (e.g. a run), each a
    record with value / ci_low / ci_high (None: missing). `reference`: a dashed marker per group
    and series (chance levels)."""
    plt = _plt()
    names = list(series)
    w = 0.8 / max(1, len(names))
    # a quarter inch per bar, within what a page shows
    fig, ax = plt.subplots(figsize=(min(16.0, max(4.0, 2 + 0.25 * len(groups) * max(1, len(names)))), 3.6))
    x = np.arange(len(groups))
    for i, n in enumerate(names):
        recs = series[n]
        vals = np.array([r["value"] if r and r.get("value") is not None else np.nan for r in recs], dtype=np.float64)
        lo = np.array([r.get("ci_low", np.nan) if r else np.nan for r in recs], dtype=np.float64)
        hi = np.array([r.get("ci_high", np.nan) if r else np.nan for r in recs], dtype=np.float64)
        err = np.stack([np.nan_to_num(vals - lo), np.nan_to_num(hi - vals)])
        ax.bar(x + (i - (len(names) - 1) / 2) * w, vals, w, yerr=np.clip(err, 0, None), capsize=3, label=n)
        if reference and n in reference:
            for j, ref in enumerate(reference[n]):
                if ref is not None:
                    xc = x[j] + (i - (len(names) - 1) / 2) * w
                    ax.plot([xc - w / 2, xc + w / 2], [ref, ref], "k--", lw=1)
    ax.set_xticks(x, groups, fontsize=8, rotation=20, ha="right")
    ax.set_ylabel(ylabel, fontsize=9)
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    if len(names) > 1 or reference:
        ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def embedding_map(table: EvalTable, path: Path, max_rows: int = 5000, seed: int = 0) -> None:
    """The continuous latent of every labelled pair (up to max_rows, drawn at random) on its first
    two principal components, coloured by token tuple (the 8 most frequent; grey: the rest) and by
    camera (by episode when there is one camera): clusters by camera or episode rather than by
    code are what an action-centric latent should not show."""
    from sklearn.decomposition import PCA

    plt = _plt()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(table))[:max_rows]
    z = table.z[rows].astype(np.float64)
    # a one-dimensional latent (e.g. fsq with one level list) is drawn against a random jitter
    xy = PCA(n_components=2, random_state=seed).fit_transform(z) if z.shape[1] >= 2 else np.c_[z[:, 0], rng.uniform(-1, 1, len(z))]
    uniq, inv, cnt = np.unique(table.tokens[rows], axis=0, return_inverse=True, return_counts=True)
    top = np.argsort(-cnt)[:8]
    views = table.view[rows]
    by, by_name = (views, "camera") if len(set(views.tolist())) > 1 else (table.episode[rows], "episode")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    rest = ~np.isin(inv.reshape(-1), top)
    axes[0].scatter(xy[rest, 0], xy[rest, 1], s=3, c="lightgrey", label="other tuples")
    for i, u in enumerate(top):
        m = inv.reshape(-1) == u
        axes[0].scatter(xy[m, 0], xy[m, 1], s=4, color=f"C{i}", label=f"{uniq[u].tolist()[:6]}{'...' if uniq.shape[1] > 6 else ''}")
    axes[0].set_title("coloured by token tuple (8 most frequent)", fontsize=9)
    axes[0].legend(fontsize=6, markerscale=3, loc="best")
    groups = list(dict.fromkeys(by.tolist()))
    for i, g in enumerate(groups[:20]):
        m = by == g
        axes[1].scatter(xy[m, 0], xy[m, 1], s=4, color=f"C{i % 10}", label=str(g))
    axes[1].set_title(f"coloured by {by_name}" + (" (first 20)" if len(groups) > 20 else ""), fontsize=9)
    axes[1].legend(fontsize=6, markerscale=3, loc="best")
    for ax in axes:
        ax.set_xlabel("PC 1", fontsize=8)
        ax.set_ylabel("PC 2", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"continuous latent, first two principal components ({len(rows)} of {len(table)} pairs)", fontsize=10)
    _save(fig, path)


def eval_plots(result: dict[str, Any], table: EvalTable, cache: FrameCache, out: Path, example_codes: int, seed: int) -> list[Path]:
    """Usage, example pairs per frequent tuple and per code at each token position (the first 16
    positions), and the embedding map: none of them needs actions."""
    out.mkdir(parents=True, exist_ok=True)
    usage_plot(result["codebook"], out / "usage.png")
    code_examples(table, cache, out / "code_examples.png", codes=example_codes, seed=seed)
    paths = [out / "usage.png", out / "code_examples.png"]
    for k in range(min(16, table.tokens.shape[1])):
        code_examples(table, cache, out / f"token_{k}_examples.png", codes=example_codes, seed=seed, position=k)
        paths.append(out / f"token_{k}_examples.png")
    if len(table) >= 3:
        embedding_map(table, out / "embedding.png", seed=seed)
        paths.append(out / "embedding.png")
    return paths


def online_probe_curves(runs: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Online-probe rows (step, probe/...) from each run's metrics.jsonl; runs without them are left out."""
    import json

    curves = {}
    for name, run in runs.items():
        path = run / "metrics.jsonl"
        if path.is_file():
            rows = [r for r in map(json.loads, path.read_text().splitlines()) if "probe/nmse_continuous" in r]
            if rows:
                curves[name] = rows
    return curves


def online_probe_plot(curves: dict[str, list[dict[str, Any]]], path: Path, ceiling: dict[str, float] | None = None) -> None:
    """Validation NMSE of the online linear probe against training step, per run: continuous latent
    (solid) and one-hot tokens (dashed); dotted: each run's held-out supervised ceiling, if known."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, rows) in enumerate(curves.items()):
        c = f"C{i % 10}"
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["probe/nmse_continuous"] for r in rows], "-o", color=c, ms=3, label=f"{name} continuous")
        ax.plot(steps, [r["probe/nmse_onehot"] for r in rows], "--s", color=c, ms=3, label=f"{name} one-hot")
        if ceiling and ceiling.get(name) is not None:
            ax.axhline(ceiling[name], color=c, ls=":", lw=1, label=f"{name} supervised ceiling (test)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("NMSE on validation episodes (1 = the mean)")
    ax.set_title("online linear probe (ridge, refit at each point)")
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
