"""MVP-LAM cross-viewpoint reconstruction: the loss is exactly self-view + the cross-view grid, view
sampling and partner subsets are deterministic per batch, it works with every LAM component, it
composes with other objectives, and training with it learns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
import torch.nn.functional as F

from openlam.config import from_dict
from openlam.data.pairs import PairBatch
from openlam.errors import ConfigError
from openlam.models.lam import LatentActionModel, normalize
from openlam.objectives.base import ObjectiveConfig, build_objective
from openlam.train.config import TrainConfig
from openlam.train.trainer import train
from test_models import tiny
from test_train import cfg_dict, losses, squares  # noqa: F401  (fixture)


def batch(V: int, B: int = 3, S: int = 32, seed: int = 0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    views = [f"cam{v}" for v in range(V)]
    frames = {v: torch.randint(0, 256, (B, 2, 3, S, S), dtype=torch.uint8, generator=g) for v in views}
    return PairBatch(frames=frames, masks={}, action=None, language=[""] * B, episode=torch.arange(B), t=torch.arange(B) * 2,
                     gap=torch.full((B,), 2), views=views, key=seed)


def fitted_model() -> LatentActionModel:
    """A tiny model trained briefly on moving squares, so its predictions depend on the latent (a
    fresh one maps random frames to nearly the same code and its decoder barely reads z)."""
    from openlam.data.synthetic import moving_squares

    torch.manual_seed(0)
    model = LatentActionModel(tiny(quantizer={"kind": "fsq", "fsq_levels": [5, 5, 5]}))
    eps = moving_squares(episodes=4, length=12, size=32, views=1, seed=3)
    x = torch.stack([torch.from_numpy(np.stack([e.frames["view0"][t], e.frames["view0"][t + 2]])) for e in eps for t in range(10)])
    x = normalize(x.permute(0, 1, 4, 2, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(x)
        loss = F.mse_loss(out.pred, out.target) + out.quant.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def square_batch(seed: int = 0) -> PairBatch:
    """Two synchronized 'views' (the second mirrored) of moving squares, as uint8 pairs."""
    from openlam.data.synthetic import moving_squares

    eps = moving_squares(episodes=3, length=6, size=32, views=2, seed=seed)
    frames = {f"cam{v}": torch.stack([torch.from_numpy(np.stack([e.frames[f"view{v}"][1], e.frames[f"view{v}"][3]])) for e in eps])
              .permute(0, 1, 4, 2, 3).contiguous() for v in range(2)}
    return PairBatch(frames=frames, masks={}, action=None, language=[""] * 3, episode=torch.arange(3), t=torch.ones(3, dtype=torch.long),
                     gap=torch.full((3,), 2), views=["cam0", "cam1"], key=seed)


def objective(**options):
    return build_objective([ObjectiveConfig(kind="cross_view", options=options)])


def test_loss_is_self_view_plus_the_full_cross_view_grid():
    torch.manual_seed(0)
    model = LatentActionModel(tiny(predict_residual=False)).eval()
    b = batch(3)
    loss, logs = objective(self_weight=1.0, cross_weight=0.5)(model, b)
    enc = [model.encode_pair(normalize(b.frames[v])) for v in b.views]
    mse = lambda v, z: F.mse_loss(model.predict(enc[v], z), enc[v].space[:, 1])  # noqa: E731
    self_l = np.mean([mse(v, enc[v].quant.z_q).item() for v in range(3)])
    cross_l = np.mean([mse(v, enc[u].quant.z_q).item() for v in range(3) for u in range(3) if u != v])
    qloss = np.mean([e.quant.loss.item() for e in enc])
    assert loss.item() == pytest.approx(self_l + 0.5 * cross_l + qloss, rel=1e-4)
    assert logs["mvp/self_error"].item() == pytest.approx(self_l, rel=1e-4)
    assert logs["mvp/cross_error"].item() == pytest.approx(cross_l, rel=1e-4)
    for v in range(3):  # per-view losses and code usage are logged
        assert logs[f"mvp/self_error/cam{v}"].item() == pytest.approx(mse(v, enc[v].quant.z_q).item(), rel=1e-4)
        cross_v = np.mean([mse(v, enc[u].quant.z_q).item() for u in range(3) if u != v])
        assert logs[f"mvp/cross_error/cam{v}"].item() == pytest.approx(cross_v, rel=1e-4)
        counts = torch.bincount(enc[v].quant.indices.flatten(), minlength=8).float()
        assert torch.equal(logs[f"mvp/cam{v}/code_counts"].float(), counts)


def test_cross_view_term_uses_the_other_views_latent():
    """Change only view 1's pair: view 0's self error stays, its cross error (made with z^1) moves."""
    model = fitted_model()
    b, b2 = square_batch(0), square_batch(1)
    b2.frames["cam0"] = b.frames["cam0"]
    _, logs = objective()(model, b)
    _, logs2 = objective()(model, b2)
    assert logs2["mvp/self_error/cam0"].item() == pytest.approx(logs["mvp/self_error/cam0"].item(), rel=1e-6)
    assert abs(logs2["mvp/cross_error/cam0"].item() - logs["mvp/cross_error/cam0"].item()) > 2e-4 * logs["mvp/cross_error/cam0"].item()


def test_view_sampling_and_partner_subsets_are_deterministic_per_batch():
    torch.manual_seed(0)
    model = LatentActionModel(tiny()).eval()
    b = batch(4)
    obj = objective(views_per_step=2, partners=1)
    l1, logs = obj(model, b)
    l2, _ = obj(model, b)
    assert l1.item() == l2.item()
    used = [v for v in b.views if logs[f"mvp/{v}/code_counts"].sum() > 0]
    assert len(used) == 2 and all(f"mvp/{v}/code_counts" in logs for v in b.views)
    draws = set()
    for key in range(12):  # other batches draw other view subsets
        b.key = key
        _, lg = obj(model, b)
        draws.add(tuple(v for v in b.views if lg[f"mvp/{v}/code_counts"].sum() > 0))
    assert len(draws) >= 3
    assert not any(k.startswith("mvp/self_error/") for k in logs)  # no per-view mean when views are subsampled
    with pytest.raises(ConfigError, match="needs >= 2 synchronized views"):
        obj(model, batch(1))
    with pytest.raises(ConfigError, match="views_per_step"):
        objective(views_per_step=1)


def test_works_with_every_encoder_quantizer_decoder_and_target():
    b = batch(2, B=2)
    combos = [({"encoder": {"readout": r}, "quantizer": {"kind": q, "fsq_levels": [2, 2, 2]}, "decoder": {"kind": d}})
              for r in ("difference", "queries") for q in ("vq", "ema_vq", "nsvq", "fsq") for d in ("cross_attn", "in_context", "additive")]
    combos.append({"target": "features", "encoder": {"kind": "backbone", "readout": "queries", "backbone_image_size": 32,
                                                      "backbone_config": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                          "intermediate_size": 48, "patch_size": 8}}})
    for kw in combos:
        torch.manual_seed(0)
        model = LatentActionModel(tiny(**kw))
        loss, _ = objective()(model, b)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters() if p.requires_grad), kw


def test_training_with_cross_view_learns_and_composes(squares, tmp_path):  # noqa: F811
    d = cfg_dict(squares, tmp_path / "run", steps=60, objectives=[
        {"kind": "cross_view", "weight": 1.0, "options": {"cross_weight": 1.0}},
        {"kind": "reconstruction", "weight": 0.5, "options": {"views": "first"}}])
    d["model"]["quantizer"]["kind"] = "nsvq"
    train(from_dict(TrainConfig, d))
    ls = losses(tmp_path / "run")
    assert np.mean([ls[s] for s in range(51, 61)]) < 0.6 * np.mean([ls[s] for s in range(1, 11)])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"mvp/self_error", "mvp/cross_error", "mvp/self_error/view0", "mvp/cross_error/view1", "recon/error"} <= keys


def test_presets_and_the_experiment_config_load_at_both_scales():
    from pathlib import Path

    from openlam.config import load_config
    from openlam.experiment import load_experiment

    root = Path(__file__).resolve().parents[1]
    from openlam.policy.config import PolicyTrainConfig

    for p in sorted((root / "configs").glob("*.yaml")) + sorted((root / "configs" / "bench").glob("*.yaml")):
        load_config(PolicyTrainConfig if p.name.startswith("policy") else TrainConfig, p).validate()
    exp = root / "configs" / "experiments" / "mvp_vs_lapa.yaml"
    cpu, gpu = load_experiment(exp, []), load_experiment(exp, ["scale=gpu"])
    assert [a.name for a in cpu.arms] == ["lapa", "mvp", "lapa_light", "supervised"] and len(cpu.seeds) >= 3
    assert cpu.ceiling == "supervised" and cpu.generate.episodes == 40  # the shared benchmark file
    assert cpu.generate.splits.holdout_cameras == ["topview"] and cpu.generate.ood_distractors == ["ood_light"]
    assert gpu.out != cpu.out and gpu.generate.size == 128 and "model.image_size=128" in gpu.train
    from openlam.experiment import _train_config

    steps = {a.name: _train_config(gpu, a, 0, Path("c"), Path("o")).steps for a in gpu.arms}
    assert set(steps) == {"lapa", "mvp", "lapa_light", "supervised"} and set(steps.values()) == {30000}
    with pytest.raises(ConfigError, match="scale 'tpu'"):
        load_experiment(exp, ["scale=tpu"])
    with pytest.raises(ConfigError):  # an arm's bad override is caught before any data is generated
        load_experiment(exp, ["arms=[{name: x, config: configs/lapa_tiny.yaml, overrides: [model.nope=1]}]", "ceiling=null"])
    with pytest.raises(ConfigError):  # so is an arm's bad eval override
        load_experiment(exp, ["arms=[{name: x, config: configs/lapa_tiny.yaml, eval: [nope=1]}]", "ceiling=null"])
    light = load_experiment(exp, ["arms=[{name: x, config: configs/lapa_tiny.yaml, eval: [infonce_steps=0]}]", "ceiling=null"])
    from openlam.experiment import arm_eval_config

    assert arm_eval_config(light, light.arms[0]).infonce_steps == 0 and light.eval.infonce_steps > 0
    with pytest.raises(ConfigError, match="ceiling 'sup' is not an arm"):
        load_experiment(exp, ["ceiling=sup"])
    from openlam.policy.experiment import is_policy_experiment, load_policy_experiment

    for other in sorted((root / "configs" / "experiments").glob("*.yaml")):
        scales = [[]] + [[f"scale={k}"] for k in (yaml.safe_load(other.read_text()).get("scales") or {})]
        for scale in scales:  # every experiment file loads at each of its scales
            (load_policy_experiment if is_policy_experiment(other) else load_experiment)(other, scale)


def test_seen_table_averages_per_dim_and_per_camera_over_seeds():
    from openlam.experiment import seen_table

    def run(dx: float, cam: float) -> dict:
        rec = {"metric": "probe_nmse", "split": "test", "features": "continuous", "estimator": "ridge", "value": 0.5,
               "per_dim": {"dx": dx, "dy": 0.2}, "per_view": {"corner": cam, "topview": 0.9}}
        return {"records": [rec, {**rec, "estimator": "mlp", "per_dim": {"dx": 9.0, "dy": 9.0}}, {**rec, "split": "ood_camera"}]}

    rows = seen_table({"sup": [run(0.4, 0.1), run(0.6, 0.3)], "empty": []})
    assert rows[0] == "| arm, latent | dim dx | dim dy | camera corner | camera topview |"
    assert rows[2] == "| sup continuous | 0.500 | 0.200 | 0.200 | 0.900 |" and len(rows) == 3


def test_experiment_reads_every_arm_against_its_seeds_ceiling_run(tmp_path, monkeypatch):
    import openlam.eval.report as report
    import openlam.experiment as ex

    calls = []

    def fake_run(cfg, arm, seed, cache, out, ceiling=None):
        calls.append((arm.name, seed, ceiling.name if ceiling else None))
        return tmp_path / f"{arm.name}-s{seed}", 1.0, 1.0

    monkeypatch.setattr(ex, "prepare_data", lambda cfg, out: (tmp_path, tmp_path, 0.0))
    monkeypatch.setattr(ex, "_train_and_eval", fake_run)
    monkeypatch.setattr(ex, "results_section", lambda *a, **k: "")
    monkeypatch.setattr(report, "write_report", lambda runs, out: None)

    def metrics(run):
        probe = {"metric": "probe_nmse", "split": "test", "features": "continuous", "estimator": "ridge",
                 "value": 0.1 if run.name.startswith("sup") else 0.5, "ci_low": 0.0, "ci_high": 1.0, "per_dim": {"dx": 0.3}, "extra": 1}
        return {"records": [probe], "codebook": {"usage": 1.0, "perplexity_per_position": [2.0, 4.0], "distinct_tuples": 9}}

    monkeypatch.setattr(report, "load_metrics", metrics)
    cfg = ex.ExperimentConfig(arms=[ex.ArmConfig("lapa"), ex.ArmConfig("sup")], seeds=[0, 1], ceiling="sup",
                              out=str(tmp_path / "x"), results=str(tmp_path / "results.md"))
    out = ex.run_experiment(cfg)
    assert calls == [("sup", 0, None), ("lapa", 0, "sup-s0"), ("sup", 1, None), ("lapa", 1, "sup-s1")]
    numbers = json.loads(Path(out["numbers"]).read_text())  # every number per arm and seed, beside the results
    assert Path(out["numbers"]) == tmp_path / "results" / "experiment_cpu.json"
    row = "probe NMSE ridge continuous [test] (lower better)"
    assert numbers["arms"]["sup"]["seeds"]["1"]["numbers"][row] == {"value": 0.1, "ci_low": 0.0, "ci_high": 1.0, "per_dim": {"dx": 0.3}}
    assert numbers["arms"]["lapa"]["seeds"]["0"]["numbers"][row]["value"] == 0.5
    assert numbers["arms"]["lapa"]["seeds"]["0"]["numbers"]["codebook perplexity per token (mean)"] == {"value": 3.0}
    assert numbers["ceiling"] == "sup" and numbers["arms"]["lapa"]["seeds"]["1"]["run"].endswith("lapa-s1")


def test_experiments_share_one_generated_benchmark(tmp_path, monkeypatch):
    import openlam.data.cache as cache_mod
    import openlam.sim.generate as gen_mod
    from openlam.experiment import benchmark_dir, load_experiment, prepare_data

    made = []

    def fake_generate(cfg, out, overwrite=False):
        made.append(cfg.episodes)
        (out / "meta").mkdir(parents=True, exist_ok=True)
        (out / "meta" / "info.json").write_text("{}")

    def fake_cache(data, cache, cfg, overwrite=False):
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "cache.json").write_text("{}")

    monkeypatch.setattr(gen_mod, "generate", fake_generate)
    monkeypatch.setattr(cache_mod, "build_cache", fake_cache)
    bench = tmp_path / "bench.yaml"
    bench.write_text("tasks: [reach-v3]\nepisodes: 3\ncameras: [corner]\nworkers: 1\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"arms: [{{name: a}}]\nseeds: [0]\ngenerate: {bench}\ndata_root: {tmp_path / 'root'}\n")
    a = load_experiment(exp, [f"out={tmp_path / 'a'}"])
    b = load_experiment(exp, [f"out={tmp_path / 'b'}", "generate.workers=8"])  # workers do not change the data
    c = load_experiment(exp, [f"out={tmp_path / 'a'}", "generate.episodes=4"])
    bench4 = tmp_path / "bench4.yaml"
    bench4.write_text(bench.read_text().replace("episodes: 3", "episodes: 4"))
    assert benchmark_dir(load_experiment(exp, [f"generate={bench4}"])) == benchmark_dir(c)  # a file named on the command line
    assert a.generate.episodes == 3 and benchmark_dir(a) == benchmark_dir(b) != benchmark_dir(c)
    data_a, cache_a, _ = prepare_data(a, tmp_path / "a")
    (tmp_path / "a" / "runs" / "old").mkdir(parents=True)
    data_b, cache_b, _ = prepare_data(b, tmp_path / "b")
    assert made == [3] and (data_a, cache_a) == (data_b, cache_b) and cache_a.parent == benchmark_dir(a)
    prepare_data(a, tmp_path / "a")
    assert (tmp_path / "a" / "runs" / "old").exists()  # same data: the experiment's runs are kept
    prepare_data(c, tmp_path / "a")
    assert made == [3, 4] and not (tmp_path / "a" / "runs").exists()  # other data: its old runs go
    with pytest.raises(ConfigError, match="benchmark file"):
        exp.write_text(f"arms: [{{name: a}}]\ngenerate: {tmp_path / 'missing.yaml'}\n")
        load_experiment(exp, [])


def test_a_run_made_before_a_config_field_existed_is_still_this_experiments():
    """An experiment reuses a finished run whose recorded config lacks a field added since (it ran
    with that field's default); a changed value or a field that no longer exists is another run."""
    from openlam.config import as_current, to_dict
    from openlam.train.config import TrainConfig

    now = to_dict(TrainConfig())
    old = json.loads(json.dumps(now))
    del old["model"]["quantizer"]["warmup_steps"]
    assert as_current(TrainConfig, old) == now
    changed = json.loads(json.dumps(now))
    changed["model"]["quantizer"]["num_tokens"] = 5
    assert as_current(TrainConfig, changed) != now
    gone = json.loads(json.dumps(now))
    gone["model"]["quantizer"]["removed_field"] = 1
    assert as_current(TrainConfig, gone) is None
