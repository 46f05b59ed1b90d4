"""The plain-words reading of one evaluation, which reports lead with: for the tokens and for the
continuous embedding, the held-out bound and probe NMSE with their intervals beside the floors
(random tokens, an episode-identity labeller) and the task + phase / time references, the bound's
gain over each on the same rows, the phase-matched test's p-value, and a one-line verdict whose
wording never claims more than those controls allow. Reads metrics.json records only, so old
evaluations can be re-read."""

from __future__ import annotations

from typing import Any

from openlam.eval.report import fmt

ALPHA = 0.05
FLOORS = ("random", "episode_id")  # labellers with no action information (plots dash the higher of their bounds)
LABELLER_NAMES = {"random": "random tokens", "episode_id": "episode identity", "task_phase": "task + relative phase",
                  "task_time": "task + elapsed time"}


def find(records: list[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    for r in records:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def _num(r: dict[str, Any] | None, key: str = "value") -> float | None:
    return None if r is None or r.get(key) is None else float(r[key])


def judge(bound: dict[str, Any] | None) -> str:
    """One verdict from the bound's gain over random tokens (same rows: the entropy term cancels;
    random tokens leave q with the train marginal of the action) and the phase-matched test.
    Without reference labellers, the bound's own interval against 0. The episode-identity floor is
    reported beside it, not tested against: its q is confidently wrong on new episodes, so its
    bound is far below 0 with a wide interval, and a gain over it says nothing more."""
    if bound is None or bound.get("value") is None:
        return "not measured"
    gain = (bound.get("gain_over") or {}).get("random")
    low = (gain or bound).get("ci_low")
    if low is None:
        return f"undetermined: {bound.get('n_episodes', 0)} held-out episode(s) give no interval"
    if low <= 0:
        what = "the bound's gain over random tokens" if gain else "the bound"
        return f"no action information detectable on held-out episodes: the interval of {what} reaches 0"
    p = bound.get("phase_p")
    if p is None:
        why = bound.get("phase_note", "not run")
        return f"predicts the action on held-out episodes; whether beyond task and relative phase is untested ({why})"
    if p >= ALPHA:
        return (f"predicts the action on held-out episodes, but not detectably beyond task and relative phase (phase-matched "
                f"test p = {p:.3f} over {bound.get('phase_rows')} rows; with few held-out episodes this test has little power)")
    return f"carries information about the action beyond task and relative phase (phase-matched test p = {p:.3f})"


def readings(m: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (split, features): the numbers the verdict rests on, and the verdict."""
    recs = m["records"]
    splits = list(dict.fromkeys(r["split"] for r in recs if r["metric"] == "mi_bound"))
    out = []
    for s in splits:
        for feats, probe in (("tokens", ("onehot", "ridge")), ("continuous", ("continuous", "mlp"))):
            bound = find(recs, metric="mi_bound", split=s, features=feats)
            nm = find(recs, metric="probe_nmse", split=s, features=probe[0], estimator=probe[1]) or \
                find(recs, metric="probe_nmse", split=s, features=probe[0], estimator="ridge")
            ref_b = {n: find(recs, metric="reference_mi_bound", split=s, labeller=n) for n in LABELLER_NAMES}
            ref_n = {n: find(recs, metric="reference_probe_nmse", split=s, labeller=n) for n in LABELLER_NAMES}
            share = (find(recs, metric="share_of_ceiling", split=s, features=probe[0], estimator=nm["estimator"])
                     or find(recs, metric="share_of_ceiling", split=s, features=probe[0], estimator="ridge")) if nm else None
            out.append({"split": s, "features": feats, "bound": bound, "nmse": nm, "ref_bound": ref_b, "ref_nmse": ref_n,
                        "ceiling": share, "verdict": judge(bound)})
    return out


def sentences(rd: dict[str, Any]) -> str:
    b, n = rd["bound"], rd["nmse"]
    what = "Tokens" if rd["features"] == "tokens" else "Continuous embedding"
    if b is None:
        return f"{what} [{rd['split']}]: not measured."
    refs_b = ", ".join(f"{LABELLER_NAMES[k]} {_num(v):.3f}" for k, v in rd["ref_bound"].items() if _num(v) is not None)
    refs_n = ", ".join(f"{LABELLER_NAMES[k]} {_num(v):.3f}" for k, v in rd["ref_nmse"].items() if _num(v) is not None)
    probe = {"ridge": "Ridge probe", "mlp": "MLP probe"}.get(n["estimator"], "Probe") if n else "Probe"
    gains = ", ".join(f"{LABELLER_NAMES[k]} {fmt(v)}" for k, v in (b.get("gain_over") or {}).items())
    s = (f"{what} [{rd['split']}, {b.get('n_episodes')} held-out episodes]: held-out lower bound on I(Z; A) {fmt(b)} nats "
         f"(q {b['estimator'][3:]}; at most H(A binned) = {b.get('ceiling', float('nan')):.2f})"
         + (f"; the same bound for reference labellers: {refs_b}" if refs_b else "")
         + (f"; gain over each on the same rows: {gains}" if gains else "") + ". "
         f"{probe} NMSE {fmt(n)}" + (f" (reference labellers, one-hot ridge: {refs_n})" if refs_n else "")
         + "; 1 = the held-out mean. ")
    c = rd.get("ceiling")
    if c is not None:
        s += f"Supervised ceiling (same encoder and data, trained on the true actions): {c['estimator']} probe NMSE {c['ceiling_nmse']:.3f}; "
        s += (f"this latent recovers {100 * c['value']:.0f}% of its explained variance. " if c.get("value") is not None
              else "the reference itself does no better than the mean, so no share is defined. ")
    if b.get("phase_p") is not None:
        how = f"all {b['phase_draws']}" if b.get("phase_exact") else f"{b['phase_draws']} of {b['phase_pairings']:.3g}"
        s += (f"Phase-matched pairings with unseen episodes of the same task ({how}): bound {b['phase_real']:.3f} on real pairs vs "
              f"{b['phase_null_mean']:.3f} mean, {b['phase_null_q95']:.3f} 95th percentile, p = {b['phase_p']:.3f}. ")
    elif b.get("phase_note"):
        s += f"Phase-matched permutation test: {b['phase_note']}. "
    return s + f"**Verdict: {rd['verdict']}.**"


def verdict_lines(m: dict[str, Any], all_splits: bool = False) -> list[str]:
    """Sentences for the first held-out split (test), or every split."""
    if m.get("needs_actions"):
        got = sorted({r["metric"] for r in m["records"] if r.get("value") is not None})
        return [f"No actions in {m.get('dataset')}: what needs none is measured ({', '.join(got) or 'codebook usage only'}; "
                "codebook usage, example pairs per token and per tuple, and the embedding map in plots/). Not measured, "
                f"as each needs the action: {', '.join(m['needs_actions'])}."]
    rds = readings(m)
    if not all_splits and rds:
        rds = [r for r in rds if r["split"] == rds[0]["split"]]
    return [sentences(r) for r in rds]
