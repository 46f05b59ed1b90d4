from __future__ import annotations

import json
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from openlam.config import from_dict
from openlam.errors import ConfigError
from openlam.models.config import DecoderConfig, EncoderConfig, LAMConfig, QuantizerConfig
from openlam.models.decoders import Decoder
from openlam.models.encoders import PixelSTEncoder
from openlam.models.lam import LatentActionModel
from openlam.models.quantizers import build_quantizer


def tiny(**kw) -> LAMConfig:
    base = {"image_size": 32, "encoder": {"dim": 32, "layers": 1, "heads": 4, "patch": 8},
            "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 8}, "decoder": {"dim": 32, "layers": 1, "heads": 4}}
    for k, v in kw.items():
        if isinstance(v, dict):
            base[k] = base.get(k, {}) | v
        else:
            base[k] = v
    return from_dict(LAMConfig, base)


@pytest.mark.parametrize("kind", ["vq", "ema_vq", "nsvq", "fsq"])
def test_quantizer_codes_round_trip(kind):
    torch.manual_seed(0)
    q = build_quantizer(16, QuantizerConfig(kind=kind, num_tokens=4, codebook_size=8, code_dim=8, fsq_levels=[3, 4, 2]))
    out = q(torch.randn(64, 4, 16))
    assert out.indices.shape == (64, 4) and out.z_q.shape == (64, 4, 16) and out.counts.sum() == 256
    assert 0 <= out.indices.min() and out.indices.max() < q.codebook_size
    q.eval()
    x = torch.randn(32, 4, 16)
    ev = q(x)  # eval: z_q is exactly the code's embedding -> stored codes replay exactly
    torch.testing.assert_close(q.embed_indices(ev.indices), ev.z_q)


def test_vq_gradients_and_losses():
    torch.manual_seed(0)
    q = build_quantizer(16, QuantizerConfig(kind="vq", codebook_size=8, code_dim=8, beta=0.25))
    out = q(torch.randn(32, 4, 16))
    (out.z_q.sum() + out.loss).backward()
    assert q.proj_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder side
    used = out.counts > 0
    assert (q.codebook.grad[used].abs().sum(1) > 0).all() and (q.codebook.grad[~used] == 0).all()


def test_nsvq_substitutes_noise_of_the_error_norm():
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="nsvq", codebook_size=8, code_dim=16)
    q = build_quantizer(16, cfg)
    with torch.no_grad():  # identity projections, so the output is the substituted code
        for lin in (q.proj_in, q.proj_out):
            lin.weight.copy_(torch.eye(16))
            lin.bias.zero_()
    x = torch.randn(64, 4, 16)
    out = q(x)
    idx = out.indices
    err = (x - q.codebook[idx]).norm(dim=-1)
    torch.testing.assert_close((out.z_q - x).norm(dim=-1), err, rtol=1e-4, atol=1e-5)
    out.z_q.pow(2).sum().backward()
    assert q.codebook.grad[out.counts > 0].abs().sum() > 0  # codebook learns through the norm
    q.eval()
    torch.testing.assert_close(q(x).z_q, q.codebook[q(x).indices])


def test_ema_vq_codes_follow_assigned_means():
    torch.manual_seed(0)
    q = build_quantizer(4, QuantizerConfig(kind="ema_vq", codebook_size=4, code_dim=4, ema_decay=0.0))
    with torch.no_grad():
        q.proj_in.weight.copy_(torch.eye(4))
        q.proj_in.bias.zero_()
    x = torch.randn(200, 1, 4)
    out = q(x)
    for c in out.indices.unique():
        sel = x.view(-1, 4)[out.indices.view(-1) == c]
        torch.testing.assert_close(q.codebook[c], sel.mean(0), rtol=1e-4, atol=1e-4)
    assert not q.codebook.requires_grad


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    q = build_quantizer(8, QuantizerConfig(kind="vq", codebook_size=16, code_dim=8, restart_threshold=0.5, usage_decay=0.0))
    q.train()
    x = torch.randn(128, 2, 8)
    q(x)  # first batch initialises the codebook from the data
    with torch.no_grad():
        q.codebook[4:] += 100.0  # far away: never chosen
    q(x)
    before = q.codebook.detach().clone()
    n = int(q.restart_dead_codes())
    assert n >= 12
    moved = (q.codebook - before).norm(dim=1) > 1
    assert moved[4:].all()
    assert q(x).counts[4:].sum() > 0  # restarted codes now win assignments


