"""Write episodes as a LeRobot v3.0 dataset with pyarrow + PyAV (no lerobot dependency).

Use `write_lerobot(out, episodes, ...)`: it writes into a temporary sibling directory and renames
it into place only when every episode and all metadata are written (see artifacts.atomic_dir).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlam.artifacts import atomic_dir, atomic_write_json
from openlam.data import lerobot_format as fmt
from openlam.data import lerobot_stats as lst
from openlam.data.episode import Episode
from openlam.data.video import VideoAppender, VideoConfig
from openlam.errors import DataError


@dataclass
class WriterConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    data_file_mb: float = 100.0
    video_file_mb: float = 200.0
    chunks_size: int = 1000


RESERVED = {"action", "observation.state", *fmt.DEFAULT_FEATURES}


class _FileCursor:
    """(chunk, file) numbering: file index rolls into the next chunk after `chunks_size` files."""

    def __init__(self, chunks_size: int) -> None:
        self.chunk, self.file, self.chunks_size = 0, 0, chunks_size

    def advance(self) -> None:
        self.file += 1
        if self.file >= self.chunks_size:
            self.chunk, self.file = self.chunk + 1, 0


class LeRobotWriter:
    """Appends episodes; `close()` writes the metadata. All episodes must share one schema."""

    def __init__(self, root: Path, fps: float, robot_type: str = "unknown", cfg: WriterConfig | None = None):
        self.root = Path(root)
        self.fps = fps
        self.robot_type = robot_type
        self.cfg = cfg or WriterConfig()
        self.schema: dict[str, Any] | None = None
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.episode_extras: list[dict[str, Any]] = []
        self.total_frames = 0
        self._videos: dict[str, VideoAppender] = {}
        self._video_cursor: dict[str, _FileCursor] = {}
        self._data_writer: pq.ParquetWriter | None = None
        self._data_path: Path | None = None
        self._data_cursor = _FileCursor(self.cfg.chunks_size)
        self._episode_stats: list[dict[str, lst.Stats]] = []  # per episode: feature -> stats
        self._stats_types: dict[str, pa.DataType] = {}  # episodes-table column -> arrow type
        self._video_info: dict[str, dict[str, Any]] = {}

    # -- schema -----------------------------------------------------------------------------
    def _schema_of(self, ep: Episode) -> dict[str, Any]:
        return {
            "cameras": {c: tuple(f.shape[1:3]) for c, f in ep.frames.items()},
            "mask_cameras": sorted(ep.masks),
            "action_dim": None if ep.actions is None else ep.actions.shape[1],
            "action_space": None if ep.action_space is None else ep.action_space.to_dict(),
            "state_dim": None if ep.state is None else ep.state.shape[1],
            "state_names": ep.state_names,
            "extras": {k: (str(v.dtype), tuple(v.shape[1:])) for k, v in ep.extras.items()},
        }

    def _check_schema(self, ep: Episode, where: str) -> None:
        if abs(ep.fps - self.fps) > 1e-6:
            raise DataError(where, "fps", f"{self.fps} (dataset fps)", f"{ep.fps}")
        for name in ep.extras:
            if name in RESERVED or name.startswith((fmt.IMAGE_PREFIX, fmt.MASK_PREFIX)):
                raise DataError(where, f"extras[{name}]", "a name that is not a standard feature (action, observation.state, timestamp, ...)", name)
        if self.cfg.video.pix_fmt.endswith(("420p", "422p")):
            for cam, f in ep.frames.items():
                if f.shape[1] % 2 or f.shape[2] % 2:
                    raise DataError(where, f"frames[{cam}]", f"even height and width for {self.cfg.video.pix_fmt} video", f"{f.shape[1]}x{f.shape[2]}")
        if ep.state is not None and ep.state_names is not None and len(ep.state_names) != ep.state.shape[1]:
            raise DataError(where, "state_names", f"{ep.state.shape[1]} names (state dims)", str(len(ep.state_names)))
        s = self._schema_of(ep)
        if self.schema is None:
            self.schema = s
            return
        for key, want in self.schema.items():
            if s[key] != want:
                raise DataError(where, key, f"{want} (as in the first episode)", f"{s[key]}")

    # -- files --------------------------------------------------------------------------------
    def _video(self, key: str, h: int, w: int, mask: bool) -> VideoAppender:
        cur = self._video_cursor.setdefault(key, _FileCursor(self.cfg.chunks_size))
        app = self._videos.get(key)
        if app is not None and app.size_bytes() >= self.cfg.video_file_mb * 2**20:
            app.close()
            cur.advance()
            app = None
        if app is None:
            path = self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=cur.chunk, file_index=cur.file)
            app = VideoAppender(path, self.fps, w, h, self.cfg.video, mask=mask)
            self._videos[key] = app
            if key not in self._video_info:
                self._video_info[key] = {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264" if app.codec_name in ("libx264", "h264") else app.codec_name,
                    "video.pix_fmt": app.stream.pix_fmt,
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                    **({"openlam.mask": True} if mask else {}),
                }
        return app

    def _data_sink(self, schema: pa.Schema) -> tuple[pq.ParquetWriter, Path]:
        if self._data_writer is not None and self._data_path is not None:
            if self._data_path.stat().st_size >= self.cfg.data_file_mb * 2**20:
                self._data_writer.close()
                self._data_writer = None
                self._data_cursor.advance()
        if self._data_writer is None:
            c = self._data_cursor
            self._data_path = self.root / fmt.DATA_PATH.format(chunk_index=c.chunk, file_index=c.file)
            self._data_path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(self._data_path, schema, compression="snappy")
        assert self._data_path is not None
        return self._data_writer, self._data_path

    # -- episodes -----------------------------------------------------------------------------
    def add(self, ep: Episode) -> int:
        """Write one episode; returns its episode_index."""
        ei = len(self.episode_rows)
        where = f"episode {ei}"
        ep.validate(where)
        self._check_schema(ep, where)
        T = ep.length
        task_index = self.tasks.setdefault(ep.language, len(self.tasks))
        row: dict[str, Any] = {"episode_index": ei, "tasks": [ep.language], "length": T}

        # data parquet
        cols: dict[str, pa.Array] = {}
        stats: dict[str, lst.Stats] = {}  # every non-string feature, as LeRobot keeps them
        if ep.state is not None:
            cols["observation.state"] = _fixed_list(ep.state)
            stats["observation.state"] = lst.vector_stats(ep.state)
        if ep.actions is not None:
            cols["action"] = _fixed_list(ep.actions)
            stats["action"] = lst.vector_stats(ep.actions)
        for name, x in ep.extras.items():
            cols[name] = _fixed_list(x) if x.ndim == 2 else pa.array(x)
            if x.dtype.kind in "biuf":
                stats[name] = lst.vector_stats(x)
        frame_index = np.arange(T, dtype=np.int64)
        book = {"timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
                "episode_index": np.full(T, ei, np.int64), "index": np.arange(self.total_frames, self.total_frames + T, dtype=np.int64),
                "task_index": np.full(T, task_index, np.int64)}
        for name, x in book.items():
            cols[name] = pa.array(x)
            stats[name] = lst.vector_stats(x)
        table = pa.table(cols)
        writer, _ = self._data_sink(table.schema)
        writer.write_table(table)
        row["data/chunk_index"], row["data/file_index"] = self._data_cursor.chunk, self._data_cursor.file
        row["dataset_from_index"], row["dataset_to_index"] = self.total_frames, self.total_frames + T

        # videos
        for cam, frames in ep.frames.items():
            for key, data, is_mask in [(fmt.image_key(cam), frames, False)] + (
                [(fmt.mask_key(cam), ep.masks[cam], True)] if cam in ep.masks else []
            ):
                app = self._video(key, frames.shape[1], frames.shape[2], is_mask)
                start = app.frames_written
                app.append(data)
                cur = self._video_cursor[key]
                row[f"videos/{key}/chunk_index"] = cur.chunk
                row[f"videos/{key}/file_index"] = cur.file
                row[f"videos/{key}/from_timestamp"] = start / self.fps
                row[f"videos/{key}/to_timestamp"] = (start + T) / self.fps
                stats[key] = lst.camera_stats(data)
        for feature, st in stats.items():
            for col, (typ, value) in lst.episode_columns(feature, st).items():
                self._stats_types.setdefault(col, typ)
                row[col] = value
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        self._episode_stats.append(stats)
        self.episode_rows.append(row)
        self.episode_extras.append({"robot": ep.robot, "metadata": ep.metadata})
        self.total_frames += T
        return ei

    def close(self, extras: dict[str, Any] | None = None) -> None:
        """Finish the streams and write meta/ (info.json last)."""
        if not self.episode_rows:
            raise DataError(self.root, "episodes", "at least one episode to write", "0")
        for app in self._videos.values():
            app.close()
        if self._data_writer is not None:
            self._data_writer.close()
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        tasks = sorted(self.tasks, key=self.tasks.get)
        pq.write_table(fmt.tasks_table(tasks), meta / "tasks.parquet")
        ep_path = self.root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
        ep_path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.episode_rows[0])
        pq.write_table(pa.Table.from_pylist(self.episode_rows, schema=_episodes_schema(keys, self._stats_types)), ep_path,
                       compression="snappy")
        assert self.schema is not None
        features = self._features()
        stats = {k: lst.to_json(lst.aggregate([e[k] for e in self._episode_stats])) for k in self._episode_stats[0]}
        atomic_write_json(meta / "stats.json", stats)
        atomic_write_json(
            self.root / fmt.OPENLAM_META,
            {
                "format": "openlam-extras/1",
                "action_space": self.schema["action_space"],
                "state_names": self.schema["state_names"],
                "episodes": self.episode_extras,
                **(extras or {}),
            },
        )
        info = {
            "codebase_version": fmt.CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episode_rows),
            "total_frames": self.total_frames,
            "total_tasks": len(tasks),
            "chunks_size": self.cfg.chunks_size,
            "data_files_size_in_mb": self.cfg.data_file_mb,
            "video_files_size_in_mb": self.cfg.video_file_mb,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {"train": f"0:{len(self.episode_rows)}"},
            "data_path": fmt.DATA_PATH,
            "video_path": fmt.VIDEO_PATH,
            "features": features,
        }
        atomic_write_json(meta / "info.json", info)

    def _features(self) -> dict[str, Any]:
        assert self.schema is not None
        feats: dict[str, Any] = {}
        for cam, (h, w) in self.schema["cameras"].items():
            for key in [fmt.image_key(cam)] + ([fmt.mask_key(cam)] if cam in self.schema["mask_cameras"] else []):
                feats[key] = {
                    "dtype": "video",
                    "shape": [h, w, 3],
                    "names": ["height", "width", "channels"],
                    "info": self._video_info[key],
                }
        if self.schema["state_dim"] is not None:
            names = self.schema["state_names"] or [f"s{i}" for i in range(self.schema["state_dim"])]
            feats["observation.state"] = {"dtype": "float32", "shape": [self.schema["state_dim"]], "names": names}
        if self.schema["action_dim"] is not None:
            feats["action"] = {
                "dtype": "float32",
                "shape": [self.schema["action_dim"]],
                "names": self.schema["action_space"]["names"],
                # also here, not only in meta/openlam.json: LeRobot's edit tools drop unknown files in
                # meta/ but keep unknown keys of a feature
                "kinds": self.schema["action_space"]["kinds"],
            }
        for name, (dtype, shape) in self.schema["extras"].items():
            feats[name] = {"dtype": "bool" if dtype == "bool" else dtype, "shape": list(shape) or [1], "names": None}
        feats.update(fmt.DEFAULT_FEATURES)
        return feats


def _fixed_list(x: np.ndarray) -> pa.Array:
    """(T, D) -> fixed_size_list[D]; a (T, 1) column is written as a scalar, which is what LeRobot
    expects for a feature of shape [1]."""
    x = np.ascontiguousarray(x)
    if x.shape[1] == 1:
        return pa.array(x[:, 0])
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _episodes_schema(keys: list[str], stats_types: dict[str, pa.DataType]) -> pa.Schema:
    fields = []
    for k in keys:
        if k in stats_types:
            fields.append(pa.field(k, stats_types[k]))
        elif k == "tasks":
            fields.append(pa.field(k, pa.list_(pa.string())))
        elif k.endswith("_timestamp"):
            fields.append(pa.field(k, pa.float64()))
        else:
            fields.append(pa.field(k, pa.int64()))
    return pa.schema(fields)


def write_lerobot(
    out: str | Path,
    episodes: Iterable[Episode],
    *,
    fps: float,
    robot_type: str = "unknown",
    cfg: WriterConfig | None = None,
    extras: dict[str, Any] | Callable[[LeRobotWriter], dict[str, Any]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write all `episodes` to `out` atomically. `extras` (dict, or a callable taking the writer
    and returning a dict, for values known only at the end such as splits) go to meta/openlam.json."""
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        w = LeRobotWriter(tmp, fps=fps, robot_type=robot_type, cfg=cfg)
        try:
            for ep in episodes:
                w.add(ep)
        except BaseException:
            for app in w._videos.values():
                try:
                    app.container.close()
                except Exception:
                    pass
            if w._data_writer is not None:
                w._data_writer.close()
            raise
        w.close(extras(w) if callable(extras) else extras)
    return out

