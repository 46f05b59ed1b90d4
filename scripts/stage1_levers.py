"""Stage-1 levers on the built-in benchmark: a screening of presets and single changes.

Each lever is one short training run (500 steps, batch 32, seed 0, action over a 0.2 s gap) on the
shared benchmark (generated first by any experiment naming configs/benchmarks/metaworld4.yaml).
The online probe (ridge, fit on train pairs, scored on the validation episodes) and the held-out
reconstruction and code usage in each run's summary.json are the numbers; one seed, so a
screening to choose what to run with seeds, not a comparison. Finished runs are reused.

    .venv/bin/python scripts/stage1_levers.py            # train what is missing, write the section
    .venv/bin/python scripts/stage1_levers.py g_mq u_mq  # train only these (if missing), write the section
    .venv/bin/python scripts/stage1_levers.py --table    # only rewrite the section from existing runs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "lev"
COMMON = ["data.dataset=null", "data.gap.seconds=0.2", "time_limit_s=0", "log_every=50", "preview_every=0",
          "ckpt_every=1000", "probe_every=250", "probe_pairs=1024", "steps=500", "batch_size=32", "seed=0"]
# LAPA's own bottleneck (4 tokens x 8 codes, 16 dims per token): lapa_tiny's and mvp_lam_tiny's before
# this screening moved them to 16 x 16 x 64. Their levers start from it, so each row changes one thing.
PAPER_BOTTLENECK = ["model.quantizer.num_tokens=4", "model.quantizer.codebook_size=8", "model.quantizer.code_dim=16"]
# Genie's and UniVLA's own encoder side (learned-query readout, VQ): genie_tiny's and univla_tiny's before this
# screening; their levers start from it
OWN_READOUT_VQ = ["model.encoder.readout=queries", "model.quantizer.kind=vq"]
LIGHT = "objectives=[{kind: reconstruction, weight: 1.0, options: {views: random}}, {kind: action, weight: 0.05, options: {fraction: 0.05}}]"
CYCLE = ("objectives=[{{kind: reconstruction, weight: 1.0, options: {{views: random}}}}, {{kind: cycle, weight: {w}, options: "
         "{{views: random, buffer_batches: 4, discriminator: {disc}, adversarial_weight: 0.1, adversarial_start: 200}}}}]")
CYCLE_AT = ("objectives=[{{kind: reconstruction, weight: 1.0, options: {{views: random}}}}, {{kind: cycle, weight: {w}, options: "
            "{{views: random, buffer_batches: 4, discriminator: local_global, adversarial_weight: {adv}, adversarial_start: {start}, "
            "start: {start}}}}}]")

# (run name, preset, overrides, what it tests)
LEVERS: list[tuple[str, str, list[str], str]] = [
    ("s_base", "lapa_tiny", [], "LAPA's bottleneck: 4 tokens x 8 codes, 16 dims"),
    ("s_queries", "lapa_tiny", ["model.encoder.readout=queries"], "readout: learned queries instead of e2 - e1"),
    ("s_cd64", "lapa_tiny", ["model.quantizer.code_dim=64"], "continuous latent 64 instead of 16 dims per token"),
    ("s_cd128", "lapa_tiny", ["model.quantizer.code_dim=128"], "continuous latent 128 dims per token"),
    ("s_k8c16cd64", "lapa_tiny", ["model.quantizer.code_dim=64", "model.quantizer.num_tokens=8", "model.quantizer.codebook_size=16"],
     "8 tokens x 16 codes, 64 dims"),
    ("s_k16c16cd64", "lapa_tiny", ["model.quantizer.code_dim=64", "model.quantizer.num_tokens=16", "model.quantizer.codebook_size=16"],
     "16 tokens x 16 codes, 64 dims"),
    ("s_k8c32cd64", "lapa_tiny", ["model.quantizer.code_dim=64", "model.quantizer.num_tokens=8", "model.quantizer.codebook_size=32"],
     "8 tokens x 32 codes, 64 dims"),
    ("s_k8_2k", "lapa_tiny", ["model.quantizer.code_dim=64", "model.quantizer.num_tokens=8", "model.quantizer.codebook_size=16", "steps=2000"],
     "8 tokens x 16 codes, 64 dims, 2,000 steps"),
    ("s_k8cd128_2k", "lapa_tiny", ["model.quantizer.code_dim=128", "model.quantizer.num_tokens=8", "model.quantizer.codebook_size=16", "steps=2000"],
     "8 tokens x 16 codes, 128 dims, 2,000 steps"),
    ("s_gr", "lapa_tiny", ["data.gap.max_seconds=0.4"], "random gap 0.2-0.4 s (multi-step inverse dynamics)"),
    ("s_ls05", "lapa_tiny", [LIGHT], "light supervision: action head on 5% of train episodes, weight 0.05"),
    ("s_mvp", "mvp_lam_tiny", [], "cross-view reconstruction (MVP-LAM)"),
    ("g_base", "genie_tiny", [], "Genie's own choices: learned-query readout, VQ"),
    ("g_cos", "genie_tiny", ["model.quantizer.lookup=cosine"], "cosine lookup"),
    ("g_ent", "genie_tiny", ["model.quantizer.lookup=cosine", "model.quantizer.entropy_weight=0.01"], "cosine + usage entropy 0.01"),
    ("g_ent05", "genie_tiny", ["model.quantizer.lookup=cosine", "model.quantizer.entropy_weight=0.05"], "cosine + usage entropy 0.05"),
    ("g_mq", "genie_tiny", ["model.encoder.readout=motion_queries"], "readout: queries over o_t and e2 - e1"),
    ("g_diff", "genie_tiny", ["model.encoder.readout=difference"], "readout: e2 - e1 pooled (LAPA's) instead of queries"),
    ("g_diff_cos", "genie_tiny", ["model.encoder.readout=difference", "model.quantizer.lookup=cosine"], "e2 - e1 readout + cosine lookup"),
    ("g_std", "genie_tiny", ["model.quantizer.lookup=standardized"], "standardized lookup (z centred and scaled per dim)"),
    ("g_nsvq", "genie_tiny", ["model.quantizer.kind=nsvq"], "NSVQ (LAPA's quantizer) instead of VQ"),
    ("g_warm", "genie_tiny", ["model.quantizer.warmup_steps=200"], "decoder reads continuous z for the first 200 steps"),
    ("g_sg", "genie_tiny", ["model.decoder.stop_grad_context=true"], "stop-gradient on the decoder's o_t context (LAPA's)"),
    ("g_sg_diff", "genie_tiny", ["model.decoder.stop_grad_context=true", "model.encoder.readout=difference"],
     "stop-gradient on the context + e2 - e1 readout"),
    ("g_gap05", "genie_tiny", ["data.gap.seconds=0.5"], "action over a 0.5 s gap instead of 0.2 s"),
    ("g_fsq222", "genie_tiny", ["model.quantizer.kind=fsq", "model.quantizer.fsq_levels=[2,2,2]"], "FSQ, 3 dims x 2 levels (8 codes) instead of VQ"),
    ("g_fsq8", "genie_tiny", ["model.quantizer.kind=fsq", "model.quantizer.fsq_levels=[8]"], "FSQ, 1 dim x 8 levels instead of VQ"),
    ("g_ema", "genie_tiny", ["model.quantizer.kind=ema_vq"], "EMA codebook updates instead of a learned codebook"),
    ("g_xattn", "genie_tiny", ["model.decoder.kind=cross_attn"], "LAPA's cross-attention decoder instead of additive"),
    ("s_k1", "lapa_tiny", ["model.quantizer.num_tokens=1"], "LAPA-style with one token of 8 codes (Genie's bottleneck)"),
    ("g_diff_nsvq", "genie_tiny", ["model.encoder.readout=difference", "model.quantizer.kind=nsvq"], "e2 - e1 readout + NSVQ"),
    ("g_diff_sg_nsvq", "genie_tiny", ["model.encoder.readout=difference", "model.decoder.stop_grad_context=true", "model.quantizer.kind=nsvq"],
     "e2 - e1 readout + stop-gradient on the context + NSVQ (LAPA's encoder side, Genie's additive decoder)"),
    ("g_diff_sg_xattn", "genie_tiny", ["model.encoder.readout=difference", "model.decoder.stop_grad_context=true", "model.decoder.kind=cross_attn"],
     "e2 - e1 readout + stop-gradient + cross-attention decoder (VQ kept)"),
    # the c_ rows start from the CycleMimic preset's model (LAPA-style) and set the objectives themselves
    ("c_base", "cyclemimic_tiny", [CYCLE.format(w=0.1, disc="local_global")],
     "reconstruction + cycle 0.1 from step 0, buffer 4, local-global discriminator (GAN 0.1 from step 200)"),
    ("c_w001", "cyclemimic_tiny", [CYCLE.format(w=0.01, disc="local_global")], "cycle weight 0.01"),
    ("c_ent", "cyclemimic_tiny", [CYCLE.format(w=0.1, disc="local_global"), "model.quantizer.entropy_weight=0.01"],
     "cycle 0.1 + codebook-usage entropy 0.01"),
    ("c_start", "cyclemimic_tiny", [], "cycle 0.1 and GAN 0.1 from step 250, reconstruction alone before (the preset as it ships)"),
    ("c_nodisc", "cyclemimic_tiny", [CYCLE.format(w=0.1, disc="none")], "cycle without a discriminator"),
    # reconstruction MSE on [-1, 1] pixels is about 0.015 here, the cycle's cross-entropy about 2.5 nats and the
    # generator loss 0.7: at weights 0.1 both swamp reconstruction. Weights scaled to it, with and without the start:
    ("c_s_w001", "cyclemimic_tiny", [CYCLE_AT.format(w=0.01, adv=0.01, start=250)], "cycle 0.01 + GAN 0.01 from step 250"),
    ("c_s_w0001", "cyclemimic_tiny", [CYCLE_AT.format(w=0.001, adv=0.01, start=250)], "cycle 0.001 + GAN 0.01 from step 250"),
    ("c_w0001", "cyclemimic_tiny", [CYCLE_AT.format(w=0.001, adv=0.01, start=0)], "cycle 0.001 + GAN 0.01 from step 0"),
    ("u_base", "univla_tiny", [], "UniVLA's own choices: learned-query readout, VQ"),
    ("u_cos", "univla_tiny", ["model.quantizer.lookup=cosine"], "cosine lookup"),
    ("u_ent", "univla_tiny", ["model.quantizer.lookup=cosine", "model.quantizer.entropy_weight=0.01"], "cosine + usage entropy 0.01"),
    ("u_mq", "univla_tiny", ["model.encoder.readout=motion_queries"], "readout: queries over o_t and e2 - e1"),
    ("u_std", "univla_tiny", ["model.quantizer.lookup=standardized"], "standardized lookup (z centred and scaled per dim)"),
    ("u_warm", "univla_tiny", ["model.quantizer.warmup_steps=200"], "decoder reads continuous z for the first 200 steps"),
    ("u_diff", "univla_tiny", ["model.encoder.readout=difference"], "readout: e2 - e1 pooled (LAPA's) instead of queries"),
    ("u_nsvq", "univla_tiny", ["model.quantizer.kind=nsvq"], "NSVQ instead of VQ"),
    ("u_diff_nsvq", "univla_tiny", ["model.encoder.readout=difference", "model.quantizer.kind=nsvq"], "e2 - e1 readout + NSVQ (Genie-tiny's fix)"),
]


def benchmark_cache() -> Path:
    from openlam.experiment import benchmark_dir, load_experiment

    cache = benchmark_dir(load_experiment(ROOT / "configs" / "experiments" / "mvp_vs_lapa.yaml", [])) / "cache"
    if not (cache / "cache.json").is_file():
        sys.exit(f"{cache}: the benchmark is not generated yet; run an experiment that names configs/benchmarks/metaworld4.yaml")
    return cache


def train(name: str, preset: str, overrides: list[str], cache: Path) -> None:
    if (OUT / name / "summary.json").is_file():
        return
    base = PAPER_BOTTLENECK if preset in ("lapa_tiny", "mvp_lam_tiny") else OWN_READOUT_VQ if preset in ("genie_tiny", "univla_tiny") else []
    cmd = [str(ROOT / ".venv" / "bin" / "openlam"), "train", f"configs/{preset}.yaml", f"out={OUT / name}", f"data.cache={cache}",
           *COMMON, *base, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "MUJOCO_GL": "egl"})


def latent_use(run: Path) -> float:
    """Held-out error with another pair's latent over the error with the pair's own, for a run made
    before training measured it: the run's model on the same fixed validation batches as training's
    own held-out evaluation (cached in latent_use.json)."""
    path = run / "latent_use.json"
    if not path.is_file():
        import torch

        from openlam.config import load_config
        from openlam.data.cache import FrameCache
        from openlam.data.pairs import PairDataset
        from openlam.models.lam import LatentActionModel
        from openlam.train.config import TrainConfig
        from openlam.train.evaluate import reconstruction_eval
        from openlam.train.trainer import _fixed_batches

        cfg = load_config(TrainConfig, run / "config.yaml", [])
        cache = FrameCache(Path(json.loads((run / "inputs.json").read_text())["cache"]))
        views = json.loads((run / "inputs.json").read_text())["views"]
        val = PairDataset(cache, cfg.data.val_split, views, cfg.data.gap, seed=cfg.seed + 1)
        model = LatentActionModel.from_pretrained(run / "model").eval()
        e = reconstruction_eval(model, _fixed_batches(val, min(cfg.batch_size, 64), cfg.eval_batches), torch.device("cpu"))
        path.write_text(json.dumps(e))
    e = json.loads(path.read_text())
    return e["shuffled_latent_mse"] / e["recon_mse"]


def token_usage(run: Path) -> tuple[int, int, float]:
    """Codes used per token position (fewest, most) and the lowest per-position perplexity, on the
    same validation pairs for every run (16 batches of 64, every camera); cached in token_usage.json.
    The pooled count can hide positions that each use a few codes of their own."""
    path = run / "token_usage.json"
    if not path.is_file():
        import torch

        from openlam.config import load_config
        from openlam.data.cache import FrameCache
        from openlam.data.pairs import PairDataset
        from openlam.models.lam import LatentActionModel, normalize
        from openlam.train.config import TrainConfig
        from openlam.train.trainer import _fixed_batches

        cfg = load_config(TrainConfig, run / "config.yaml", [])
        inputs = json.loads((run / "inputs.json").read_text())
        val = PairDataset(FrameCache(Path(inputs["cache"])), cfg.data.val_split, inputs["views"], cfg.data.gap, seed=1)
        model = LatentActionModel.from_pretrained(run / "model").eval()
        idx = []
        with torch.no_grad():
            for b in _fixed_batches(val, 64, 16):
                for v in b.views:
                    x = normalize(b.frames[v])
                    idx.append(model.encode(x[:, 0], x[:, 1]).indices)
        codes = torch.cat(idx)
        used, ppl = [], []
        for k in range(codes.shape[1]):
            c = torch.bincount(codes[:, k], minlength=model.quantizer.codebook_size).float()
            p = c[c > 0] / c.sum()
            used.append(int((c > 0).sum()))
            ppl.append(float(torch.exp(-(p * p.log()).sum())))
        path.write_text(json.dumps({"used_per_token": used, "perplexity_per_token": ppl}))
    u = json.loads(path.read_text())
    return min(u["used_per_token"]), max(u["used_per_token"]), min(u["perplexity_per_token"])


def row(name: str, preset: str, overrides: list[str], what: str) -> str:
    s = json.loads((OUT / name / "summary.json").read_text())
    e, p = s["eval"], s.get("probe", {})

    def f(key: str) -> str:
        return f"{p[key]:.3f}" if key in p else "–"

    dims = " / ".join(f"{p[k]:.2f}" for k in sorted(p) if k.startswith("probe/nmse_continuous/"))
    shuffled = f"{e['shuffled_latent_mse'] / e['recon_mse'] if 'shuffled_latent_mse' in e else latent_use(OUT / name):.3f}"
    lo, hi, ppl = token_usage(OUT / name)
    per_token = f"{lo}/{e['codebook_size']}" if lo == hi else f"{lo}-{hi}/{e['codebook_size']}"
    return (f"| {name} | {preset} | {what} | {s['train_time_s']:.0f} | {e['recon_mse'] / e['copy_last_mse']:.3f} | {shuffled} | "
            f"{e['codes_used']}/{e['codebook_size']} | {e['perplexity']:.2f} | {per_token} | {ppl:.2f} | {f('probe/nmse_continuous')} | "
            f"{f('probe/nmse_onehot')} | {dims} |")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    unknown = sorted(set(names) - {lv[0] for lv in LEVERS})
    if unknown:
        sys.exit(f"unknown lever(s) {unknown}; known: {[lv[0] for lv in LEVERS]}")
    if "--table" not in sys.argv:
        cache = benchmark_cache()
        for name, preset, overrides, _ in sorted(LEVERS, key=lambda lv: names.index(lv[0]) if lv[0] in names else len(names)):
            if not names or name in names:
                train(name, preset, overrides, cache)
    have = [lv for lv in LEVERS if (OUT / lv[0] / "summary.json").is_file()]
    lines = [
        "Each row: one run of 500 steps (unless the lever says otherwise), batch 32, seed 0, on the benchmark's train split (cameras corner, corner2, "
        "corner3; action over 0.2 s). recon / copy-last: held-out (validation) reconstruction MSE over copy-last-frame "
        "MSE (< 1 beats copy-last). Other latent / own: the same error when each pair is predicted from its own o_t "
        "but another pair's latent, over the error with its own (about 1: the decoder does without the latent). "
        "Codes: used of the codebook, pooled over token positions, on validation pairs; "
        "perplexity of that pooled usage; per token: codes used at each token position (fewest-most) and the lowest "
        "perplexity of a position, on 1,024 validation pairs of every camera. The lapa_tiny and mvp_lam_tiny rows start from LAPA's own bottleneck (4 "
        "tokens x 8 codes, 16 dims per token; the presets' before this screening) and change what the lever says; "
        "the genie_tiny and univla_tiny rows start from their papers' own encoder side (learned-query readout, VQ; "
        "the presets' before this screening). "
        "Probe: the online ridge probe's NMSE on the validation episodes at the last step "
        "(1 = no better than the mean), from the continuous latent and from the one-hot tokens; per dim for the "
        "continuous latent in the order dx / dy / dz / gripper. One seed: a screening, not a comparison "
        "(differences under about 0.05 are within what a second seed could move). Train time is wall time on 2 cores "
        "and is only comparable between runs that had the machine to themselves.",
        "",
        "| run | preset | lever | train s | recon / copy-last | other latent / own | codes | perplexity | codes per token "
        "| perplexity per token (min) | probe continuous | probe one-hot | continuous per dim |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(*lv) for lv in have],
    ]
    missing = [lv[0] for lv in LEVERS if lv not in have]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    from openlam.bench.report import record_section

    record_section("stage 1 levers on the benchmark (screening)", "\n".join(lines), path=ROOT / "docs" / "results.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