def test_ema_vq_restart_survives_the_next_update():
    torch.manual_seed(0)
    q = build_quantizer(4, QuantizerConfig(kind="ema_vq", codebook_size=4, code_dim=4, ema_decay=0.99, usage_decay=0.0, restart_threshold=0.5))
    with torch.no_grad():
        q.proj_in.weight.copy_(torch.eye(4))
        q.proj_in.bias.zero_()
    x = torch.randn(64, 1, 4)
    q(x)  # data init
    with torch.no_grad():
        q.cluster_size[0] = 1e-9  # a long-dead code
        q.embed_sum[0] = 50.0 * 1e-9
        q.codebook[0] = 50.0
    q(x)
    assert int(q.restart_dead_codes()) >= 1
    moved = q.codebook[0].clone()
    far = torch.full((64, 1, 4), 100.0)  # a batch nobody near code 0 would pick
    q(far)
    assert (q.codebook[0] - moved).norm() < 0.1 * moved.norm()  # not shrunk back toward 0


def test_codebook_starts_from_data_not_collapsed():
    torch.manual_seed(0)
    for kind in ("vq", "ema_vq", "nsvq"):
        q = build_quantizer(32, QuantizerConfig(kind=kind, codebook_size=16, code_dim=8))
        with torch.no_grad():  # encoder outputs at a very different scale than a random codebook
            q.proj_in.weight.mul_(0.01)
        out = q(torch.randn(256, 4, 32))
        assert (out.counts > 0).sum() >= 12, (kind, out.counts)
        assert bool(q.initialized)
        state = q.state_dict()
        q2 = build_quantizer(32, QuantizerConfig(kind=kind, codebook_size=16, code_dim=8))
        q2.load_state_dict(state)
        before = q2.codebook.detach().clone()
        q2.train()
        q2(torch.randn(8, 4, 32))
        if kind == "vq":  # a loaded, initialised codebook is not re-initialised
            torch.testing.assert_close(q2.codebook.detach(), before)


@pytest.mark.parametrize("kind", ["vq", "ema_vq", "nsvq"])
def test_cosine_lookup_picks_codes_by_direction(kind):
    torch.manual_seed(0)
    q = build_quantizer(16, QuantizerConfig(kind=kind, num_tokens=2, codebook_size=8, code_dim=8, lookup="cosine"))
    with torch.no_grad():
        q.proj_in.bias.zero_()
    x = torch.randn(64, 2, 16)
    out = q(x)
    torch.testing.assert_close(out.z_cont.norm(dim=-1), torch.ones(64, 2))
    with torch.no_grad():  # codes of unequal length: euclidean and cosine nearest codes now differ
        q.codebook.mul_(torch.linspace(0.1, 3.0, 8)[:, None])
    q.eval()
    ev, scaled = q(x), q(7.0 * x)  # the code depends on z's direction only
    assert torch.equal(ev.indices, scaled.indices)
    codes = torch.nn.functional.normalize(q.codebook.detach(), dim=-1)
    expected = (ev.z_cont @ codes.t()).argmax(-1)  # nearest on the sphere = largest cosine
    assert torch.equal(ev.indices, expected)
    torch.testing.assert_close(q.embed_indices(ev.indices), ev.z_q)
    with pytest.raises(ConfigError, match="lookup"):
        from_dict(LAMConfig, {"quantizer": {"kind": "fsq", "lookup": "cosine"}}).validate()


