"""Every bad input gets a DataError/ConfigError naming the file, the field and the expected form."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_episode
from openlam.cli import main
from openlam.data import open_dataset
from openlam.data.lerobot_writer import write_lerobot
from openlam.data.validate import validate_dataset
from openlam.errors import DataError

VIDEO = "videos/observation.images.side/chunk-000/file-000.mp4"
DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture
def ds(tmp_path, episodes):
    return write_lerobot(tmp_path / "ds", episodes, fps=20.0)


def test_missing_camera(ds):
    with pytest.raises(DataError, match=r"ds: field 'cameras': expected cameras among \['front', 'side'\], got \['top'\]"):
        open_dataset(ds).load(0, ["top"])


def test_missing_video_file(ds):
    (ds / VIDEO).unlink()
    with pytest.raises(DataError, match=r"file-000\.mp4: field 'video file': expected an existing mp4 file"):
        open_dataset(ds).load(0)
    # validate names the file once, with the episodes it holds, not once per episode and check
    problems = validate_dataset(ds)
    assert len(problems) == 1, [str(p) for p in problems]
    assert re.search(r"file-000\.mp4: field 'video file': expected present for observation\.images\.side \(episodes 0, 1", str(problems[0]))


def test_truncated_mp4(ds):
    p = ds / VIDEO
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match=r"observation\.images\.side/chunk-000/file-000\.mp4: field 'video"):
        for i in range(3):
            open_dataset(ds).load(i)


def test_corrupt_mp4(ds):
    (ds / VIDEO).write_bytes(b"\x00not a video" * 100)
    with pytest.raises(DataError, match=r"file-000\.mp4: field 'video stream': expected a decodable video"):
        open_dataset(ds).load(0)


def test_episode_table_disagrees_with_video_length(ds):
    p = ds / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(p).to_pydict()
    t["videos/observation.images.side/to_timestamp"][1] += 0.5  # claims 10 more frames
    pq.write_table(pa.Table.from_pydict(t, schema=pq.read_schema(p)), p)
    with pytest.raises(DataError, match=r"videos/observation\.images\.side/to_timestamp': expected 14 frames of video for episode 1"):
        open_dataset(ds).load(1)


def _rewrite_data(ds, fn):
    t = pq.read_table(ds / DATA)
    pq.write_table(fn(t), ds / DATA)


def test_nan_actions_in_parquet(ds):
    def poison(t):
        a = t["action"].combine_chunks().flatten().to_numpy().copy()
        a[4 * 7 + 2] = np.nan  # frame 7, dim 2 of episode 0
        return t.set_column(t.column_names.index("action"), "action", pa.FixedSizeListArray.from_arrays(pa.array(a), 4))
    _rewrite_data(ds, poison)
    with pytest.raises(DataError, match=r"file-000\.parquet \(episode 0\): field 'actions': expected finite values, got nan at frame 7, dim 2"):
        open_dataset(ds).load(0)


def test_wrong_action_shape_in_parquet(ds):
    def reshape(t):
        a = t["action"].combine_chunks().flatten().to_numpy()
        bad = pa.array([list(r) for r in np.concatenate([a, np.zeros(59)]).reshape(59, 5)], pa.list_(pa.float32()))
        return t.set_column(t.column_names.index("action"), "action", bad)
    _rewrite_data(ds, reshape)
    with pytest.raises(DataError, match=r"field 'action_space': expected an ActionSpace with 5 dims"):
        open_dataset(ds).load(0)


def test_frame_count_mismatch_and_dtype_in_episode():
    ep = make_episode(10)
    ep.frames["side"] = ep.frames["side"][:8]
    with pytest.raises(DataError, match=r"ep: field 'frames\[side\]': expected 10 frames like the other views, got 8 frames"):
        ep.validate("ep")
    ep = make_episode(10)
    ep.actions = ep.actions[:9]
    with pytest.raises(DataError, match=r"field 'actions': expected float32 array of shape \(10, A\), got float32 \(9, 4\)"):
        ep.validate("ep")
    ep = make_episode(10)
    ep.frames["front"] = ep.frames["front"].astype(np.float32)
    with pytest.raises(DataError, match=r"'frames\[front\]': expected uint8 array of shape \(T, H, W, 3\), got float32"):
        ep.validate("ep")
    ep = make_episode(10)
    ep.masks["front"] = ep.masks["front"][:, :5]
    with pytest.raises(DataError, match=r"'masks\[front\]': expected bool array of shape \(10, 32, 32\)"):
        ep.validate("ep")
    ep = make_episode(10)
    ep.actions[3, 1] = np.inf
    with pytest.raises(DataError, match="'actions': expected finite values, got inf at frame 3, dim 1"):
        ep.validate("ep")


def test_writer_rejects_bad_episode_and_leaves_nothing(tmp_path):
    good, bad = make_episode(10), make_episode(10)
    bad.actions[2, 0] = np.nan
    with pytest.raises(DataError, match="episode 1: field 'actions'"):
        write_lerobot(tmp_path / "out", [good, bad], fps=20.0)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    other = make_episode(10, cams=("front",))
    with pytest.raises(DataError, match="episode 1: field 'cameras'"):
        write_lerobot(tmp_path / "out", [good, other], fps=20.0)


def test_empty_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: field 'contents'.*empty dataset"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="field 'episodes': expected at least one episode to write"):
        write_lerobot(tmp_path / "out", [], fps=20.0)
    with pytest.raises(DataError, match="nothing there"):
        open_dataset(tmp_path / "missing")


def test_bad_info_json(ds):
    info = json.loads((ds / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (ds / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"info\.json: field 'codebase_version': expected v3\.x"):
        open_dataset(ds)
    (ds / "meta/info.json").write_text("{not json")
    with pytest.raises(DataError, match=r"info\.json: field '\(whole file\)': expected valid JSON"):
        open_dataset(ds)


def test_validate_reports_every_problem(ds):
    (ds / "videos/observation.images.front/chunk-000/file-000.mp4").unlink()
    _rewrite_data(ds, lambda t: t)  # untouched
    info = json.loads((ds / "meta/info.json").read_text())
    info["total_frames"] = 1
    (ds / "meta/info.json").write_text(json.dumps(info))
    problems = validate_dataset(ds)
    text = "\n".join(map(str, problems))
    assert "field 'total_frames': expected 59" in text
    # the missing file once, naming every episode it holds
    assert text.count("observation.images.front/chunk-000/file-000.mp4: field 'video file'") == 1
    assert "observation.images.front (episodes 0, 1, 2)" in text
    assert main(["validate", str(ds)]) == 1


def test_unknown_config_key_on_cli(tmp_path, capsys):
    assert main(["generate", "metaworld", "--out", str(tmp_path / "x"), "episodez=3"]) == 2
    assert "unknown config key 'episodez'" in capsys.readouterr().err
    assert main(["generate", "metaworld", "--out", str(tmp_path / "x"), "--distractors", "foggy"]) == 2
    assert "'foggy' is not a preset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_unfinished_dataset_is_rejected(ds):
    tmp = ds.with_name(".ds.tmp-123")
    shutil.copytree(ds, tmp)
    with pytest.raises(DataError, match="unfinished temporary directory"):
        open_dataset(tmp)


def test_first_episode_fps_and_reserved_extras_and_odd_size(tmp_path):
    ep = make_episode(10, fps=10.0)
    with pytest.raises(DataError, match=r"episode 0: field 'fps': expected 30.0 \(dataset fps\), got 10.0"):
        write_lerobot(tmp_path / "a", [ep], fps=30.0)
    ep = make_episode(10)
    ep.extras["action"] = np.zeros((10, 4), np.float32)
    with pytest.raises(DataError, match=r"'extras\[action\]': expected a name that is not a standard feature"):
        write_lerobot(tmp_path / "b", [ep], fps=20.0)
    ep = make_episode(10, h=31, w=32)
    with pytest.raises(DataError, match=r"'frames\[front\]': expected even height and width for yuv420p video, got 31x32"):
        write_lerobot(tmp_path / "c", [ep], fps=20.0)
    ep = make_episode(10)
    ep.state_names = ["x"]
    with pytest.raises(DataError, match="'state_names': expected 3 names"):
        write_lerobot(tmp_path / "d", [ep], fps=20.0)
    assert list(tmp_path.iterdir()) == []


def test_one_dim_action_is_a_scalar_column(tmp_path):
    from openlam.data.episode import ActionSpace

    eps = [make_episode(10, seed=i) for i in range(2)]
    for e in eps:
        e.actions = e.actions[:, :1].copy()
        e.action_space = ActionSpace(["gripper"], ["absolute"])
    ds = write_lerobot(tmp_path / "ds", eps, fps=20.0)
    assert pq.read_schema(ds / DATA).field("action").type == pa.float32()  # LeRobot reads shape [1] as scalar
    np.testing.assert_array_equal(open_dataset(ds).load(1).actions, eps[1].actions)


def test_malformed_info_and_parquet_are_named(ds):
    info = json.loads((ds / "meta/info.json").read_text())
    bad = dict(info, fps="abc")
    (ds / "meta/info.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"info\.json: field 'fps': expected a positive number, got 'abc'"):
        open_dataset(ds)
    bad = json.loads(json.dumps(info))
    bad["features"]["action"]["shape"] = "4"
    (ds / "meta/info.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"field 'features\.action\.shape': expected a list of non-negative ints"):
        open_dataset(ds)
    (ds / "meta/info.json").write_text(json.dumps(info))
    (ds / DATA).write_bytes(b"PAR1 truncated")
    problems = validate_dataset(ds)
    assert any("file-000.parquet: field '(file)': expected a readable parquet file" in str(p) for p in problems)


def test_stored_splits_are_checked_and_explicit_config_wins(ds):
    from openlam.data.splits import SplitConfig

    meta = json.loads((ds / "meta/openlam.json").read_text())
    meta["splits"] = {"train": {"episodes": [0, 2]}, "test": {"episodes": [2]}}
    (ds / "meta/openlam.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"openlam\.json: field 'splits\.test\.episodes': expected no episode shared with train, got shared: \[2\]"):
        open_dataset(ds)
    src = open_dataset(ds, split_config=SplitConfig(holdout_cameras=["side"]))
    assert src.splits["train"]["cameras"] == ["front"] and src.splits["ood_camera"]["cameras"] == ["side"]
    meta["splits"] = {"train": {"episodes": [0, 7]}}
    (ds / "meta/openlam.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"'splits\.train\.episodes': expected a list of episode indices in 0\.\.2"):
        open_dataset(ds)


def test_stats_have_lerobot_quantiles(ds):
    stats = json.loads((ds / "meta/stats.json").read_text())
    for q in ("q01", "q10", "q50", "q90", "q99"):
        assert len(stats["action"][q]) == 4
    assert np.array(stats["observation.images.front"]["q50"]).shape == (3, 1, 1)
    assert stats["action"]["q01"][0] < stats["action"]["q50"][0] < stats["action"]["q99"][0]


def test_a_video_shifted_by_extra_frames_fails_validate(ds):
    """10 extra frames at the start of a camera's file shift every episode in it against its actions
    and masks: the file's frame count no longer matches what its episodes index (checked without
    decoding, so --quick catches it too)."""
    from openlam.data.video import VideoAppender, VideoConfig, count_frames, decode_all

    path = ds / VIDEO
    frames, fps = decode_all(path)
    before = count_frames(path)
    w = VideoAppender(path.with_name("shifted.mp4"), fps, frames.shape[2], frames.shape[1], VideoConfig())
    w.append(np.concatenate([np.repeat(frames[:1], 10, 0), frames]))
    w.close()
    path.with_name("shifted.mp4").replace(path)
    for quick in (True, False):
        text = "\n".join(map(str, validate_dataset(ds, decode=not quick)))
        assert re.search(rf"file-000\.mp4: field 'frame count': expected {before} frames, what its episodes index back to back from 0 s "
                         rf"\(observation\.images\.side, episodes 0, 1, 2\).*got {before + 10}", text), text
    assert main(["validate", str(ds), "--quick"]) == 1


def _edit_info(ds, **changes):
    info = json.loads((ds / "meta/info.json").read_text())
    info.update(changes)
    (ds / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("field, value", [
    ("video_path", "../elsewhere/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
    ("video_path", "/tmp/{video_key}/file-{file_index:03d}.mp4"),
    ("data_path", "file:///etc/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("video_path", "http://example.org/{video_key}.mp4"),
])
def test_path_templates_must_stay_inside_the_dataset(ds, field, value):
    _edit_info(ds, **{field: value})
    with pytest.raises(DataError, match=rf"info\.json: field '{field}': expected a path relative to the dataset folder"):
        open_dataset(ds)


def test_symlinked_files_are_read_like_a_hub_snapshot(ds, tmp_path):
    """A Hugging Face hub snapshot links every file into a blob store outside the snapshot folder:
    links are followed (the metadata cannot create them), paths in the metadata may not leave."""
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    shutil.move(ds / VIDEO, blob)
    (ds / VIDEO).symlink_to(blob)
    assert open_dataset(ds).load(0).frames["side"].shape[0] == 20
    assert validate_dataset(ds) == []


def test_a_playlist_is_never_followed(ds, tmp_path):
    """An HLS playlist inside the dataset would make FFmpeg read the files (or URLs) it lists."""
    from openlam.data.video import count_frames

    outside = tmp_path / "secret.mp4"
    shutil.copy(ds / VIDEO, outside)
    text = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\nfile://{outside}\n#EXT-X-ENDLIST\n"
    refused = r"field 'video stream': expected a decodable video in a local mp4, mov, mkv, webm or avi file \(playlists"
    (ds / VIDEO).write_text(text)  # disguised as the camera's mp4
    with pytest.raises(DataError, match=refused):
        open_dataset(ds).load(0)
    (tmp_path / "list.m3u8").write_text(text)  # by its own extension, FFmpeg would pick the HLS demuxer
    with pytest.raises(DataError, match=refused):
        count_frames(tmp_path / "list.m3u8")


def test_unsafe_camera_names_are_refused(ds):
    info = json.loads((ds / "meta/info.json").read_text())
    info["features"]["observation.images.../../x"] = info["features"]["observation.images.side"]
    (ds / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"field 'features.observation.images.../../x': expected a camera name of letters"):
        open_dataset(ds)


def test_image_paths_must_stay_inside_the_dataset(tmp_path):
    from openlam.data.lerobot_reader import _inside

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"x")
    assert _inside(root, "images/a.png", root / "f.parquet", "observation.images.top") == root / "images" / "a.png"
    for bad in ("../secret.png", "/etc/passwd", "file:///etc/passwd", "images/../../secret.png"):
        with pytest.raises(DataError, match=r"f\.parquet: field 'observation\.images\.top': expected a path relative"):
            _inside(root, bad, root / "f.parquet", "observation.images.top")
