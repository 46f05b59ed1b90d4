from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openlam.data import open_dataset
from openlam.data.lerobot_writer import WriterConfig, write_lerobot
from openlam.data.validate import validate_dataset


def test_roundtrip_preserves_everything(tmp_path, episodes):
    out = write_lerobot(tmp_path / "ds", episodes, fps=20.0, robot_type="testbot")
    src = open_dataset(out)
    assert src.cameras == ["front", "side"] and src.mask_cameras == ["front", "side"]
    assert [e.length for e in src.episodes] == [20, 14, 25]
    errs = []
    for i, ep in enumerate(episodes):
        got = src.load(i)
        assert got.language == ep.language and got.fps == 20.0 and got.robot == "testbot"
        np.testing.assert_array_equal(got.actions, ep.actions)  # actions bit-exact
        np.testing.assert_array_equal(got.state, ep.state)
        np.testing.assert_array_equal(got.extras["next.success"], ep.extras["next.success"])
        for cam in ep.cameras:
            np.testing.assert_array_equal(got.masks[cam], ep.masks[cam])  # masks lossless
            err = np.abs(got.frames[cam].astype(float) - ep.frames[cam]).mean()
            errs.append(err)
        assert got.action_space.kinds == ["delta", "delta", "delta", "absolute"]
        assert got.metadata == ep.metadata
    # H.264 crf 18 at 32 px: measured mean abs error ~1-2 grey levels; bound it with margin
    assert max(errs) < 4.0, errs
    assert validate_dataset(out) == []


def test_layout_is_lerobot_v3(tmp_path, episodes):
    out = write_lerobot(tmp_path / "ds", episodes, fps=20.0)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 59
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert info["features"]["action"]["shape"] == [4]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in info["features"]
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data["index"].to_pylist() == list(range(59))
    atype = data.schema.field("action").type
    assert pa.types.is_fixed_size_list(atype) and atype.list_size == 4 and atype.value_type == pa.float32()
    assert np.allclose(data["timestamp"].to_numpy()[:20], np.arange(20) / 20)
    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks["task"].to_pylist() == ["push the block", "open the drawer"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["videos/observation.images.front/from_timestamp"] == [0.0, 1.0, 1.7]
    assert eps["dataset_from_index"] == [0, 20, 34] and eps["tasks"][1] == ["open the drawer"]


def test_file_rollover_and_chunks(tmp_path, episodes):
    """Tiny size limits force a new data/video file per episode and new chunk dirs."""
    cfg = WriterConfig(data_file_mb=1e-6, video_file_mb=1e-6, chunks_size=2)
    out = write_lerobot(tmp_path / "ds", episodes, fps=20.0, cfg=cfg)
    assert (out / "data/chunk-001/file-000.parquet").is_file()
    assert (out / "videos/observation.images.side/chunk-001/file-000.mp4").is_file()
    src = open_dataset(out)
    for i, ep in enumerate(episodes):
        np.testing.assert_array_equal(src.load(i).actions, ep.actions)