@pytest.mark.parametrize("kind", ["vq", "ema_vq", "nsvq"])
def test_standardized_lookup_ignores_what_every_input_shares(kind):
    """Codes are picked after each dim of z is centred and scaled over the batch: a drift shared by
    every input (an offset and a per-dim scale of z) moves no assignment in training, evaluation
    uses running statistics that follow the training batches, and continuous() changes nothing."""
    torch.manual_seed(0)
    q = build_quantizer(8, QuantizerConfig(kind=kind, num_tokens=2, codebook_size=8, code_dim=8, lookup="standardized"))
    with torch.no_grad():
        q.proj_in.weight.copy_(torch.eye(8))
        q.proj_in.bias.zero_()
    x = 0.1 * torch.randn(256, 2, 8) + 5.0  # a small spread around a large common offset
    twin = copy.deepcopy(q)
    torch.manual_seed(1)
    first = q(x)
    z = first.z_cont.reshape(-1, 8)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(8), atol=1e-2, rtol=0)
    assert first.indices.unique().numel() >= 6  # codes seeded from the data cover the spread
    torch.manual_seed(1)
    drifted = twin(3.0 * (x - 5.0) - 40.0)  # the same inputs after a common drift, from the same state
    assert torch.equal(drifted.indices, first.indices)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.continuous(x)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    for _ in range(1500):  # running statistics follow the batches
        q(x)
    torch.testing.assert_close(q.z_mean, x.reshape(-1, 8).mean(0), atol=1e-3, rtol=0)
    q.eval()
    torch.testing.assert_close(q(x).z_cont, q.train()(x).z_cont, atol=2e-2, rtol=0)


@pytest.mark.parametrize("kind", ["vq", "ema_vq", "nsvq"])
def test_quantizer_warmup_passes_z_then_closes_the_bottleneck(kind):
    """For warmup_steps training steps the decoder reads z itself (codes still assigned); then the
    codes; evaluation always reads the codes; the step count is part of the saved state."""
    torch.manual_seed(0)
    q = build_quantizer(8, QuantizerConfig(kind=kind, num_tokens=2, codebook_size=4, code_dim=4, warmup_steps=2))
    x = torch.randn(32, 2, 8)
    for _ in range(2):
        out = q(x)
        torch.testing.assert_close(out.z_q, q.proj_out(out.z_cont))
        assert out.indices.shape == (32, 2) and out.counts.sum() == 64
    after = q(x)
    assert not torch.allclose(after.z_q, q.proj_out(after.z_cont))
    if kind == "vq":  # nsvq replaces the quantization error by noise; ema_vq has moved its codes since
        torch.testing.assert_close(after.z_q, q.embed_indices(after.indices))
    assert int(q.state_dict()["steps_seen"]) == 3
    q.eval()
    ev = q(x)
    torch.testing.assert_close(ev.z_q, q.embed_indices(ev.indices))
    assert "steps_seen" not in build_quantizer(8, QuantizerConfig(kind=kind)).state_dict()  # old checkpoints still load
    with pytest.raises(ConfigError, match="warmup_steps"):
        from_dict(LAMConfig, {"quantizer": {"kind": "fsq", "warmup_steps": 5}}).validate()


def test_usage_entropy_term_spreads_a_collapsed_batch():
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="vq", num_tokens=1, codebook_size=4, code_dim=2, entropy_weight=1.0, entropy_temperature=0.5)
    q = build_quantizer(2, cfg)
    with torch.no_grad():
        q.proj_in.weight.copy_(torch.eye(2))
        q.proj_in.bias.zero_()
        q.codebook.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        q.initialized.fill_(True)
    # exact value: two rows, each certain of a different code -> row entropy 0, batch entropy log 2
    far = torch.tensor([[[100.0, 0.0]], [[-100.0, 0.0]]])
    expected = 0.0 - math.log(2)
    torch.testing.assert_close(q.entropy_loss(far), torch.tensor(expected), atol=1e-5, rtol=0)
    vq_terms = F.mse_loss(q.codebook[q(far).indices.view(-1)], far.view(-1, 2)) * (1 + cfg.beta)
    torch.testing.assert_close(q(far).loss, vq_terms + expected, rtol=1e-6, atol=0)  # the term is part of the loss
    # a collapsed encoder (varied inputs, near-identical outputs: every row in one code) trained on
    # the term alone learns outputs that spread over every code
    u = torch.randn(256, 8)
    enc = torch.nn.Linear(8, 2)
    with torch.no_grad():
        enc.weight.mul_(0.01)
        enc.bias.copy_(torch.tensor([0.6, 0.2]))
    assert q.nearest(enc(u)[:, None].detach())[0].unique().tolist() == [0]
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        q.entropy_loss(enc(u)[:, None]).backward()
        opt.step()
    x = enc(u)[:, None].detach()
    assert torch.bincount(q.nearest(x)[0].view(-1), minlength=4).min() >= 40  # about uniform: 64 each
    q.eval()
    assert float(q.entropy_loss(x)) == 0.0  # training only


