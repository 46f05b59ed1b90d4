"""CycleMimic's action-centric cycle: the latent action buffer, the code logits it scores against,
the local-global discriminator's gradient separation, and the objective inside the training engine
(an auxiliary optimiser that learns, a cycle that learns, both encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openlam.config import from_dict
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import ConfigError
from openlam.models.config import LAMConfig
from openlam.models.lam import LatentActionModel
from openlam.objectives.base import ObjectiveConfig, ObjectiveContext, build_objective
from openlam.objectives.cycle import LatentActionBuffer
from openlam.objectives.discriminator import DiscriminatorConfig, LocalGlobalDiscriminator, discriminator_loss, generator_loss
from openlam.train.config import TrainConfig
from openlam.train.trainer import train

from test_train import cfg_dict, metrics


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return write_lerobot(tmp_path_factory.mktemp("sq") / "ds", moving_squares(episodes=10, length=30, size=32), fps=10.0)


def test_buffer_is_a_ring_of_recent_batches_sampled_uniformly():
    torch.manual_seed(0)
    buf = LatentActionBuffer(capacity=6, num_tokens=2)
    batch = lambda v: torch.full((3, 2), v, dtype=torch.long)  # noqa: E731
    buf.push(batch(1))
    assert int(buf.filled) == 3 and set(buf.sample(200).unique().tolist()) == {1}  # only filled rows are drawn
    buf.push(batch(2))
    buf.push(batch(3))  # overwrites the oldest batch
    assert int(buf.filled) == 6 and int(buf.pos) == 3
    assert sorted(buf.codes[:, 0].tolist()) == [2, 2, 2, 3, 3, 3]
    draws = buf.sample(6000)[:, 0]
    share = (draws == 3).float().mean().item()
    assert abs(share - 0.5) < 0.03, share  # uniform over the rows held
    with pytest.raises(ValueError, match="do not fit"):
        buf.push(torch.zeros(7, 2, dtype=torch.long))


def test_one_batch_buffer_samples_only_the_current_batch():
    """buffer_batches = 1, the paper's collapse ablation: every sampled tuple is one of this batch's."""
    buf = LatentActionBuffer(capacity=4, num_tokens=1)
    buf.push(torch.tensor([[0], [1], [2], [3]]))
    buf.push(torch.tensor([[7], [8], [9], [7]]))
    assert set(buf.sample(100)[:, 0].tolist()) <= {7, 8, 9}


@pytest.mark.parametrize("quantizer", [{"kind": "vq"}, {"kind": "vq", "lookup": "cosine"}, {"kind": "nsvq"},
                                       {"kind": "fsq", "fsq_levels": [3, 4]}], ids=["vq", "vq_cosine", "nsvq", "fsq"])
def test_code_logits_argmax_is_the_assigned_code(quantizer):
    cfg = {"image_size": 16, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
           "quantizer": {"num_tokens": 3, "codebook_size": 8, "code_dim": 8, **quantizer}, "decoder": {"dim": 16, "layers": 1, "heads": 2}}
    torch.manual_seed(1)
    model = LatentActionModel(from_dict(LAMConfig, cfg)).eval()
    pair = torch.rand(20, 2, 3, 16, 16) * 2 - 1
    q = model.encode(pair[:, 0], pair[:, 1])
    logits = model.quantizer.code_logits(model.encode_continuous(pair), temperature=0.5)
    assert logits.shape == (20, 3, model.quantizer.codebook_size)
    assert torch.equal(logits.argmax(-1), q.indices)
    # the scale is -distance / temperature: halving the temperature doubles the logits
    torch.testing.assert_close(model.quantizer.code_logits(q.z_cont, 0.25), 2 * model.quantizer.code_logits(q.z_cont, 0.5))


def test_discriminator_losses_reach_only_their_own_side():
    torch.manual_seed(0)
    disc = LocalGlobalDiscriminator(DiscriminatorConfig(dim=16, layers=1, heads=2, patch=8), (3, 16, 16))
    fake = torch.zeros(4, 3, 16, 16, requires_grad=True)
    real = torch.rand(4, 3, 16, 16)
    generator_loss(disc, fake * 1.0).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # the generator's loss never trains the discriminator
    fake.grad = None
    discriminator_loss(disc, real, fake.detach()).backward()
    assert fake.grad is None and all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("mode", ["local", "local_global"])
def test_every_discriminator_parameter_learns(mode):
    """A parameter no loss reaches stalls DDP's reduction: local mode has no global head at all."""
    disc = LocalGlobalDiscriminator(DiscriminatorConfig(dim=16, layers=1, heads=2, patch=8), (3, 16, 16), mode)
    assert (disc.global_head is None) == (mode == "local") and len(disc(torch.rand(2, 3, 16, 16))) == (1 if mode == "local" else 2)
    discriminator_loss(disc, torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_discriminator_learns_to_tell_real_from_fake():
    torch.manual_seed(0)
    disc = LocalGlobalDiscriminator(DiscriminatorConfig(dim=16, layers=1, heads=2, patch=8), (3, 16, 16))
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    real = lambda: torch.rand(8, 3, 16, 16) * 0.2  # noqa: E731  # dark, smooth
    fake = lambda: torch.rand(8, 3, 16, 16) * 2 - 1  # noqa: E731  # noise
    first = discriminator_loss(disc, real(), fake()).item()
    for _ in range(100):
        loss = discriminator_loss(disc, real(), fake())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(first - 2 * np.log(2)) < 0.1 and loss.item() < 0.2, (first, loss.item())


def _cycle(**options) -> list[dict]:
    return [{"kind": "reconstruction"}, {"kind": "cycle", "weight": 0.5, "options": options}]


def test_cycle_trains_its_discriminator_by_its_own_optimiser(squares, tmp_path):
    out = tmp_path / "run"
    train(from_dict(TrainConfig, cfg_dict(squares, out, steps=30, ckpt_every=10, log_every=5, keep_last=0,
                                           objectives=_cycle(discriminator="local_global", adversarial_start=10))))
    rows = [r for r in metrics(out) if "loss" in r]
    assert all(np.isfinite(r["cycle/auxiliary_loss"]) and r["grad_norm_auxiliary"] > 0 for r in rows)
    first, last = (load_file(str(out / f"checkpoints/step_{s:08d}/objective.safetensors")) for s in (10, 30))
    disc = [k for k in first if k.startswith("parts.1.disc.")]
    assert disc and any(not torch.equal(first[k], last[k]) for k in disc)
    assert int(last["parts.1.steps_seen"]) == 30 and int(last["parts.1.buffer.filled"]) == 4 * 16
    state = torch.load(out / "checkpoints/step_00000030/state.pt", weights_only=True)
    aux_ids = {i for g in state["optimizer_aux"]["param_groups"] for i in g["params"]}
    assert len(aux_ids) == len(disc)  # the discriminator's parameters, each once
    assert state["optimizer_aux"]["param_groups"][0]["betas"] == (0.5, 0.9)
    # the logged LAM loss leaves the discriminator's out
    r = rows[-1]
    expected = r["recon/error"] + r["recon/quant_loss"] + 0.5 * (r["cycle/cross_entropy"] + 0.1 * r["cycle/generator_loss"])
    assert abs(r["loss"] - expected) < 1e-4 * max(1.0, expected)


def test_cycle_learns_to_recover_sampled_codes(squares, tmp_path):
    """The cross-entropy falls and the share of re-encoded tokens that hit the sampled code rises
    well above chance (1 / 8) without a discriminator."""
    out = tmp_path / "run"
    train(from_dict(TrainConfig, cfg_dict(squares, out, steps=120, log_every=10, preview_every=0,
                                           objectives=_cycle(discriminator="none", temperature=0.1))))
    rows = [r for r in metrics(out) if "loss" in r]
    ce = [r["cycle/cross_entropy"] for r in rows]
    rec = [r["cycle/recovered"] for r in rows]
    assert np.mean(ce[-40:]) < 0.6 * np.mean(ce[:5]), (ce[:5], ce[-40:])
    assert np.mean(rec[-40:]) > 0.5 and rec[0] < 0.3, (rec[:5], rec[-40:])  # from about chance (1 / 8) at step 1
    assert np.mean([r["cycle/foreign"] for r in rows[-20:]]) > 0.3  # most sampled tuples are not the row's own


def test_cycle_on_backbone_features_reencodes_generated_features():
    """UniVLA-style model (frozen backbone, feature target): the cycle's gradient reaches the
    trainable encoder through the generated features, and the discriminator reads features."""
    backbone = {"hidden_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24, "patch_size": 8}
    cfg = {"image_size": 16, "target": "features",
           "encoder": {"kind": "backbone", "dim": 16, "layers": 1, "heads": 2, "readout": "queries", "backbone_image_size": 16,
                       "backbone_config": backbone},
           "quantizer": {"kind": "vq", "num_tokens": 2, "codebook_size": 8, "code_dim": 8},
           "decoder": {"kind": "in_context", "dim": 16, "layers": 1, "heads": 2}}
    torch.manual_seed(0)
    model = LatentActionModel(from_dict(LAMConfig, cfg))
    ctx = ObjectiveContext({0: 4}, latent_dim=16, batch_size=4, views=["view0"], num_tokens=2, target_shape=(4, 12))
    obj = build_objective([ObjectiveConfig(kind="cycle", options={"discriminator": "local_global"})], ctx)

    from test_action import batch

    loss, logs = obj(model, batch([0, 0, 0, 0], views=1))
    loss.backward()
    assert torch.isfinite(loss) and logs["cycle/auxiliary_loss"] > 0
    assert model.encoder.trunk.readout.queries.grad.abs().sum() > 0 and model.decoder.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.backbone.parameters())


@pytest.mark.parametrize("options, match", [({"buffer_batches": 0}, "buffer_batches must be >= 1"),
                                            ({"temperature": 0}, "temperature must be > 0"),
                                            ({"discriminator": "patch"}, "discriminator")])
def test_cycle_config_errors(options, match):
    ctx = ObjectiveContext({0: 4}, latent_dim=16, batch_size=4, views=["v"], num_tokens=2, target_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match=match):
        build_objective([ObjectiveConfig(kind="cycle", options=options)], ctx)


def test_metrics_name_the_cycle_parts(squares, tmp_path):
    out = tmp_path / "run"
    train(from_dict(TrainConfig, cfg_dict(squares, out, steps=10, log_every=5, objectives=_cycle(discriminator="local"))))
    keys = set(json.loads((out / "metrics.jsonl").read_text().splitlines()[0]))
    assert {"cycle/cross_entropy", "cycle/recovered", "cycle/foreign", "cycle/generator_loss", "cycle/auxiliary_loss"} <= keys


def test_cycle_counts_only_after_its_start():
    from test_action import batch

    model = LatentActionModel(from_dict(LAMConfig, {"image_size": 16, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
                                                    "quantizer": {"kind": "vq", "num_tokens": 2, "codebook_size": 8, "code_dim": 8},
                                                    "decoder": {"dim": 16, "layers": 1, "heads": 2}}))
    ctx = ObjectiveContext({0: 4}, latent_dim=16, batch_size=4, views=["v0"], num_tokens=2, target_shape=(3, 16, 16))
    obj = build_objective([ObjectiveConfig(kind="cycle", options={"discriminator": "none", "start": 3})], ctx)
    seen = []
    for _ in range(5):
        loss, logs = obj(model, batch([0, 0, 0, 0], views=1))
        seen.append((loss.item(), logs["cycle/cross_entropy"].item()))
    assert all(lo == 0 and ce > 0 for lo, ce in seen[:3]) and all(lo == pytest.approx(ce) for lo, ce in seen[3:]), seen


def test_cycle_experiments_share_runs_and_ablate_one_option_each():
    """The ablation files reuse the comparison's ac3 and ceiling runs (same config, seed, data and
    evaluation: trained and evaluated once) and change exactly one cycle option per arm."""
    from openlam.config import to_dict
    from openlam.experiment import _train_config, arm_eval_config, data_key, load_experiment

    root = Path(__file__).resolve().parents[1] / "configs" / "experiments"
    main = load_experiment(root / "cycle_vs_recon.yaml", [])
    changed = {"buffer1": ("buffer_batches", 1), "buffer16": ("buffer_batches", 16), "no_disc": ("discriminator", "none"),
               "local_disc": ("discriminator", "local")}
    seen = set()
    for file in ("cycle_buffer.yaml", "cycle_discriminator.yaml"):
        abl = load_experiment(root / file, [])
        arms = {e.name: {a.name: a for a in e.arms} for e in (main, abl)}
        assert main.out == abl.out and data_key(main) == data_key(abl) and main.train == abl.train and main.ceiling == abl.ceiling
        for name in ("ac3", "supervised"):
            a, b = arms[main.name][name], arms[abl.name][name]
            assert to_dict(_train_config(main, a, 1, Path("c"), Path(main.out))) == to_dict(_train_config(abl, b, 1, Path("c"), Path(abl.out)))
            assert to_dict(arm_eval_config(main, a)) == to_dict(arm_eval_config(abl, b))
        assert Path(abl.report) != Path(abl.out) / "report"  # its own side-by-side report
        base = to_dict(_train_config(abl, arms[abl.name]["ac3"], 0, Path("c"), Path(abl.out)))
        for name in set(arms[abl.name]) - {"ac3", "supervised"}:
            key, val = changed[name]
            seen.add(name)
            t = to_dict(_train_config(abl, arms[abl.name][name], 0, Path("c"), Path(abl.out)))
            cyc, ref = t["objectives"][1], base["objectives"][1]
            assert cyc["kind"] == "cycle" and cyc["options"][key] == val != ref["options"][key]
            assert {k: v for k, v in cyc["options"].items() if k != key} == {k: v for k, v in ref["options"].items() if k != key}
            assert ({k: v for k, v in t.items() if k not in ("objectives", "out")}
                    == {k: v for k, v in base.items() if k not in ("objectives", "out")})
    assert seen == set(changed)
