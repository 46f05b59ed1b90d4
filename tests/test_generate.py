from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from openlam.config import from_dict
from openlam.data import open_dataset
from openlam.errors import DataError
from openlam.sim.generate import GenerateConfig, generate, run_episode

pytestmark = pytest.mark.sim


def cfg(**kw) -> GenerateConfig:
    base = {"tasks": ["reach-v3"], "episodes": 1, "cameras": ["corner", "topview"], "size": 64, "workers": 1, "max_steps": 120}
    return from_dict(GenerateConfig, base | kw)


def test_masks_cover_exactly_the_robot():
    """Mask = pixels that change when the robot's geoms are hidden (IoU), in every view."""
    import mujoco

    from openlam.sim.metaworld_env import make_env, make_policy, robot_geom_ids
    from openlam.sim.render import MultiViewRenderer

    env, pol = make_env("push-v3"), make_policy("push-v3")
    env.seed(1)
    obs, _ = env.reset()
    for _ in range(25):
        obs, *_ = env.step(pol.get_action(obs))
    robot = robot_geom_ids(env.model)
    with MultiViewRenderer(env.model, ["corner", "corner2", "topview"], 64, robot) as r:
        frames, masks = r.render(env.data)
        env.model.geom_group[robot] = 5
        r._opt.geomgroup[5] = 0
        hidden, _ = r.render(env.data, masks=False)
    for cam in frames:
        changed = np.abs(frames[cam].astype(int) - hidden[cam]).max(-1) > 8
        m = masks[cam]
        iou = (m & changed).sum() / (m | changed).sum()
        assert m.mean() > 0.03, cam  # the arm is in view
        assert iou > 0.9, (cam, iou)
    env.close()
    assert mujoco is not None


def test_expert_episodes_succeed_with_labels():
    ep = run_episode("button-press-topdown-v3", 0, cfg(tasks=["button-press-topdown-v3"]))
    T = ep.length
    assert ep.metadata["success"] and ep.metadata["success_step"] < T
    assert set(ep.frames) == {"corner", "topview"} and ep.frames["corner"].shape == (T, 64, 64, 3)
    assert ep.masks["corner"].shape == (T, 64, 64) and 0.02 < ep.masks["corner"].mean() < 0.6
    assert ep.actions.shape == (T, 4) and np.abs(ep.actions).max() <= 1.0
    assert ep.state.shape == (T, 4) and ep.extras["next.success"][-1] and not ep.extras["next.success"][0]
    assert ep.language == "press the button from the top" and ep.fps == pytest.approx(80.0)
    # state follows actions: the hand moves in the direction it is commanded (x,y,z)
    dpos = np.diff(ep.state[:, :3], axis=0)
    corr = [np.corrcoef(ep.actions[:-1, d], dpos[:, d])[0, 1] for d in range(3)]
    assert min(corr) > 0.5, corr


def test_deterministic_per_seed_and_noise_varies():
    c = cfg(action_noise=0.2)
    a, b = run_episode("reach-v3", 0, c), run_episode("reach-v3", 0, c)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.frames["corner"], b.frames["corner"])
    other = run_episode("reach-v3", 1, c)
    assert not np.array_equal(a.actions[:10], other.actions[:10])
    clean = run_episode("reach-v3", 0, cfg())
    assert not np.allclose(a.actions[:20], clean.actions[:20])


def test_distractor_presets_change_pixels_not_labels():
    clean = run_episode("reach-v3", 0, cfg(max_steps=10))
    dis = run_episode("reach-v3", 0, cfg(max_steps=10, distractors="ood_all"))
    np.testing.assert_array_equal(clean.actions, dis.actions)  # same task variation + policy
    assert np.abs(clean.frames["corner"].astype(int) - dis.frames["corner"]).mean() > 10
    d = dis.extras["observation.distractors"]
    names = dis.metadata["distractor_params"]
    assert d.shape == (10, len(names)) and len(names) == 7 + 9 + 3 * 2 and dis.metadata["distractor_role"] == "ood"
    col = {n: d[:, i] for i, n in enumerate(names)}
    assert col["n_bodies"].max() == 2  # two moving bodies, each position recorded per frame
    dt = 1.0 / dis.fps
    for b in (0, 1):
        pos = np.stack([col[f"body{b}_{a}"] for a in "xyz"], 1)
        step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        assert np.median(step) == pytest.approx(0.3 * dt, rel=1e-3)  # body_speed of ood_all, bounces aside
    assert not np.any([col[f"body2_{a}"] for a in "xyz"])  # an absent body stays zero
    for c in ("corner", "topview"):  # each camera's own shake, per frame
        shake = np.stack([col[f"shake_{c}_{a}"] for a in ("rx", "ry", "rz")], 1)
        assert np.all(np.linalg.norm(shake, axis=1) > 0) and len(np.unique(shake[:, 0])) == 10
    assert not np.allclose(col["shake_corner_rx"], col["shake_topview_rx"])
    assert col["light_scale"].std() > 0  # flicker moves it per frame
    c = clean.extras["observation.distractors"]
    assert c.shape == d.shape and not c[:, 7:].any() and np.all(c[:, 4] == 1.0)  # no bodies, no shake, steady light