def test_fsq_uses_every_code():
    q = build_quantizer(8, QuantizerConfig(kind="fsq", fsq_levels=[3, 4, 2]))
    assert q.codebook_size == 24
    with torch.no_grad():  # feed the 3 code dims directly
        q.proj_in.weight.zero_()
        q.proj_in.weight[:, :3] = torch.eye(3)
        q.proj_in.bias.zero_()
    out = q(torch.rand(4000, 1, 8) * 6 - 3)
    assert sorted(out.indices.unique().tolist()) == list(range(24))


def test_temporal_attention_is_causal():
    torch.manual_seed(0)
    enc = PixelSTEncoder(tiny())
    a = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    b = a.clone()
    b[:, 1] = torch.rand(2, 3, 32, 32) * 2 - 1  # change only the future frame

    def run(x):
        return enc.trunk.hidden(enc.embed(x))

    ha, hb = run(a), run(b)
    torch.testing.assert_close(ha[:, 0], hb[:, 0])  # frame t never sees frame t+H
    assert (ha[:, 1] - hb[:, 1]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["cross_attn", "in_context", "additive"])
def test_decoders_use_the_action_and_stop_grad(kind):
    torch.manual_seed(0)
    for stop in (True, False):
        dec = Decoder(DecoderConfig(kind=kind, dim=32, layers=1, heads=4, stop_grad_context=stop), 32, 32, 4, 16, 12)
        ctx = torch.randn(2, 16, 32, requires_grad=True)
        z1, z2 = torch.randn(2, 4, 32), torch.randn(2, 4, 32)
        y1 = dec(ctx, z1)
        assert y1.shape == (2, 16, 12)
        assert (y1 - dec(ctx, z2)).abs().max() > 1e-3  # the action changes the prediction
        y1.sum().backward()
        assert (ctx.grad is None) == stop


def test_every_component_combination_trains_a_step():
    for enc in ("difference", "queries", "motion_queries"):
        for qk in ("vq", "ema_vq", "nsvq", "fsq"):
            for dk in ("cross_attn", "in_context", "additive"):
                m = LatentActionModel(tiny(encoder={"readout": enc}, quantizer={"kind": qk, "fsq_levels": [2, 2, 2]}, decoder={"kind": dk}))
                x = torch.rand(2, 2, 3, 32, 32) * 2 - 1
                out = m(x)
                ((out.pred - out.target).pow(2).mean() + out.quant.loss).backward()
                assert out.pred.shape == (2, 3, 32, 32)
                assert m.decode(x[:, 0], out.quant.indices).shape == (2, 3, 32, 32)


def test_motion_queries_read_the_current_frame_and_the_frame_difference():
    from openlam.models.encoders import Readout

    torch.manual_seed(0)
    motion = Readout(EncoderConfig(dim=16, heads=4, readout="motion_queries"), 3, (4, 4))
    plain = Readout(EncoderConfig(dim=16, heads=4, readout="queries"), 3, (4, 4))
    plain.load_state_dict(motion.state_dict())  # same parameters, only the context differs
    x = torch.randn(2, 2, 16, 16)
    torch.testing.assert_close(motion(x), plain(torch.stack([x[:, 0], x[:, 1] - x[:, 0]], 1)))
    assert not torch.allclose(motion(x), plain(x))


