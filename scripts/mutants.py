"""Mutation check of the evaluation's tests: would they catch a plausible bug?

Each mutant is a plausible bug written as exact text replacements in one source file. For each,
the script copies src/ to a scratch folder, applies the replacements (each must match exactly
once, so a mutant never silently tests nothing), runs the named test files against the copy
(PYTHONPATH puts it before the installed package) and records which tests failed. A mutant no
test fails is a hole in the tests.

    .venv/bin/python scripts/mutants.py            # all, markdown table on stdout
    .venv/bin/python scripts/mutants.py mm_dropped knn_no_std
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = "src/openlam/eval/"

# (name, plausible bug, file, [(old, new), ...], test files)
MUTANTS: list[tuple[str, str, str, list[tuple[str, str]], list[str]]] = [
    ("mm_dropped", "Miller-Madow term dropped", "mi.py",
     [("+ (len(counts) - 1) / (2 * n))", ")")], ["test_mi.py"]),
    ("mm_doubled", "Miller-Madow term doubled", "mi.py",
     [("+ (len(counts) - 1) / (2 * n))", "+ (len(counts) - 1) / n)")], ["test_mi.py"]),
    ("plugin_joint_collision", "joint symbol of (Z, A) built arithmetically, colliding", "mi.py",
     [("joint = symbols(np.stack([zs, asym], 1))", "joint = zs * asym.max() + asym")], ["test_mi.py"]),
    ("knn_no_std", "kNN: A not standardised", "mi.py",
     [("    a = standardizer(a)(a)\n", "")], ["test_mi.py"]),
    ("bins_no_std", "k-means bins (plug-in and bound): A not standardised", "mi.py",
     [("        scale = standardizer(a)\n", "        scale = lambda v: np.asarray(v, np.float64)  # noqa: E731\n")], ["test_mi.py", "test_bound.py"]),
    ("knn_zero_not_nan", "kNN returns 0.0 instead of undefined with too few rows", "mi.py",
     [('return KnnEstimate(float("nan"), n, dropped)', "return KnnEstimate(0.0, n, dropped)")], ["test_mi.py"]),
    ("knn_keeps_singletons", "kNN keeps tuples seen once", "mi.py",
     [("keep = counts[zs] > 1", "keep = counts[zs] > 0")], ["test_mi.py"]),
    ("jackknife_rows", "interval: rows as the unit instead of episodes", "intervals.py",
     [("uniq, inv = np.unique(episodes, return_inverse=True)\n    inv = inv.reshape(-1)\n    G = len(uniq)",
       "uniq, inv = np.unique(np.arange(len(episodes)), return_inverse=True)\n    inv = inv.reshape(-1)\n    G = len(uniq)")],
     ["test_intervals.py", "test_bound.py"]),
    ("bootstrap_rows", "bootstrap resamples rows instead of episodes", "intervals.py",
     [("[fn(np.concatenate([rows_of[i] for i in rng.integers(0, len(uniq), len(uniq))])) for _ in range(n_boot)]",
       "[fn(rng.integers(0, len(episodes), len(episodes))) for _ in range(n_boot)]")], ["test_intervals.py"]),
    ("z_not_t", "1.96 instead of Student's t with G-1 degrees of freedom", "intervals.py",
     [("q = float(student_t.ppf(1 - (1 - level) / 2, G - 1))", "q = 1.96")], ["test_intervals.py"]),
    ("jackknife_no_inflation", "jackknife SE without the (G-1)/G inflation (plain SD of leave-one-out values)", "intervals.py",
     [("se = float(np.sqrt((G - 1) / G * ((loo - loo.mean()) ** 2).sum()))", "se = float(np.sqrt(((loo - loo.mean()) ** 2).sum() / (G - 1)))")],
     ["test_intervals.py"]),
    ("nmse_pooled_var", "NMSE with the variance pooled over dims", "probes.py",
     [("return float((((pred - target) ** 2).mean(0)[varies] / var[varies]).mean())",
       "return float(((pred - target) ** 2).mean() / target.var())")], ["test_probes.py"]),
    ("nmse_constant_dims", "NMSE divides a constant dim by 1 (all-constant targets read as a perfect 0)", "probes.py",
     [("    varies = var > 1e-12\n    if not varies.any():\n        return float(\"nan\")\n", "    var = np.where(var > 1e-12, var, 1.0)\n    varies = var > 0\n")],  # noqa: E501
     ["test_probes.py"]),
    ("ridge_test_stats", "ridge standardised with the scored rows' statistics", "probes.py",
     [("return self.scale(x) @ self.w + self.b", "return standardizer(x)(x) @ self.w + self.b")], ["test_probes.py"]),
    ("mlp_test_stats", "MLP standardised with the scored rows' statistics", "mlp.py",
     [("out = net(torch.as_tensor(scale(xn), dtype=torch.float32))", "out = net(torch.as_tensor(standardizer(xn)(xn), dtype=torch.float32))")],
     ["test_probes.py"]),
    ("cv_row_folds", "CV folds by row", "probes.py",
     [("f = episode_folds(groups, folds)", "f = np.arange(len(groups)) % folds")], ["test_probes.py"]),
    ("cv_scored_on_train", "CV scored on its training folds", "probes.py",
     [(".predict(x[f == k]), y[f == k])", ".predict(x[f != k]), y[f != k])")], ["test_probes.py"]),
    ("probe_fit_on_heldout", "probe fit on the held-out split", "information.py",
     [("ridge = ridges[fname] = fit_ridge_cv(x[train], y[train], g[train])", "ridge = ridges[fname] = fit_ridge_cv(x[held], y[held], g[held])")],
     ["test_eval.py::test_nothing_is_fit_on_held_out_episodes"]),
    ("probe_ci_rows", "probe NMSE interval over rows", "information.py",
     [("**nmse_estimate(pred[r], y[r], g[r]).to_dict()})\n    return recs, ridges", "**nmse_estimate(pred[r], y[r], r).to_dict()})\n    return recs, ridges")],
     ["test_eval.py::test_oracle_labeller_is_action_centric_and_random_is_not"]),
    ("q_fit_on_heldout", "q fit on the held-out split", "information.py",
     [("labellings[features] = fit_q(x[train], bins[train], g[train],", "held = table.rows(splits[0])\n        labellings[features] = fit_q(x[held], bins[held], g[held],")],  # noqa: E501
     ["test_eval.py::test_nothing_is_fit_on_held_out_episodes", "test_bound.py"]),
    ("q_tuple_memoriser", "q over whole token tuples (one parameter per tuple) instead of factorised", "information.py",
     [('return one_hot_tokens(table.tokens if tokens is None else tokens, table.codebook_size), "linear", False',
       'tok = table.tokens if tokens is None else tokens\n        sym = np.unique(tok, axis=0, return_inverse=True)[1].reshape(-1)\n'
       '        return np.eye(sym.max() + 1)[sym], "linear", False')], ["test_bound.py"]),
    ("bound_entropy_rows", "bound: entropy over rows (views counted as extra targets)", "bound.py",
     [("return entropy_mm(np.bincount(bins[first])) + float(per_target.mean())", "return entropy_mm(np.bincount(bins)) + float(per_target.mean())")],
     ["test_bound.py"]),
    ("bound_ce_rows", "bound: cross-entropy over rows while the entropy is over targets (uneven views)", "bound.py",
     [("return entropy_mm(np.bincount(bins[first])) + float(per_target.mean())", "return entropy_mm(np.bincount(bins[first])) + float(lq.mean())")],
     ["test_bound.py"]),
    ("bound_ci_rows", "bound interval over rows", "information.py",
     [("est, extra = bound_estimate(lq[name], bins[r], keys[r], g[r])", "est, extra = bound_estimate(lq[name], bins[r], keys[r], r)")],
     ["test_eval.py::test_oracle_labeller_is_action_centric_and_random_is_not"]),
    ("pool_includes_train", "phase pairings may use q's training episodes", "information.py",
     [("pool = np.setdiff1d(np.unique(table.episode), np.unique(table.episode[table.splits[\"train\"]]))", "pool = np.unique(table.episode)")],
     ["test_bound.py"]),
    ("partner_any_task", "phase pairings across tasks", "controls.py",
     [("pl = sorted(all_task[t] & (set(int(x) for x in pool) | set(mine)))", "pl = sorted(set(int(x) for x in pool) | set(mine))")], ["test_bound.py"]),
    ("partner_absolute_frame", "phase pairings match the absolute frame, not the phase", "controls.py",
     [("tp = np.rint(t_u * (length[p] - 1) / np.maximum(T - 1, 1)).astype(np.int64)", "tp = np.minimum(t_u, length[p] - 1)")], ["test_bound.py"]),
    ("p_without_plus_one", "sampled p-value without the +1 (can be 0)", "information.py",
     [("p = hits / len(null) if pr.exact else (1 + hits) / (1 + len(null))", "p = hits / len(null)")], ["test_bound.py"]),
    ("ties_to_the_latent", "ties between real and paired scores decided by rounding", "information.py",
     [("hits = int((null >= real - 1e-9).sum())", "hits = int((null > real).sum())")], ["test_bound.py"]),
    ("too_few_pairings", "a p-value from fewer than 20 distinct pairings", "information.py",
     [("if pr.distinct < MIN_PAIRINGS:", "if pr.distinct < 1:")], ["test_bound.py"]),
    ("random_not_permuted", "random reference labeller is the LAM itself", "controls.py",
     [('"random": tokens[rng.permutation(N)]', '"random": tokens')], ["test_bound.py"]),
    ("insample_pooled_views", "in-sample estimators pool the views (each target counted once per camera)", "information.py",
     [("value, views = per_view(est, zr, target, vr)", "value, views = per_view(est, zr, target, np.zeros(len(vr), np.int64))")],
     ["test_eval.py::test_oracle_labeller_is_action_centric_and_random_is_not"]),
    ("critic_tuple_interaction", "InfoNCE critic multiplies position embeddings (tuple interactions)", "infonce.py",
     [("return self.emb(z + self.offs).sum(1) @ self.g(a).t()", "return self.emb(z + self.offs).prod(1) @ self.g(a).t()")], ["test_infonce.py"]),
    ("critic_mixed_views", "InfoNCE batches mix views", "infonce.py",
     [("rows = rng.permutation(np.nonzero(np.asarray(view) == v)[0])", "rows = rng.permutation(len(view)) if v == sorted(set(np.asarray(view).tolist()))[0] else np.zeros(0, np.int64)")],  # noqa: E501
     ["test_infonce.py"]),
    ("critic_fit_on_heldout", "InfoNCE critic fit on the held-out split", "information.py",
     [("critic = InfoNCECritic(z[train], a[train], g[train], view[train],", "critic = InfoNCECritic(z[table.rows(splits[0])], a[table.rows(splits[0])], g[table.rows(splits[0])], view[table.rows(splits[0])],")],  # noqa: E501
     ["test_eval.py::test_nothing_is_fit_on_held_out_episodes"]),
    ("verdict_ignores_floors", "verdict rests on the bound's own interval, not its gain over random tokens", "verdict.py",
     [('low = (gain or bound).get("ci_low")', 'low = bound.get("ci_low")')], ["test_bound.py"]),
    ("verdict_ignores_phase", "verdict ignores the phase test", "verdict.py",
     [("if p >= ALPHA:", "if p > 1.0:")], ["test_bound.py"]),
]


def run(name: str, about: str, file: str, edits: list[tuple[str, str]], tests: list[str]) -> tuple[bool, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src)
        path = src / "openlam" / "eval" / file
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise SystemExit(f"mutant {name}: {EVAL}{file} has {text.count(old)} matches of {old!r}; update the mutant")
            text = text.replace(old, new)
        path.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(src), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *[f"tests/{t}" for t in tests]]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^FAILED (\S+?)(?: - |$)", out.stdout, re.M)))
        errors = re.findall(r"^ERROR (\S+)", out.stdout, re.M)
        return out.returncode != 0, failed + [f"ERROR {e}" for e in errors]


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m[0] in names]
    print("| mutant | plausible bug | caught by |\n|---|---|---|")
    missed = 0
    for name, about, file, edits, tests in chosen:
        caught, failed = run(name, about, file, edits, tests)
        missed += not caught
        shown = ", ".join(f.split("::", 1)[-1] for f in failed[:3]) + (f" (+{len(failed) - 3})" if len(failed) > 3 else "")
        print(f"| {name} | {about} | {shown if caught else '**NOT CAUGHT**'} |", flush=True)
    print(f"\n{len(chosen) - missed} of {len(chosen)} mutants caught")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
