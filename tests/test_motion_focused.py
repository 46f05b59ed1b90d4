"""Motion-Focused LAM: a background bottleneck beside the action tokens, one decoder with three
paths (full, action, background), mask-guided losses, masks for user video folders."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from openlam.config import from_dict
from openlam.data.folder import FolderSource
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.synthetic import moving_squares
from openlam.errors import ConfigError, DataError
from openlam.models.config import LAMConfig
from openlam.models.lam import LatentActionModel
from openlam.objectives.base import ObjectiveConfig, build_objective
from openlam.train.config import TrainConfig
from openlam.train.trainer import train

from test_train import cfg_dict, metrics

BG = {"kind": "vq", "num_tokens": 2, "codebook_size": 8, "code_dim": 8, "restart_every": 0}


def hybrid(decoder: str = "cross_attn", readout: str = "difference") -> LatentActionModel:
    cfg = {"image_size": 16, "predict_residual": True, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8, "readout": readout},
           "quantizer": {"kind": "vq", "num_tokens": 4, "codebook_size": 8, "code_dim": 8}, "background": BG,
           "decoder": {"kind": decoder, "dim": 16, "layers": 1, "heads": 2}}
    torch.manual_seed(0)
    model = LatentActionModel(from_dict(LAMConfig, cfg))
    torch.nn.init.normal_(model.decoder.head.weight, std=0.1)  # not the zero residual start: outputs must depend on inputs
    return model


@pytest.mark.parametrize("decoder", ["cross_attn", "in_context"])
def test_paths_read_what_they_should(decoder):
    model = hybrid(decoder).eval()
    pair = torch.rand(3, 2, 3, 16, 16) * 2 - 1
    enc = model.encode_pair(pair)
    assert enc.quant.indices.shape == (3, 4) and enc.background is not None and enc.background.indices.shape == (3, 2)
    assert model.encode(pair[:, 0], pair[:, 1]).indices.shape == (3, 4)  # the latent action is the action tokens only
    full, action, bg = model.predict(enc, enc.quant.z_q), model.predict(enc, enc.quant.z_q, background=False), model.predict_background(enc)
    assert not torch.allclose(full, action)  # the full path reads the background tokens
    # the background path reads neither o_t nor the action: change both, it stays the same
    other = model.encode_pair(torch.rand(3, 2, 3, 16, 16) * 2 - 1)
    mixed = type(enc)(other.quant, other.context, other.space, enc.background)
    torch.testing.assert_close(model.predict_background(mixed), bg)
    assert not torch.allclose(model.predict(mixed, mixed.quant.z_q, background=False), action)
    # forward's quantizer loss holds both bottlenecks'
    model.train()
    out = model(pair)
    enc = model.encode_pair(pair)
    assert enc.background is not None
    torch.testing.assert_close(out.quant.loss, enc.quant.loss + enc.background.loss)


def test_save_and_load_keep_the_background_bottleneck(tmp_path):
    model = hybrid().eval()
    model.save_pretrained(tmp_path / "m")
    back = LatentActionModel.from_pretrained(tmp_path / "m").eval()
    pair = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    a, b = model.encode_pair(pair), back.encode_pair(pair)
    assert a.background is not None and b.background is not None
    assert torch.equal(a.background.indices, b.background.indices)
    torch.testing.assert_close(model.predict_background(a), back.predict_background(b))


def _batch(masks: bool = True):
    from test_action import batch

    b = batch([0, 1, 2, 3], views=2)
    if masks:
        g = torch.Generator().manual_seed(1)
        b.masks = {v: torch.rand(4, 2, 16, 16, generator=g) > 0.7 for v in b.views}
    return b


@pytest.mark.parametrize("path", ["action", "background"])
def test_losses_route_to_their_own_tokens(path):
    """The background path's error never reaches the action readout, the action path's never the
    background readout."""
    from openlam.objectives.motion_focused import _region_weights, _rows, _weighted_mse

    model = hybrid(readout="queries")
    frames, masks = _rows(_batch(), "random")
    enc = model.encode_pair(frames.float().div(127.5).sub(1.0))
    fg = _region_weights(masks[:, 0] | masks[:, 1], enc.space[:, 1])
    if path == "action":
        err = _weighted_mse(model.predict(enc, enc.quant.z_q, background=False), enc.space[:, 1], fg)
    else:
        err = _weighted_mse(model.predict_background(enc), enc.space[:, 1], 1 - fg)
    err.backward()
    trunk = model.encoder.trunk
    own, other = (trunk.readout, trunk.background_readout) if path == "action" else (trunk.background_readout, trunk.readout)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in other.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters())


def test_weighted_mse_scores_only_the_region():
    from openlam.objectives.motion_focused import _region_weights, _weighted_mse

    target = torch.zeros(2, 3, 4, 4)
    pred = target.clone()
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    pred[:, :, 2:] = 1.0  # wrong only outside the mask
    fg = _region_weights(mask, target)
    assert _weighted_mse(pred, target, fg).item() == 0.0
    assert _weighted_mse(pred, target, 1 - fg).item() == pytest.approx(1.0)
    feats = torch.zeros(2, 4, 5)  # a 2 x 2 patch grid: the top two patches are foreground
    w = _region_weights(mask, feats)
    assert w.shape == (2, 4, 1) and w[0, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_errors_name_what_is_missing():
    obj = build_objective([ObjectiveConfig(kind="motion_focused")])
    with pytest.raises(ConfigError, match=r"no foreground masks for camera\(s\) \['v0', 'v1'\].*observation.masks"):
        obj(hybrid(), _batch(masks=False))
    plain = {"image_size": 16, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
             "quantizer": {"num_tokens": 2}, "decoder": {"dim": 16, "layers": 1, "heads": 2}}
    with pytest.raises(ConfigError, match="no background bottleneck; set model.background"):
        obj(LatentActionModel(from_dict(LAMConfig, plain)), _batch())
    with pytest.raises(ConfigError, match="model.background needs a decoder .* not additive"):
        from_dict(LAMConfig, {**plain, "background": BG, "decoder": {"kind": "additive", "dim": 16, "heads": 2}})
    with pytest.raises(ConfigError, match="model.background.codebook_size must be >= 2"):
        from_dict(LAMConfig, {**plain, "background": {**BG, "codebook_size": 1}})


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    return write_lerobot(tmp_path_factory.mktemp("sq") / "ds", moving_squares(episodes=10, length=30, size=32), fps=10.0)


MF = {"model.background": BG, "model.decoder.kind": "cross_attn", "objectives": [{"kind": "motion_focused"}]}


def test_motion_focused_learns_each_path(squares, tmp_path):
    """On moving squares the background is static per episode: the background path learns to draw
    it from its tokens alone, the action path learns the square's motion on the foreground."""
    out = tmp_path / "run"
    train(from_dict(TrainConfig, cfg_dict(squares, out, steps=120, log_every=10, preview_every=0, **MF)))
    rows = [r for r in metrics(out) if "loss" in r]
    for k, ratio in (("mf/full_error", 0.5), ("mf/background_error", 0.5), ("mf/action_error", 0.85)):
        first, last = np.mean([r[k] for r in rows[:5]]), np.mean([r[k] for r in rows[-20:]])
        assert last < ratio * first, (k, first, last)
    assert 0.01 < rows[-1]["mf/foreground_share"] < 0.1  # the square (2.4% of a frame), at t or t+H
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tensorboard")).Reload().Tags()["scalars"]
    assert {"codebook/mf_perplexity", "codebook/mf_background_perplexity"} <= set(tags)  # both codebooks are watched