def test_residual_prediction_starts_at_copy_last():
    m = LatentActionModel(tiny(predict_residual=True))
    x = torch.rand(3, 2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(m(x).pred, x[:, 0])


def test_save_load_is_strict_and_exact(tmp_path):
    torch.manual_seed(0)
    m = LatentActionModel(tiny()).eval()
    x = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    m.save_pretrained(tmp_path / "m")
    m2 = LatentActionModel.from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(m2(x).pred, m(x).pred, rtol=0, atol=0)
    meta = json.loads((tmp_path / "m/config.json").read_text())
    meta["model"]["encoder"]["dim"] = 64
    (tmp_path / "m/config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="architecture_sha does not match"):
        LatentActionModel.from_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    m.save_pretrained(tmp_path / "n")
    w = load_file(str(tmp_path / "n/model.safetensors"))
    w.pop("decoder.head.bias")
    w["extra.weight"] = torch.zeros(1)
    save_file(w, str(tmp_path / "n/model.safetensors"))
    with pytest.raises(ConfigError, match=r"missing \['decoder\.head\.bias'\], unexpected \['extra\.weight'\]"):
        LatentActionModel.from_pretrained(tmp_path / "n")


def test_backbone_encoder_frozen_self_contained(tmp_path):
    torch.manual_seed(0)
    bb = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8}
    cfg = tiny(target="features", encoder={"kind": "backbone", "readout": "queries", "backbone_image_size": 32, "backbone_config": bb},
               decoder={"kind": "in_context"})
    m = LatentActionModel(cfg)
    assert all(not p.requires_grad for p in m.encoder.backbone.parameters())
    m.train()
    assert not m.encoder.backbone.training
    x = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    out = m(x)
    assert out.pred.shape == out.target.shape == (2, 16, 32)
    (out.pred - out.target).pow(2).mean().backward()
    assert m.encoder.proj.weight.grad is not None
    # a local transformers directory as the backbone source
    m.encoder.backbone.save_pretrained(tmp_path / "dino")
    cfg2 = tiny(target="features", encoder={"kind": "backbone", "readout": "queries", "backbone_image_size": 32,
                                            "backbone_path": str(tmp_path / "dino")}, decoder={"kind": "in_context"})
    m2 = LatentActionModel(cfg2)
    torch.testing.assert_close(m2.encoder.features(x), m.encoder.features(x))
    m.eval().save_pretrained(tmp_path / "lam")
    m3 = LatentActionModel.from_pretrained(tmp_path / "lam").eval()  # no backbone source needed
    torch.testing.assert_close(m3(x).pred, m(x).pred)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"model.image_size \(30\) must be a multiple of model.encoder.patch \(8\)"):
        LAMConfig(image_size=30).validate()
    with pytest.raises(ConfigError, match="model.target=features needs model.encoder.kind=backbone"):
        from_dict(LAMConfig, {"target": "features"})
    with pytest.raises(ConfigError, match=r"'quantizer.kind': 'pq' is not allowed; choose one of \['vq', 'ema_vq', 'nsvq', 'fsq'\]"):
        from_dict(LAMConfig, {"quantizer": {"kind": "pq"}})
    with pytest.raises(ConfigError, match=r"model.decoder.dim \(30\) must be divisible by model.decoder.heads \(8\)"):
        from_dict(LAMConfig, {"decoder": {"dim": 30}})
    assert EncoderConfig().readout == "difference"


def test_backbone_from_safetensors_file_is_strict(tmp_path):
    from safetensors.torch import save_file

    bb = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8}
    cfg = tiny(target="features", encoder={"kind": "backbone", "readout": "queries", "backbone_image_size": 32, "backbone_config": bb},
               decoder={"kind": "in_context"})
    m = LatentActionModel(cfg)
    state = {f"dinov2.{k}": v.contiguous() for k, v in m.encoder.backbone.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 64)  # a classification head is allowed and ignored
    save_file(state, str(tmp_path / "dino.safetensors"))
    cfg2 = tiny(target="features", encoder={"kind": "backbone", "readout": "queries", "backbone_image_size": 32, "backbone_config": bb,
                                            "backbone_path": str(tmp_path / "dino.safetensors")}, decoder={"kind": "in_context"})
    x = torch.rand(2, 2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(LatentActionModel(cfg2).encoder.features(x), m.encoder.features(x))
    state.pop("dinov2.layernorm.weight")
    save_file(state, str(tmp_path / "dino.safetensors"))
    with pytest.raises(ConfigError, match=r"dino\.safetensors: weights do not fit the model: missing \['layernorm\.weight'\]"):
        LatentActionModel(cfg2)
