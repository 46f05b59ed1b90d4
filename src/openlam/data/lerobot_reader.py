"""Read any LeRobot v3.x dataset (any camera set, chunked files, video or image features)."""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from openlam.artifacts import fingerprint_files
from openlam.data import lerobot_format as fmt
from openlam.data.episode import ActionSpace, Episode
from openlam.data.source import EpisodeInfo, EpisodeSource
from openlam.data.splits import SplitConfig, check_splits, make_splits
from openlam.data.video import decode_range, resize_frame
from openlam.errors import DataError

REQUIRED_INFO = ["codebase_version", "fps", "features"]
REQUIRED_EPISODE_COLUMNS = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, "(whole file)", "valid JSON", f"parse error at line {e.lineno}: {e.msg}") from None


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _relative(rel: str, where: Path, field: str) -> str:
    """A path the dataset names must stay inside its folder: relative, no '..', no URL or protocol."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", rel) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise DataError(where, field, "a path relative to the dataset folder, without '..' or a protocol", repr(rel))
    return rel


def _inside(root: Path, rel: str, where: Path, field: str) -> Path:
    """root / rel, refused when its text leaves root. Symlinks are followed: a Hugging Face hub
    snapshot is a folder of links into its blob store, and links are made by whoever assembled the
    dataset on disk, not by its metadata."""
    return root / _relative(rel, where, field)  # relative, no '..': it cannot leave root by its text


def _names(feature: dict[str, Any], dim: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # e.g. {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return names
    return [f"d{i}" for i in range(dim)]


class LeRobotSource(EpisodeSource):
    def __init__(self, path: str | Path, split_config: SplitConfig | None = None):
        self.path = root = Path(path)
        info_path = root / "meta" / "info.json"
        self.info = info = _read_json(info_path)
        for key in REQUIRED_INFO:
            if key not in info:
                raise DataError(info_path, key, "present (LeRobot v3 info.json)", "missing")
        version = str(info["codebase_version"])
        if not version.startswith("v3"):
            raise DataError(info_path, "codebase_version", "v3.x (LeRobot v3 layout); convert older datasets with lerobot's v2.1->v3.0 converter", version)
        try:
            self.fps = float(info["fps"])
        except (TypeError, ValueError):
            raise DataError(info_path, "fps", "a positive number", repr(info["fps"])) from None
        if not self.fps > 0:
            raise DataError(info_path, "fps", "a positive number", str(info["fps"]))
        feats: dict[str, Any] = info["features"]
        if not isinstance(feats, dict) or not feats:
            raise DataError(info_path, "features", "a non-empty mapping of feature name -> {dtype, shape}")
        for name, f in feats.items():
            if not isinstance(f, dict) or "dtype" not in f or "shape" not in f:
                raise DataError(info_path, f"features.{name}", "a mapping with 'dtype' and 'shape'", repr(f)[:80])
            if not isinstance(f["shape"], list) or not all(isinstance(d, int) and d >= 0 for d in f["shape"]):
                raise DataError(info_path, f"features.{name}.shape", "a list of non-negative ints", repr(f["shape"])[:80])
        self.features = feats
        visual = {k: f for k, f in feats.items() if f["dtype"] in ("video", "image")}
        self.camera_keys = {fmt.camera_of(k): k for k in visual if not k.startswith(fmt.MASK_PREFIX)}
        self.mask_keys = {fmt.camera_of(k): k for k in visual if k.startswith(fmt.MASK_PREFIX)}
        self.cameras = list(self.camera_keys)
        self.mask_cameras = [c for c in self.mask_keys if c in self.camera_keys]
        if not self.cameras:
            raise DataError(info_path, "features", "at least one camera (a feature of dtype video or image)", "none")
        for cam, key in {**self.camera_keys, **self.mask_keys}.items():  # names become file names of the frame cache
            if not SAFE_NAME.fullmatch(cam) or ".." in cam:
                raise DataError(info_path, f"features.{key}", "a camera name of letters, digits, '_', '-' and '.'", repr(cam))
        for field in ("video_path", "data_path"):
            if field in info:
                _relative(str(info[field]), info_path, field)
        self.video_path_tpl = info.get("video_path") or fmt.VIDEO_PATH

        self.extras_meta = _read_json(root / fmt.OPENLAM_META) if (root / fmt.OPENLAM_META).is_file() else {}
        self.tasks = self._read_tasks()
        self.ep_table = self._read_episodes()
        n = len(self.ep_table["episode_index"])
        if int(info.get("total_episodes", n)) != n:
            raise DataError(info_path, "total_episodes", f"{n} (rows in meta/episodes)", str(info.get("total_episodes")))

        a_feat = feats.get("action")
        self.action_dim = int(np.prod(a_feat["shape"])) if a_feat else None
        if a_feat and self.extras_meta.get("action_space"):
            try:
                self.action_space: ActionSpace | None = ActionSpace.from_dict(self.extras_meta["action_space"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(root / fmt.OPENLAM_META, "action_space", "{names: [...], kinds: [delta|absolute, ...]}", str(e)) from None
            if self.action_space.dim != self.action_dim:
                raise DataError(root / fmt.OPENLAM_META, "action_space.names", f"{self.action_dim} names (info.json action shape)", str(self.action_space.dim))
        elif a_feat and isinstance(a_feat.get("kinds"), list):  # openlam's copy in info.json (meta/openlam.json lost)
            try:
                self.action_space = ActionSpace(_names(a_feat, self.action_dim or 0), list(a_feat["kinds"]), "kinds from info.json")
            except (TypeError, ValueError) as e:
                raise DataError(info_path, "features.action.kinds", f"{self.action_dim} of delta|absolute", str(e)) from None
            if len(self.action_space.kinds) != self.action_dim:
                raise DataError(info_path, "features.action.kinds", f"{self.action_dim} kinds (the action shape)", str(len(a_feat["kinds"])))
        elif a_feat:
            self.action_space = ActionSpace.guess(_names(a_feat, self.action_dim or 0))
            warnings.warn(f"{root}: no action kinds recorded (no meta/openlam.json, no features.action.kinds in info.json); "
                          f"guessed from the names: {dict(zip(self.action_space.names, self.action_space.kinds))}. Action "
                          "targets over a gap sum delta dims and take absolute ones at the end: check the guess", stacklevel=2)
        else:
            self.action_space = None
        s_feat = feats.get("observation.state")
        self.state_names = _names(s_feat, int(np.prod(s_feat["shape"]))) if s_feat else None
        skip = {"action", "observation.state"} | set(fmt.DEFAULT_FEATURES) | set(visual)
        self.extra_features = [k for k, f in feats.items() if k not in skip and f["dtype"] not in ("string",)]
        self.robot_type = info.get("robot_type") or "unknown"

        ep_meta = self.extras_meta.get("episodes") or [{} for _ in range(n)]
        if len(ep_meta) != n:
            raise DataError(root / fmt.OPENLAM_META, "episodes", f"{n} entries (one per episode)", str(len(ep_meta)))
        self.episodes = []
        for i in range(n):
            tasks = self.ep_table["tasks"][i] if "tasks" in self.ep_table else []
            self.episodes.append(
                EpisodeInfo(
                    index=i,
                    length=int(self.ep_table["length"][i]),
                    fps=self.fps,
                    language=tasks[0] if tasks else "",
                    robot=ep_meta[i].get("robot", self.robot_type),
                    metadata=dict(ep_meta[i].get("metadata", {})),
                )
            )
        stored = self.extras_meta.get("splits")
        if stored and split_config is None:
            check_splits(stored, n, self.cameras, root / fmt.OPENLAM_META)
            self.splits = stored
        else:  # no stored splits, or an explicit split_config (which then replaces them)
            self.splits = make_splits(self.episodes, self.cameras, split_config or SplitConfig())
        self._table_cache: tuple[Path, pa.Table, np.ndarray] | None = None

    # -- metadata ---------------------------------------------------------------------------
    def _read_tasks(self) -> dict[int, str]:
        p = self.path / "meta" / "tasks.parquet"
        if not p.is_file():
            if int(self.info.get("total_tasks", 0)) > 0:
                raise DataError(p, "(file)", "meta/tasks.parquet (info.json says total_tasks > 0)", "missing")
            return {}
        try:
            t = pq.read_table(p)
        except (pa.ArrowException, OSError) as e:
            raise DataError(p, "(file)", "a readable parquet file", f"{type(e).__name__}: {e}") from None
        idx_col = "task_index"
        txt_col = next((c for c in ("task", "__index_level_0__") if c in t.column_names), None)
        if idx_col not in t.column_names or txt_col is None:
            raise DataError(p, "columns", "task_index and task (string index)", str(t.column_names))
        return dict(zip(t[idx_col].to_pylist(), t[txt_col].to_pylist()))

    def _read_episodes(self) -> dict[str, list[Any]]:
        files = sorted((self.path / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DataError(self.path / "meta" / "episodes", "(files)", "chunk-XXX/file-YYY.parquet episode tables", "none")
        tables = []
        for f in files:
            try:
                t = pq.read_table(f)
            except (pa.ArrowException, OSError) as e:
                raise DataError(f, "(file)", "a readable parquet file", f"{type(e).__name__}: {e}") from None
            t = t.select([c for c in t.column_names if not c.startswith("stats/")])
            missing = [c for c in REQUIRED_EPISODE_COLUMNS if c not in t.column_names]
            for key in self.camera_keys.values():
                if self.features[key]["dtype"] == "video":
                    missing += [c for c in (f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp") if c not in t.column_names]
            if missing:
                raise DataError(f, "columns", f"episode columns including {missing}", "missing")
            tables.append(t)
        table = pa.concat_tables(tables, promote_options="default").to_pydict()
        order = np.argsort(table["episode_index"], kind="stable")
        table = {k: [v[i] for i in order] for k, v in table.items()}
        if table["episode_index"] != list(range(len(order))):
            raise DataError(files[0], "episode_index", f"0..{len(order) - 1} without gaps", f"{table['episode_index'][:10]}...")
        return table

    def fingerprint(self) -> str:
        files = [p for p in self.path.rglob("*") if p.is_file()]
        return fingerprint_files(files, root=self.path)

    # -- episodes -----------------------------------------------------------------------------
    def _rows(self, i: int) -> tuple[Path, pa.Table]:
        e = self.ep_table
        path = _inside(self.path, (self.info.get("data_path") or fmt.DATA_PATH).format(
            chunk_index=e["data/chunk_index"][i], file_index=e["data/file_index"][i], episode_chunk=0, episode_index=i
        ), self.path / "meta" / "info.json", "data_path")
        if self._table_cache is None or self._table_cache[0] != path:
            if not path.is_file():
                raise DataError(path, "(file)", f"data parquet for episode {i}", "missing")
            try:
                t = pq.read_table(path)
            except (pa.ArrowException, OSError) as e:
                raise DataError(path, "(file)", "a readable parquet file", f"{type(e).__name__}: {e}") from None
            if "index" not in t.column_names:
                raise DataError(path, "index", "a global frame index column", "missing")
            self._table_cache = (path, t, t["index"].to_numpy())
        _, t, index = self._table_cache
        lo, hi = e["dataset_from_index"][i], e["dataset_to_index"][i]
        a, b = np.searchsorted(index, lo), np.searchsorted(index, hi)
        rows = t.slice(a, b - a)
        length = e["length"][i]
        if rows.num_rows != length or hi - lo != length:
            raise DataError(path, "rows", f"{length} rows for episode {i} (index {lo}..{hi - 1})", f"{rows.num_rows}")
        if "episode_index" in rows.column_names and not np.all(rows["episode_index"].to_numpy() == i):
            raise DataError(path, "episode_index", f"{i} for rows {lo}..{hi - 1}")
        return path, rows

    def _array(self, rows: pa.Table, col: str, path: Path, i: int) -> np.ndarray:
        if col not in rows.column_names:
            raise DataError(path, col, f"a column '{col}' (declared in info.json features)", "missing")
        c = rows[col].combine_chunks()
        T = rows.num_rows
        if pa.types.is_list(c.type) or pa.types.is_fixed_size_list(c.type) or pa.types.is_large_list(c.type):
            flat = c.flatten().to_numpy(zero_copy_only=False)
            if flat.size % max(T, 1):
                raise DataError(path, col, "equal-length vectors per frame", f"{flat.size} values for {T} frames (episode {i})")
            arr = flat.reshape(T, -1)
        else:  # scalar column: a feature of shape [1]
            arr = c.to_numpy(zero_copy_only=False)
            if col in ("action", "observation.state"):
                arr = arr.reshape(T, 1)
        return arr

    def _video(self, key: str, i: int, size: int | None, crop: str, mask: bool) -> np.ndarray:
        e = self.ep_table
        T = e["length"][i]
        col = f"videos/{key}"
        if f"{col}/from_timestamp" not in e:
            raise DataError(self.path / "meta" / "episodes", f"{col}/from_timestamp", "present for every video feature", "missing")
        path = self.video_file(key, i)
        start = float(e[f"{col}/from_timestamp"][i])
        if f"{col}/to_timestamp" in e:
            span = (float(e[f"{col}/to_timestamp"][i]) - start) * self.fps
            if abs(span - T) > 0.5:
                raise DataError(
                    self.path / "meta" / "episodes", f"{col}/to_timestamp",
                    f"{T} frames of video for episode {i} (length column)", f"{span:.1f} frames",
                )
        return decode_range(path, start, T, self.fps, mask=mask, size=size, crop=crop, where=f"episode {i}")

    def video_file(self, key: str, i: int) -> Path:
        """The video file holding episode i of feature `key` (inside the dataset folder)."""
        e = self.ep_table
        rel = self.video_path_tpl.format(video_key=key, chunk_index=e[f"videos/{key}/chunk_index"][i],
                                         file_index=e[f"videos/{key}/file_index"][i], episode_chunk=0, episode_index=i)
        return _inside(self.path, rel, self.path / "meta" / "info.json", "video_path")

    def _image_column(self, rows: pa.Table, key: str, path: Path, size: int | None, crop: str, mask: bool) -> np.ndarray:
        if key not in rows.column_names:
            raise DataError(path, key, "an image column (dtype image)", "missing")
        out = []
        for item in rows[key].to_pylist():
            data = item.get("bytes") if isinstance(item, dict) else item
            if data is None and isinstance(item, dict) and item.get("path"):
                rel = os.path.relpath(path.parent / _relative(str(item["path"]), path, key), self.path)
                data = _inside(self.path, rel, path, key).read_bytes()
            img = np.asarray(Image.open(io.BytesIO(data)).convert("L" if mask else "RGB"))
            img = resize_frame(img, size, crop)
            out.append(img > 127 if mask else img)
        return np.stack(out)

    def load(self, index: int, cameras: list[str] | None = None, *, size: int | None = None, crop: str = "center") -> Episode:
        if not 0 <= index < len(self.episodes):
            raise IndexError(f"{self.path}: episode {index} out of range 0..{len(self.episodes) - 1}")
        cams = self.check_cameras(cameras)
        path, rows = self._rows(index)
        frames, masks = {}, {}
        for cam in cams:
            for key, store, is_mask in [(self.camera_keys[cam], frames, False)] + (
                [(self.mask_keys[cam], masks, True)] if cam in self.mask_cameras else []
            ):
                if self.features[key]["dtype"] == "video":
                    store[cam] = self._video(key, index, size, crop, is_mask)
                else:
                    store[cam] = self._image_column(rows, key, path, size, crop, is_mask)
        info = self.episodes[index]
        actions = state = None
        if self.action_dim is not None:
            actions = self._array(rows, "action", path, index).astype(np.float32)
        if self.state_names is not None:
            state = self._array(rows, "observation.state", path, index).astype(np.float32)
        extras = {k: self._array(rows, k, path, index) for k in self.extra_features}
        ep = Episode(
            frames=frames, fps=self.fps, language=info.language, robot=info.robot, masks=masks,
            actions=actions, action_space=self.action_space, state=state, state_names=self.state_names,
            extras=extras, metadata=dict(info.metadata),
        )
        ep.validate(f"{path} (episode {index})")
        return ep
