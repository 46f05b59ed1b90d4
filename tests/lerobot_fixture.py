"""Build a dataset the way LeRobot v3.0 lays it out, by hand (not with openlam's writer), so the
reader is tested against the format rather than against itself: AV1 video with several episodes
per mp4, a PNG `image` camera stored in parquet, data/video/episode tables split over files and
chunks, per-episode stats columns, pandas-style tasks.parquet, and no openlam extras."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from conftest import coded_frames
from openlam.data.lerobot_format import tasks_table

FPS = 10
SIZE = 64
LENGTHS = [12, 9, 15, 10, 11]
TASKS = ["pick up the cup", "open the lid"]
DATA_FILES = {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1), 4: (1, 0)}  # episode -> (chunk, file)
VIDEO_FILES = {0: (0, 0), 1: (0, 0), 2: (0, 0), 3: (0, 1), 4: (0, 1)}


def build(root: Path) -> dict:
    rng = np.random.default_rng(7)
    truth = {"top": [], "wrist": [], "action": [], "state": [], "task": []}
    rows_by_file: dict[tuple[int, int], list[pa.Table]] = {}
    containers: dict[tuple[int, int], tuple] = {}
    ep_rows = []
    index = 0
    for e, T in enumerate(LENGTHS):
        top = coded_frames(T, SIZE, SIZE, offset=3 * e)
        wrist = coded_frames(T, SIZE, SIZE, offset=3 * e + 1)
        action = rng.normal(size=(T, 7)).astype(np.float32)
        state = rng.normal(size=(T, 2)).astype(np.float32)
        task_index = e % 2
        for k, v in (("top", top), ("wrist", wrist), ("action", action), ("state", state), ("task", TASKS[task_index])):
            truth[k].append(v)
        # video: append to the (chunk, file) stream, timestamps continue across episodes
        vf = VIDEO_FILES[e]
        if vf not in containers:
            p = root / f"videos/observation.images.top/chunk-{vf[0]:03d}/file-{vf[1]:03d}.mp4"
            p.parent.mkdir(parents=True, exist_ok=True)
            c = av.open(str(p), "w")
            s = c.add_stream("libsvtav1", rate=FPS)
            s.width = s.height = SIZE
            s.pix_fmt = "yuv420p"
            s.options = {"g": "2", "crf": "30", "preset": "12"}
            containers[vf] = (c, s, [0])
        c, s, count = containers[vf]
        start = count[0]
        for fr in top:
            f = av.VideoFrame.from_ndarray(fr, format="rgb24")
            f.pts = count[0]
            f.time_base = Fraction(1, FPS)
            for pkt in s.encode(f):
                c.mux(pkt)
            count[0] += 1
        pngs = []
        for fr in wrist:
            buf = io.BytesIO()
            Image.fromarray(fr).save(buf, format="PNG")
            pngs.append({"bytes": buf.getvalue(), "path": f"frame-{len(pngs):06d}.png"})
        fi = np.arange(T)
        table = pa.table({
            "observation.images.wrist": pa.array(pngs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),  # variable list, as datasets may write
            "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), 7),
            "timestamp": pa.array((fi / FPS).astype(np.float32)),
            "frame_index": pa.array(fi, pa.int64()),
            "episode_index": pa.array(np.full(T, e), pa.int64()),
            "index": pa.array(np.arange(index, index + T), pa.int64()),
            "task_index": pa.array(np.full(T, task_index), pa.int64()),
        })
        rows_by_file.setdefault(DATA_FILES[e], []).append(table)
        ep_rows.append({
            "episode_index": e, "tasks": [TASKS[task_index]], "length": T,
            "data/chunk_index": DATA_FILES[e][0], "data/file_index": DATA_FILES[e][1],
            "dataset_from_index": index, "dataset_to_index": index + T,
            "videos/observation.images.top/chunk_index": vf[0], "videos/observation.images.top/file_index": vf[1],
            "videos/observation.images.top/from_timestamp": start / FPS,
            "videos/observation.images.top/to_timestamp": (start + T) / FPS,
            "stats/action/mean": action.mean(0).astype(float).tolist(), "stats/action/count": [T],
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0 if e < 3 else 1,
        })
        index += T
    for c, s, _ in containers.values():
        for pkt in s.encode(None):
            c.mux(pkt)
        c.close()
    for (ch, fi), tables in rows_by_file.items():
        p = root / f"data/chunk-{ch:03d}/file-{fi:03d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        w = pq.ParquetWriter(p, tables[0].schema)
        for t in tables:  # one row group per episode, as LeRobot does
            w.write_table(t)
        w.close()
    for fi, sel in ((0, ep_rows[:3]), (1, ep_rows[3:])):
        p = root / f"meta/episodes/chunk-000/file-{fi:03d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(sel), p)
    pq.write_table(tasks_table(TASKS), root / "meta/tasks.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "koch", "total_episodes": len(LENGTHS), "total_frames": index,
        "total_tasks": 2, "chunks_size": 2, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": FPS,
        "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.images.top": {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"],
                                       "info": {"video.fps": FPS, "video.codec": "av1", "video.pix_fmt": "yuv420p"}},
            "observation.images.wrist": {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": [2], "names": {"axes": ["x", "y"]}},
            "action": {"dtype": "float32", "shape": [7], "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
            "task_index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    return truth
