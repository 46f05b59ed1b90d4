"""Offscreen multi-view rendering with robot masks from MuJoCo segmentation rendering.

One GL context and one MjrContext serve every camera: each view is drawn into its own viewport of
one offscreen buffer and read back once per pass (RGB pass, then segmentation pass). Shadows,
reflections and multisampling are off: at 64 px they cost time and add nothing. Always `close()`
(or use as a context manager): EGL contexts are not reclaimed reliably by the garbage collector.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from mujoco import gl_context


@dataclass
class ExtraGeom:
    """A purely visual body added to every view's scene (used for moving distractors)."""

    type: int  # mujoco.mjtGeom
    size: np.ndarray  # (3,)
    pos: np.ndarray  # (3,)
    rgba: np.ndarray  # (4,)


def simplify_visual_meshes(model: mujoco.MjModel, cell: float) -> tuple[int, int]:
    """Render-only level of detail: merge mesh vertices on a `cell`-metre grid and drop the faces
    that collapse. Software GL cost is per transformed vertex, and the Sawyer's ~50k visual faces
    are far finer than a 64 px image resolves. Only meshes that no colliding geom uses are touched,
    and only the face lists the renderer uploads, so physics is unchanged. Returns faces
    (before, after)."""
    colliding = {int(model.geom_dataid[g]) for g in range(model.ngeom)
                 if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH and (model.geom_contype[g] or model.geom_conaffinity[g])}
    before = after = 0
    for i in range(model.nmesh):
        if i in colliding:
            continue
        va, vn = model.mesh_vertadr[i], model.mesh_vertnum[i]
        fa, fn = model.mesh_faceadr[i], model.mesh_facenum[i]
        key = np.floor(model.mesh_vert[va : va + vn] / cell).astype(np.int64)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        faces = first[inverse.reshape(-1)][model.mesh_face[fa : fa + fn]]
        keep = np.nonzero((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2]))[0]
        k = len(keep)
        model.mesh_face[fa : fa + k] = faces[keep]
        model.mesh_facenormal[fa : fa + k] = model.mesh_facenormal[fa : fa + fn][keep].copy()
        if model.mesh_facetexcoord.size:
            model.mesh_facetexcoord[fa : fa + k] = model.mesh_facetexcoord[fa : fa + fn][keep].copy()
        model.mesh_facenum[i] = k
        before, after = before + fn, after + k
    return before, after


class MultiViewRenderer:
    def __init__(self, model: mujoco.MjModel, cameras: list[str], size: int, mask_geoms: np.ndarray | None = None,
                 mesh_cell: float = 0.0):
        """mesh_cell > 0 simplifies visual meshes first (see simplify_visual_meshes); the model is
        modified in place, so give each renderer its own model when that matters."""
        self.model = model
        self.cameras = list(cameras)
        self.size = size
        for c in self.cameras:
            if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) < 0:
                names = [model.camera(i).name for i in range(model.ncam)]
                raise KeyError(f"camera '{c}' not in the model; available: {names}")
        if mesh_cell > 0:
            simplify_visual_meshes(model, mesh_cell)
        width = size * len(self.cameras)
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._gl = gl_context.GLContext(width, size)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._opt = mujoco.MjvOption()
        self._scenes = []
        self._cams = []
        for c in self.cameras:
            scene = mujoco.MjvScene(model, maxgeom=2000)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
                scene.flags[flag] = 0
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
            cam.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c)
            self._scenes.append(scene)
            self._cams.append(cam)
        self._rects = [mujoco.MjrRect(i * size, 0, size, size) for i in range(len(self.cameras))]
        self._full = mujoco.MjrRect(0, 0, width, size)
        self._rgb = np.empty((size, width, 3), np.uint8)
        self._seg = np.empty((size, width, 3), np.uint8)
        self.mask_geoms = mask_geoms
        self._closed = False

    def upload_texture(self, tex_id: int) -> None:
        """Push a texture edited in model.tex_data to the GL context."""
        self._gl.make_current()
        mujoco.mjr_uploadTexture(self.model, self._ctx, tex_id)

    def _add_extra(self, scene: mujoco.MjvScene, extra: list[ExtraGeom]) -> None:
        for g in extra:
            if scene.ngeom >= scene.maxgeom:
                raise RuntimeError("scene geom buffer full; too many distractor bodies")
            geom = scene.geoms[scene.ngeom]
            mujoco.mjv_initGeom(geom, g.type, g.size, g.pos, np.eye(3).reshape(-1), g.rgba.astype(np.float32))
            geom.segid = scene.ngeom  # occludes in the mask pass; not robot
            geom.objtype = mujoco.mjtObj.mjOBJ_UNKNOWN
            geom.objid = -1
            scene.ngeom += 1

    def render(self, data: mujoco.MjData, extra: list[ExtraGeom] | None = None, masks: bool = True) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Returns ({camera: (S, S, 3) uint8}, {camera: (S, S) bool robot mask})."""
        if self._closed:
            raise RuntimeError("renderer is closed")
        self._gl.make_current()
        for scene, cam, rect in zip(self._scenes, self._cams, self._rects):
            mujoco.mjv_updateScene(self.model, data, self._opt, None, cam, mujoco.mjtCatBit.mjCAT_ALL, scene)
            if extra:
                self._add_extra(scene, extra)
            mujoco.mjr_render(rect, scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, None, self._full, self._ctx)
        rgb = np.flipud(self._rgb)  # GL rows run bottom-up
        S = self.size
        frames = {c: rgb[:, i * S : (i + 1) * S].copy() for i, c in enumerate(self.cameras)}
        if not masks or self.mask_geoms is None:
            return frames, {}
        luts = []
        for scene, rect in zip(self._scenes, self._rects):
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 1
            scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
            mujoco.mjr_render(rect, scene, self._ctx)
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = 0
            scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
            # segment colour encodes segid + 1 (0 = background); map it to "is a robot geom"
            lut = np.zeros(scene.ngeom + 2, bool)
            for k in range(scene.ngeom):
                g = scene.geoms[k]
                if g.objtype == mujoco.mjtObj.mjOBJ_GEOM and 0 <= g.objid < len(self.mask_geoms) and g.segid >= 0:
                    lut[g.segid + 1] = self.mask_geoms[g.objid]
            luts.append(lut)
        mujoco.mjr_readPixels(self._seg, None, self._full, self._ctx)
        seg = np.flipud(self._seg).astype(np.int64)
        ids = seg[..., 0] + (seg[..., 1] << 8) + (seg[..., 2] << 16)
        out = {}
        for i, (c, lut) in enumerate(zip(self.cameras, luts)):
            block = ids[:, i * S : (i + 1) * S]
            out[c] = lut[np.clip(block, 0, len(lut) - 1)] & (block < len(lut))
        return frames, out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._gl.make_current()
        self._ctx.free()
        self._gl.free()

    def __enter__(self) -> MultiViewRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