def test_generate_writes_valid_dataset_identical_across_workers(tmp_path):
    c1 = cfg(tasks=["reach-v3", "button-press-topdown-v3"], episodes=1, distractors="ood_light", max_steps=60)
    s = generate(c1, tmp_path / "w1", show_progress=False)
    assert s["episodes"] == 2 and s["steps"] > 0
    c2 = cfg(tasks=["reach-v3", "button-press-topdown-v3"], episodes=1, distractors="ood_light", max_steps=60, workers=2)
    generate(c2, tmp_path / "w2", show_progress=False)
    a, b = open_dataset(tmp_path / "w1"), open_dataset(tmp_path / "w2")
    assert a.splits["ood:ood_light"]["episodes"] == [0, 1] and a.splits["train"]["episodes"] == []
    for i in range(2):
        ea, eb = a.load(i), b.load(i)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.frames["topview"], eb.frames["topview"])
        np.testing.assert_array_equal(ea.masks["corner"], eb.masks["corner"])
    from openlam.data.validate import validate_dataset

    assert validate_dataset(tmp_path / "w1") == []


def test_killed_generation_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "openlam", "generate", "metaworld", "--tasks", "reach-v3", "--episodes", "20",
           "--cameras", "corner", "--size", "32", "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"MUJOCO_GL": "egl"})
    tmp = tmp_path / f".ds.tmp-{proc.pid}"
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp.glob("data/*/*.parquet")):
        time.sleep(0.2)
    assert list(tmp.glob("data/*/*.parquet")), "generator never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(DataError, match="unfinished temporary directory"):
        open_dataset(tmp)
    assert not (tmp / "meta" / "info.json").exists()


def test_render_mesh_lod_keeps_physics_and_pixels():
    full = run_episode("push-v3", 0, cfg(tasks=["push-v3"], max_steps=30, mesh_cell=0.0))
    lod = run_episode("push-v3", 0, cfg(tasks=["push-v3"], max_steps=30))  # default: 0.25/size m
    np.testing.assert_array_equal(full.actions, lod.actions)  # physics untouched
    np.testing.assert_array_equal(full.state, lod.state)
    diff = np.abs(full.frames["corner"].astype(int) - lod.frames["corner"])
    assert diff.mean() < 1.0, diff.mean()  # measured ~0.1 grey levels at 64 px
    iou = (full.masks["corner"] & lod.masks["corner"]).sum() / (full.masks["corner"] | lod.masks["corner"]).sum()
    assert iou > 0.97, iou

    from openlam.sim.metaworld_env import make_env
    from openlam.sim.render import simplify_visual_meshes

    env = make_env("push-v3")
    before, after = simplify_visual_meshes(env.model, 0.004)
    assert before > 40000 and after < 0.6 * before
    env.close()


def test_ood_episodes_form_their_own_split_with_their_own_seeds(tmp_path):
    c = cfg(episodes=3, max_steps=12, cameras=["corner"], distractors="jitter", ood_distractors=["ood_light"], ood_episodes=2,
            splits={"holdout_cameras": []})
    generate(c, tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    meta = [e.metadata for e in ds.episodes]
    assert [m["distractor_preset"] for m in meta] == ["jitter"] * 3 + ["ood_light"] * 2
    assert len({m["key"] for m in meta}) == 5  # distinct episodes, distinct seeds
    assert ds.splits["ood:ood_light"]["episodes"] == [3, 4]
    in_dist = set(ds.splits["train"]["episodes"]) | set(ds.splits["val"]["episodes"]) | set(ds.splits["test"]["episodes"])
    assert in_dist == {0, 1, 2}
    with pytest.raises(Exception, match="not an OOD preset"):
        from_dict(GenerateConfig, {"ood_distractors": ["jitter"], "ood_episodes": 1}).validate()


def test_generator_workers_end_with_a_killed_parent(tmp_path):
    """Pool workers (the same initializer as `generate --workers N`) must not outlive a parent killed
    with SIGKILL: nobody would collect what they compute."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, os, time\n"
        "from openlam.sim.generate import _worker_init\n"
        "def job(_):\n"
        f"    open(os.path.join({str(tmp_path)!r}, 'w%d' % os.getpid()), 'w').close()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    mp.get_context('spawn').Pool(2, initializer=_worker_init, initargs=(os.getpid(),)).map(job, range(2))\n")
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob("w*"))) < 2:
            time.sleep(0.1)
        workers = [int(p.name[1:]) for p in tmp_path.glob("w*")]
        assert len(workers) == 2, "workers never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def running(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while time.time() < deadline and any(running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if running(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, "workers outlived their killed parent"
