"""The training engine: learning, artifacts, exact resume after a kill, DDP == single process,
non-finite loss handling, config/shape errors before training, the collapse alarm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from openlam.config import from_dict
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import ConfigError, DataError
from openlam.train.config import TrainConfig
from openlam.train.engine import NonFiniteLoss
from openlam.train.trainer import train

ENV = os.environ | {"OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return write_lerobot(tmp_path_factory.mktemp("sq") / "ds", moving_squares(episodes=10, length=30, size=32), fps=10.0)


def cfg_dict(data: Path, out: Path, **kw) -> dict:
    d = {
        "model": {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
                  "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 8, "restart_every": 0},
                  "decoder": {"dim": 32, "layers": 1, "heads": 4}},
        "data": {"dataset": str(data), "gap": {"seconds": None, "frames": 2}, "workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "steps": 40, "batch_size": 16, "log_every": 5, "preview_every": 20, "ckpt_every": 20, "eval_batches": 2,
        "out": str(out), "deterministic": True,
    }
    for k, v in kw.items():
        node = d
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return d


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def test_training_learns_and_writes_artifacts(squares, tmp_path):
    out = tmp_path / "run"
    r = train(from_dict(TrainConfig, cfg_dict(squares, out, steps=80, ema_decay=0.9)))
    ls = losses(out)
    assert sorted(ls) == list(range(1, 81))
    first, last = np.mean([ls[s] for s in range(1, 11)]), np.mean([ls[s] for s in range(71, 81)])
    assert last < 0.5 * first, (first, last)
    for p in ("config.yaml", "inputs.json", "summary.json", "model/model.safetensors", "model_ema/config.json",
              "previews/step_00000020.png", "previews/step_00000080.png", "checkpoints/step_00000080/state.pt"):
        assert (out / p).exists(), p
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert r["eval"]["recon_mse"] > 0 and 1 <= r["eval"]["codes_used"] <= 8 and r["eval_split"] == "val"
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["encoder"]["dim"] == 32 and saved["steps"] == 80
    assert len(list((out / "checkpoints").glob("step_*"))) == 3  # keep_last


def _cli_train(cfg: dict, tmp: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    p = tmp / f"cfg_{time.monotonic_ns()}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    if nproc > 1:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "openlam", "train", str(p), *extra]
    else:
        cmd = [sys.executable, "-m", "openlam", "train", str(p), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# the cycle's latent action buffer, step counter, discriminator and its optimiser must resume too
CYCLE = [{"kind": "reconstruction"}, {"kind": "cycle", "weight": 0.5, "options": {"discriminator": "local_global", "adversarial_start": 5}}]
# Motion-Focused: a second (background) codebook, its restarts and the three decoder paths
MOTION = [{"kind": "motion_focused"}]
MOTION_MODEL = {"model.background": {"kind": "nsvq", "num_tokens": 2, "codebook_size": 8, "code_dim": 8, "restart_every": 7}}


@pytest.mark.parametrize("objectives", [[{"kind": "reconstruction"}, {"kind": "action", "weight": 0.1, "options": {"fraction": 0.5}}], CYCLE, MOTION],
                         ids=["light_supervision", "cycle", "motion_focused"])
def test_resume_after_kill_is_exact(squares, tmp_path, objectives):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    # light supervision rides along: its head and statistics must resume exactly too
    kw = {"steps": 60, "ckpt_every": 10, "log_every": 1, "objectives": objectives, **(MOTION_MODEL if objectives is MOTION else {})}
    ref = _cli_train(cfg_dict(squares, ref_out, **kw, **{"model.quantizer.kind": "nsvq", "model.quantizer.restart_every": 7}), tmp_path)
    assert ref.wait(300) == 0, ref.stdout.read()
    proc = _cli_train(cfg_dict(squares, out, **kw, **{"model.quantizer.kind": "nsvq", "model.quantizer.restart_every": 7}), tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "step_00000020" / "meta.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert "step_00000060" not in done, "training finished before it could be killed"
    res = _cli_train(cfg_dict(squares, out, **kw, **{"model.quantizer.kind": "nsvq", "model.quantizer.restart_every": 7}), tmp_path, "--resume")
    assert res.wait(300) == 0, res.stdout.read()
    assert losses(out) == losses(ref_out)  # the whole loss trajectory, bit for bit
    for f in ("model", "objective") if objectives is not MOTION else ("model",):
        a = load_file(str(ref_out / f"checkpoints/step_00000060/{f}.safetensors"))
        b = load_file(str(out / f"checkpoints/step_00000060/{f}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


# fraction 0.1: with 8 pairs per rank, many rank-steps have no labelled pair at all
LIGHT = [{"kind": "reconstruction"}, {"kind": "action", "weight": 0.1, "options": {"fraction": 0.1}}]


@pytest.mark.parametrize("objectives", [[{"kind": "reconstruction"}], [{"kind": "cross_view"}], LIGHT, CYCLE, MOTION],
                         ids=["reconstruction", "cross_view", "light_supervision", "cycle", "motion_focused"])
def test_ddp_two_processes_match_single_process(squares, tmp_path, objectives):
    """With NSVQ noise and dead-code restarts too: both must use the global batch's randomness.
    cross_view (MVP-LAM) makes partner-row predictions; light supervision adds an objective-owned
    head that DDP must sync like the LAM's own weights; the cycle samples from a buffer of the
    global batch and trains a discriminator by a second optimiser."""
    kw = {"steps": 12, "ckpt_every": 12, "log_every": 4, "batch_size": 16, "objectives": objectives,
          "model.quantizer.kind": "nsvq", "model.quantizer.restart_every": 4, "model.quantizer.restart_threshold": 0.5,
          **(MOTION_MODEL if objectives is MOTION else {})}
    single = _cli_train(cfg_dict(squares, tmp_path / "one", **kw), tmp_path)
    assert single.wait(300) == 0, single.stdout.read()
    ddp = _cli_train(cfg_dict(squares, tmp_path / "two", **kw), tmp_path, nproc=2)
    assert ddp.wait(300) == 0, ddp.stdout.read()
    for f in ("model", "objective") if objectives in (LIGHT, CYCLE) else ("model",):
        a = load_file(str(tmp_path / f"one/checkpoints/step_00000012/{f}.safetensors"))
        b = load_file(str(tmp_path / f"two/checkpoints/step_00000012/{f}.safetensors"))
        for k in a:
            x, y = a[k], b[k]
            if k.endswith("qkv.bias"):  # the key bias cancels in the softmax: its true gradient is 0, and
                D = len(x) // 3  # Adam turns the float noise of that 0 into steps that differ by 1e-5
                torch.testing.assert_close(y[D : 2 * D], x[D : 2 * D], rtol=0, atol=1e-4, msg=k)
                x, y = torch.cat([x[:D], x[2 * D :]]), torch.cat([y[:D], y[2 * D :]])
            torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5, msg=k)
    la, lb = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(la) == sorted(lb) and max(abs(la[s] - lb[s]) for s in la) < 1e-4


@pytest.mark.parametrize("what", ["loss", "gradients"])
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(squares, tmp_path, monkeypatch, what):
    import openlam.train.trainer as trainer

    real = trainer.build_objective

    def poisoned(cfgs, context=None):
        obj = real(cfgs, context)
        calls = {"n": 0}
        fwd = obj.forward

        def forward(model, batch):
            calls["n"] += 1
            loss, logs = fwd(model, batch)
            if calls["n"] >= 13:
                if what == "loss":
                    loss = loss * float("nan")
                    logs["loss"] = loss.detach()
                else:  # finite value, NaN gradient: d/dp sqrt(|0 * p|)
                    p = next(model.parameters())
                    loss = loss + (p * 0).abs().sqrt().sum()
            return loss, logs

        obj.forward = forward
        return obj

    monkeypatch.setattr(trainer, "build_objective", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss or gradients at step 13; training stopped\. Last good checkpoint: .*step_00000010"):
        train(from_dict(TrainConfig, cfg_dict(squares, out, steps=40, ckpt_every=10, log_every=5)))
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000010"]
    w = load_file(str(out / "checkpoints/step_00000010/model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def test_errors_before_training(squares, tmp_path):
    train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "e", steps=2, ckpt_every=2)))
    cached = cfg_dict(squares, tmp_path / "a", **{"model.image_size": 64, "data.cache": str(tmp_path / "e" / "cache")})
    cached["data"].pop("dataset")
    with pytest.raises(ConfigError, match=r"frames are 32 px but model.image_size is 64"):
        train(from_dict(TrainConfig, cached))
    assert not (tmp_path / "a" / "checkpoints").exists()
    with pytest.raises(DataError, match=r"cameras.*\['nope'\]"):
        train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "b", **{"data.views": ["nope"]})))
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        from_dict(TrainConfig, cfg_dict(squares, tmp_path / "c", **{"optim.lrr": 1.0}))
    with pytest.raises(ConfigError, match=r"objectives\[0\]\.kind: 'magic' is not known"):
        train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "d", objectives=[{"kind": "magic"}])))
    from openlam.errors import OpenLAMError

    with pytest.raises(OpenLAMError, match="already has checkpoints; pass --resume"):
        train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "e", steps=2, ckpt_every=2)))


def test_collapse_alarm_warns_and_logs(squares, tmp_path):
    out = tmp_path / "alarm"
    with pytest.warns(UserWarning, match="codebook collapse alarm at step 5"):
        train(from_dict(TrainConfig, cfg_dict(squares, out, steps=5, ckpt_every=5, **{"model.quantizer.collapse_threshold": 1.01})))
    events = [r for r in metrics(out) if r.get("event") == "alarm/codebook_collapse"]
    assert events and "codes in recent use" in events[0]["message"]


def test_lr_warmup_then_cosine():
    from openlam.train.engine import lr_lambda

    cfg = from_dict(TrainConfig, {"steps": 110, "optim": {"warmup_steps": 10, "min_lr_ratio": 0.1}})
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_bf16_autocast_and_time_limit(squares, tmp_path):
    r = train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "bf16", steps=30, precision="bf16", ckpt_every=30)))
    ls = losses(tmp_path / "bf16")
    assert np.mean([ls[s] for s in range(26, 31)]) < 0.7 * np.mean([ls[s] for s in range(1, 6)])
    assert r["eval"]["recon_mse"] > 0
    r = train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "tl", steps=100000, time_limit_s=0.5, log_every=1, ckpt_every=1000)))
    assert r["stopped_by_time_limit"] and r["steps"] < 100000
    assert (tmp_path / "tl" / "checkpoints" / f"step_{r['steps']:08d}" / "meta.json").is_file()


def probe_rows(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metrics(out) if "probe/nmse_continuous" in r}


def test_supervised_reference_learns_the_action_and_the_online_probe_sees_it(tmp_path):
    """The action objective alone is the supervised inverse-dynamics reference: its latent must come
    to predict the action on validation episodes far better than the same encoder untrained, and
    the online probe must log that, per action dim, in metrics.jsonl and summary.json."""
    from openlam.data.cache import FrameCache
    from openlam.data.pairs import PairDataset
    from openlam.models.lam import LatentActionModel
    from openlam.train.online_probe import OnlineProbe
    from openlam.train.trainer import _fixed_batches

    data = write_lerobot(tmp_path / "sq40", moving_squares(episodes=40, length=30, size=32, views=1), fps=10.0)
    out = tmp_path / "sup"
    cfg = from_dict(TrainConfig, cfg_dict(data, out, steps=600, probe_every=200, probe_pairs=256, log_every=50,
                                          objectives=[{"kind": "action", "options": {"fraction": 1.0}}], **{"model.encoder.patch": 4}))
    r = train(cfg)
    rows = probe_rows(out)
    assert sorted(rows) == [200, 400, 600]
    assert set(rows[600]) >= {"probe/nmse_continuous", "probe/nmse_onehot", "probe/nmse_continuous/dx", "probe/nmse_continuous/dy"}
    assert r["probe"] == {k: v for k, v in rows[600].items() if k != "step"}
    cache = FrameCache(out / "cache")
    tr, va = (PairDataset(cache, s, None, cfg.data.gap) for s in ("train", "val"))
    probe = OnlineProbe(_fixed_batches(tr, 64, 4), _fixed_batches(va, 64, 4), ["dx", "dy"], 8)
    torch.manual_seed(0)
    untrained = probe(LatentActionModel(cfg.model), torch.device("cpu"))["probe/nmse_continuous"]
    assert rows[600]["probe/nmse_continuous"] < min(0.35, 0.5 * untrained), (rows, untrained)
    acts = [m["action/error"] for m in metrics(out) if "action/error" in m]
    assert np.mean(acts[-50:]) < 0.5 * np.mean(acts[:50])
    assert (out / "checkpoints/step_00000600/objective.safetensors").is_file()
    from openlam.eval.plots import online_probe_curves, online_probe_plot

    curves = online_probe_curves({"sup": out, "no_probe": tmp_path})  # a folder without probe rows is left out
    assert list(curves) == ["sup"] and [r["step"] for r in curves["sup"]] == [200, 400, 600]
    online_probe_plot(curves, tmp_path / "curve.png", {"sup": 0.2})
    assert (tmp_path / "curve.png").stat().st_size > 5000


def test_online_probe_changes_nothing_in_training(squares, tmp_path):
    """Probing every few steps must leave the run bit-identical: no gradient, no RNG draw, no
    usage update reaches the LAM (NSVQ noise and dead-code restarts would expose any)."""
    kw = {"steps": 20, "ckpt_every": 20, "log_every": 5, "model.quantizer.kind": "nsvq", "model.quantizer.restart_every": 5}
    train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "plain", **kw)))
    train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "probed", probe_every=5, probe_pairs=64, **kw)))
    a = load_file(str(tmp_path / "plain/checkpoints/step_00000020/model.safetensors"))
    b = load_file(str(tmp_path / "probed/checkpoints/step_00000020/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "plain") == losses(tmp_path / "probed")
    assert sorted(probe_rows(tmp_path / "probed")) == [5, 10, 15, 20]


def test_action_objective_and_probe_need_actions_and_a_val_split(tmp_path):
    eps = moving_squares(episodes=4, length=12, size=32)
    for e in eps:
        e.actions, e.action_space = None, None
    bare = write_lerobot(tmp_path / "bare", eps, fps=10.0)
    with pytest.raises(ConfigError, match="kind 'action' needs training data with actions"):
        train(from_dict(TrainConfig, cfg_dict(bare, tmp_path / "a", steps=2, objectives=[{"kind": "action"}])))
    with pytest.raises(ConfigError, match="online probe needs actions"):
        train(from_dict(TrainConfig, cfg_dict(bare, tmp_path / "b", steps=2, probe_every=1)))


def test_train_episodes_restricts_training_to_a_nested_subset(squares, tmp_path):
    out = tmp_path / "sub"
    train(from_dict(TrainConfig, cfg_dict(squares, out, steps=2, ckpt_every=2, **{"data.train_episodes": 3})))
    used = json.loads((out / "inputs.json").read_text())["train_episodes"]
    full = json.loads((out / "cache" / "cache.json").read_text())["splits"]["train"]["episodes"]
    assert len(used) == 3 and set(used) < set(full)
    with pytest.raises(ConfigError, match=r"data.train_episodes: 99 is not in 1\.\.\d+"):
        train(from_dict(TrainConfig, cfg_dict(squares, tmp_path / "big", steps=2, **{"data.train_episodes": 99})))
