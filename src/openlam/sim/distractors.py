"""Visual distractors applied through the MuJoCo model at run time, as named presets.

Each factor is sampled per episode; camera shake, light flicker and moving distractor bodies also
move from frame to frame. Everything is drawn from the episode's seeded RNG, and the values used
are recorded per frame (`observation.distractors`, names from `param_names(cameras)`): the
per-episode factors, the flickered light scale, each moving body's position and each camera's
shake rotation, so OOD splits, failure analyses and the distractor probes of the evaluation can
see exactly what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import mujoco
import numpy as np

from openlam.sim.render import ExtraGeom

Role = Literal["id", "ood"]


@dataclass
class DistractorConfig:
    role: Role = "id"  # in-distribution presets go to train/val/test; OOD presets to split ood:<name>
    camera_pos_std: float = 0.0  # metres, per episode
    camera_rot_std: float = 0.0  # degrees, per episode
    camera_shake_std: float = 0.0  # degrees, per frame (0: none)
    light_scale: tuple[float, float] = (1.0, 1.0)  # diffuse multiplier range, per episode
    light_pos_std: float = 0.0  # metres, per episode
    light_flicker: float = 0.0  # relative amplitude, per frame
    colour_jitter: float = 0.0  # max per-channel tint on table/floor/wall materials, per episode
    textures: Literal["keep", "checker", "noise"] = "keep"  # procedural table/floor textures, per episode
    texture_palette: Literal["warm", "cool", "any"] = "any"
    moving_bodies: int = 0  # visual distractor objects moving over the table, per frame (at most MAX_BODIES)
    body_speed: float = 0.3  # metres / second

    def __post_init__(self) -> None:
        if not 0 <= self.moving_bodies <= MAX_BODIES:
            raise ValueError(f"distractors: moving_bodies must be 0..{MAX_BODIES} (their positions are recorded per frame), "
                             f"got {self.moving_bodies}")


MAX_BODIES = 3  # moving bodies whose positions observation.distractors has room for


PRESETS: dict[str, DistractorConfig] = {
    "none": DistractorConfig(),
    # viewpoint jitter only: the MVP-LAM setting (same scene, cameras not bolted down)
    "jitter": DistractorConfig(camera_pos_std=0.03, camera_rot_std=2.0),
    # mild everyday variation, in-distribution
    "mild": DistractorConfig(camera_pos_std=0.02, camera_rot_std=1.5, light_scale=(0.8, 1.2), light_pos_std=0.2,
                             colour_jitter=0.1, textures="keep"),
    # things that move with time, in-distribution (LAOM's failure case for LAMs): light flicker, one
    # moving distractor body, camera shake; each at a milder level than its OOD preset below
    "dynamic": DistractorConfig(light_flicker=0.15, moving_bodies=1, body_speed=0.25, camera_shake_std=0.5),
    # OOD presets: each changes one thing the training data never showed
    "ood_camera": DistractorConfig(role="ood", camera_pos_std=0.12, camera_rot_std=8.0),
    "ood_light": DistractorConfig(role="ood", light_scale=(0.3, 1.8), light_pos_std=0.6, light_flicker=0.25),
    "ood_texture": DistractorConfig(role="ood", colour_jitter=0.35, textures="checker", texture_palette="cool"),
    "ood_objects": DistractorConfig(role="ood", moving_bodies=3, body_speed=0.3),
    "ood_shake": DistractorConfig(role="ood", camera_shake_std=1.5),
    "ood_all": DistractorConfig(role="ood", camera_pos_std=0.08, camera_rot_std=5.0, camera_shake_std=0.8,
                                light_scale=(0.4, 1.6), light_pos_std=0.4, light_flicker=0.15, colour_jitter=0.3,
                                textures="noise", moving_bodies=2),
}
# OOD for data trained under `dynamic`: everything `dynamic` moves, with one factor pushed further
# (so each split isolates that factor rather than also removing the others)
PRESETS |= {
    "ood_dynamic_objects": replace(PRESETS["dynamic"], role="ood", moving_bodies=3),
    "ood_dynamic_shake": replace(PRESETS["dynamic"], role="ood", camera_shake_std=1.5),
    "ood_dynamic_light": replace(PRESETS["dynamic"], role="ood", light_scale=(0.4, 1.6), light_pos_std=0.4, light_flicker=0.3),
}

EPISODE_PARAMS = ["cam_dx", "cam_dy", "cam_dz", "cam_rot_deg", "light_scale", "colour_shift", "n_bodies"]


def param_names(cameras: list[str]) -> list[str]:
    """Names of the per-frame `observation.distractors` vector: the per-episode factors (light_scale
    flickers per frame), then each moving body's position (zeros for absent bodies), then each
    camera's shake as a rotation vector in degrees (zeros without shake)."""
    bodies = [f"body{i}_{ax}" for i in range(MAX_BODIES) for ax in "xyz"]
    return EPISODE_PARAMS + bodies + [f"shake_{c}_{ax}" for c in cameras for ax in ("rx", "ry", "rz")]