def test_motion_focused_composes_with_cross_view_and_light_supervision(squares, tmp_path):
    out = tmp_path / "run"
    objs = [{"kind": "motion_focused"}, {"kind": "cross_view", "weight": 0.5}, {"kind": "action", "weight": 0.1, "options": {"fraction": 0.5}}]
    r = train(from_dict(TrainConfig, cfg_dict(squares, out, steps=10, log_every=5, **{**MF, "objectives": objs})))
    row = [x for x in metrics(out) if "loss" in x][-1]
    assert all(np.isfinite(row[k]) for k in ("mf/action_error", "mvp/cross_error", "action/error"))
    assert r["eval"]["codes_used"] >= 1


def _write_video(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"crf": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_folder_masks(tmp_path):
    root = tmp_path / "vids"
    root.mkdir()
    eps = moving_squares(episodes=2, length=8, size=32, views=1)
    for i, ep in enumerate(eps):
        _write_video(root / f"clip{i}.mp4", ep.frames["view0"])
        m = ep.masks["view0"]
        _write_video(root / f"clip{i}.mask.mp4", np.repeat((m * 255).astype(np.uint8)[..., None], 3, -1))
    src = FolderSource(root)
    assert src.cameras == ["main"] and src.mask_cameras == ["main"] and len(src.episodes) == 2  # mask videos are not episodes
    ep = src.load(1)
    assert ep.masks["main"].dtype == bool and (ep.masks["main"] == eps[1].masks["view0"]).mean() > 0.99
    (root / "clip0.mask.mp4").unlink()
    with pytest.raises(DataError, match=r"masks of camera 'main'.*missing for \['clip0'\]"):
        FolderSource(root)


def test_labels_carry_the_background_tokens(squares, tmp_path):
    """Labelling a hybrid model records both token sets, so the evaluation can ask which carries what."""
    from openlam.data.cache import FrameCache
    from openlam.eval.table import build_table
    from openlam.label import LabelConfig, label, load_labels
    from openlam.models.lam import normalize

    cfg = {"image_size": 32, "predict_residual": True, "encoder": {"dim": 16, "layers": 1, "heads": 2, "patch": 8},
           "quantizer": {"kind": "vq", "num_tokens": 4, "codebook_size": 8, "code_dim": 8}, "background": BG,
           "decoder": {"kind": "cross_attn", "dim": 16, "layers": 1, "heads": 2}}
    torch.manual_seed(1)
    model = LatentActionModel(from_dict(LAMConfig, cfg)).eval()
    model.save_pretrained(tmp_path / "m")
    label(tmp_path / "m", squares, tmp_path / "labels", from_dict(LabelConfig, {"gap": {"seconds": None, "frames": 2}}))
    meta, t = load_labels(tmp_path / "labels")
    assert meta["background_tokens"] == 2 and meta["background_codebook_size"] == 8
    cache = FrameCache(tmp_path / "labels" / "cache")
    e, f, v = t["episode"][17].as_py(), t["frame"][17].as_py(), t["view"][17].as_py()
    g0 = cache.episodes[e]["start"] + f
    x = normalize(torch.from_numpy(np.stack([cache.frames(v)[g0], cache.frames(v)[g0 + 2]])[None]).permute(0, 1, 4, 2, 3))
    with torch.no_grad():
        enc = model.encode_pair(x)
    assert enc.background is not None
    assert t["bg_tokens"][17].as_py() == enc.background.indices[0].tolist()
    assert t["tokens"][17].as_py() == enc.quant.indices[0].tolist()
    table = build_table(tmp_path / "labels", cache)
    assert table.bg_tokens is not None and table.bg_z is not None
    # a labelling made without the background columns is not silently reused
    import json

    from openlam.errors import OpenLAMError

    stale = {k: v for k, v in json.loads((tmp_path / "labels" / "labels.json").read_text()).items() if not k.startswith("background")}
    (tmp_path / "labels" / "labels.json").write_text(json.dumps(stale))
    with pytest.raises(OpenLAMError, match="background_tokens"):
        label(tmp_path / "m", squares, tmp_path / "labels", from_dict(LabelConfig, {"gap": {"seconds": None, "frames": 2}}))
    assert table.bg_tokens.shape == (len(table), 2) and table.bg_z.shape == (len(table), 2 * 8) and table.bg_codebook_size == 8


def test_distractor_experiment_moves_distractors_in_every_split():
    """The Motion-Focused experiment's benchmark has the dynamic preset in distribution (so the
    action tokens meet moving distractors in training) and one OOD split per stronger factor."""
    from openlam.experiment import load_experiment
    from openlam.sim.distractors import PRESETS

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "motion_focused_distractors.yaml", [])
    g = exp.generate
    dyn = PRESETS[g.distractors]
    assert dyn.role == "id" and dyn.light_flicker > 0 and dyn.moving_bodies >= 1 and dyn.camera_shake_std > 0
    from dataclasses import asdict

    assert g.masks and len(g.ood_distractors) == 3
    pushed = {"ood_dynamic_objects": {"moving_bodies"}, "ood_dynamic_shake": {"camera_shake_std"},
              "ood_dynamic_light": {"light_scale", "light_pos_std", "light_flicker"}}
    for name in g.ood_distractors:  # each OOD split keeps everything dynamic moves and pushes one factor
        ood = asdict(PRESETS[name])
        assert ood.pop("role") == "ood" and {k for k, v in ood.items() if v != asdict(dyn)[k]} == pushed[name]
    assert PRESETS["ood_dynamic_objects"].moving_bodies > dyn.moving_bodies
    assert PRESETS["ood_dynamic_shake"].camera_shake_std > dyn.camera_shake_std
    assert PRESETS["ood_dynamic_light"].light_flicker > dyn.light_flicker
    assert [a.name for a in exp.arms] == ["vanilla", "motion_focused", "vanilla_light", "supervised"] and len(exp.seeds) >= 3
    assert "task" in exp.eval.cka_domains