def preset(name: str) -> DistractorConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown distractor preset '{name}'; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def _axis_angle_quat(axis: np.ndarray, deg: float) -> np.ndarray:
    q = np.empty(4)
    mujoco.mju_axisAngle2Quat(q, axis / (np.linalg.norm(axis) + 1e-12), np.deg2rad(deg))
    return q


def _palette(rng: np.random.Generator, name: str) -> np.ndarray:
    c = rng.uniform(0.15, 0.95, size=3)
    if name == "warm":
        c[0], c[2] = max(c[0], 0.6), min(c[2], 0.4)
    elif name == "cool":
        c[2], c[0] = max(c[2], 0.6), min(c[0], 0.4)
    return c


class Distractors:
    """Holds the model's original values; `begin_episode` samples, `step` animates per frame."""

    TEXTURES = ("T_table", "T_floor")
    MATERIALS = ("table_wood", "basic_floor", "wall_metal")

    def __init__(self, model: mujoco.MjModel, cfg: DistractorConfig, cameras: list[str]):
        self.model, self.cfg = model, cfg
        self.cam_ids = [model.camera(c).id for c in cameras]
        self.cam_pos0 = model.cam_pos.copy()
        self.cam_quat0 = model.cam_quat.copy()
        self.light_diffuse0 = model.light_diffuse.copy()
        self.light_pos0 = model.light_pos.copy()
        self.mat_ids = [model.material(m).id for m in self.MATERIALS if _has(model, mujoco.mjtObj.mjOBJ_MATERIAL, m)]
        self.mat_rgba0 = model.mat_rgba.copy()
        self.tex_ids = [model.texture(t).id for t in self.TEXTURES if _has(model, mujoco.mjtObj.mjOBJ_TEXTURE, t)]
        self.tex_data0 = {t: self._tex_view(t).copy() for t in self.tex_ids}
        self.textures_dirty = False
        self.bodies: list[dict] = []
        self.params = np.zeros(len(param_names(cameras)), np.float32)
        self._body_at = len(EPISODE_PARAMS)
        self._shake_at = self._body_at + 3 * MAX_BODIES

    def _tex_view(self, t: int) -> np.ndarray:
        m = self.model
        n = int(m.tex_height[t] * m.tex_width[t] * m.tex_nchannel[t])
        a = int(m.tex_adr[t])
        return m.tex_data[a : a + n].reshape(m.tex_height[t], m.tex_width[t], m.tex_nchannel[t])

    def begin_episode(self, rng: np.random.Generator) -> list[int]:
        """Sample this episode's factors; returns texture ids that need re-uploading."""
        m, cfg = self.model, self.cfg
        m.cam_pos[:] = self.cam_pos0
        m.cam_quat[:] = self.cam_quat0
        self.base_quat = {}
        offs = np.zeros(3)
        rot = 0.0
        for c in self.cam_ids:
            d = rng.normal(0, cfg.camera_pos_std, 3) if cfg.camera_pos_std else np.zeros(3)
            m.cam_pos[c] = self.cam_pos0[c] + d
            if cfg.camera_rot_std:
                ang = rng.normal(0, cfg.camera_rot_std)
                q = np.empty(4)
                mujoco.mju_mulQuat(q, self.cam_quat0[c], _axis_angle_quat(rng.normal(size=3), ang))
                m.cam_quat[c] = q
                rot += abs(ang) / len(self.cam_ids)
            offs += d / len(self.cam_ids)
            self.base_quat[c] = m.cam_quat[c].copy()
        self.light_scale = rng.uniform(*cfg.light_scale)
        m.light_diffuse[:] = np.clip(self.light_diffuse0 * self.light_scale, 0, 1)
        m.light_pos[:] = self.light_pos0 + (rng.normal(0, cfg.light_pos_std, self.light_pos0.shape) if cfg.light_pos_std else 0)
        m.mat_rgba[:] = self.mat_rgba0
        shift = 0.0
        if cfg.colour_jitter:
            for mid in self.mat_ids:
                tint = rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, 3)
                m.mat_rgba[mid, :3] = np.clip(self.mat_rgba0[mid, :3] + tint, 0, 1)
                shift += float(np.abs(tint).mean()) / len(self.mat_ids)
        changed = []
        if cfg.textures != "keep":
            for t in self.tex_ids:
                self._tex_view(t)[:] = self._procedural(rng, t)
                changed.append(t)
            self.textures_dirty = True
        elif self.textures_dirty:
            for t in self.tex_ids:
                self._tex_view(t)[:] = self.tex_data0[t]
                changed.append(t)
            self.textures_dirty = False
        self.bodies = []
        for _ in range(cfg.moving_bodies):
            self.bodies.append({
                "pos": np.array([rng.uniform(-0.4, 0.4), rng.uniform(0.45, 0.85), rng.uniform(0.05, 0.3)]),
                "vel": rng.normal(size=3) * np.array([1, 1, 0.3]),
                "size": np.array([rng.uniform(0.02, 0.05)] * 3),
                "type": int(rng.choice([mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_BOX])),
                "rgba": np.append(_palette(rng, "any"), 1.0),
            })
        for b in self.bodies:
            b["vel"] *= cfg.body_speed / (np.linalg.norm(b["vel"]) + 1e-9)
        self.params[:] = 0.0
        self.params[: self._body_at] = [*offs, rot, self.light_scale, shift, len(self.bodies)]
        return changed

    def _procedural(self, rng: np.random.Generator, t: int) -> np.ndarray:
        h, w, ch = self._tex_view(t).shape
        a, b = _palette(rng, self.cfg.texture_palette), _palette(rng, self.cfg.texture_palette)
        if self.cfg.textures == "checker":
            n = int(rng.integers(4, 16))
            yy, xx = np.mgrid[:h, :w]
            sel = ((yy * n // h + xx * n // w) % 2).astype(bool)
        else:  # low-frequency noise, upsampled
            k = int(rng.integers(4, 12))
            coarse = rng.random((k, k)) > 0.5
            sel = np.kron(coarse, np.ones((h // k + 1, w // k + 1), bool))[:h, :w]
        img = np.where(sel[..., None], a, b)[..., :ch]
        return (img * 255).astype(np.uint8)

    def step(self, rng: np.random.Generator, dt: float) -> list[ExtraGeom]:
        """Per-frame changes; returns the visual distractor bodies to draw this frame."""
        m, cfg = self.model, self.cfg
        if cfg.camera_shake_std:
            for j, c in enumerate(self.cam_ids):
                axis, deg = rng.normal(size=3), rng.normal(0, cfg.camera_shake_std)
                q = np.empty(4)
                mujoco.mju_mulQuat(q, self.base_quat[c], _axis_angle_quat(axis, deg))
                m.cam_quat[c] = q
                at = self._shake_at + 3 * j
                self.params[at : at + 3] = axis / (np.linalg.norm(axis) + 1e-12) * deg
        if cfg.light_flicker:
            s = self.light_scale * (1 + rng.uniform(-cfg.light_flicker, cfg.light_flicker))
            m.light_diffuse[:] = np.clip(self.light_diffuse0 * s, 0, 1)
            self.params[4] = s
        geoms = []
        for i, b in enumerate(self.bodies):
            b["pos"] += b["vel"] * dt
            for ax, (lo, hi) in enumerate([(-0.45, 0.45), (0.4, 0.9), (0.03, 0.35)]):
                if not lo <= b["pos"][ax] <= hi:
                    b["vel"][ax] *= -1
                    b["pos"][ax] = np.clip(b["pos"][ax], lo, hi)
            geoms.append(ExtraGeom(b["type"], b["size"], b["pos"].copy(), b["rgba"]))
            self.params[self._body_at + 3 * i : self._body_at + 3 * i + 3] = b["pos"]
        return geoms


def _has(model: mujoco.MjModel, kind: int, name: str) -> bool:
    return mujoco.mj_name2id(model, kind, name) >= 0
