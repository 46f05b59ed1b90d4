from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_VIDEO_DIR, coded_frames, frame_level
from openlam.data import open_dataset
from openlam.data.cache import CacheConfig, FrameCache, build_cache
from openlam.data.pairs import GapConfig, PairDataset
from openlam.data.video import VideoAppender, VideoConfig
from openlam.errors import DataError


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    app = VideoAppender(path, fps, frames.shape[2], frames.shape[1], VideoConfig())
    app.append(frames)
    app.close()


def test_multiview_video_folder(tmp_path):
    for e in range(2):
        d = tmp_path / f"ep{e}"
        for k, cam in enumerate(("left", "right")):
            _write_video(d / f"{cam}.mp4", coded_frames(12 + e, 48, 64, offset=k), 15.0)
        (d / "instruction.txt").write_text("wave the hand")
    src = open_dataset(tmp_path)
    assert src.cameras == ["left", "right"] and src.action_space is None
    ep = src.load(1, size=32)
    assert ep.frames["left"].shape == (13, 32, 32, 3) and ep.fps == 15.0 and ep.language == "wave the hand"
    np.testing.assert_allclose(frame_level(ep.frames["right"]), (8 * (np.arange(13) + 1)) % 240 + 8, atol=5)


def test_image_sequences_need_fps_and_equal_counts(tmp_path):
    for cam, n in (("a", 6), ("b", 6)):
        (tmp_path / "ep0" / cam).mkdir(parents=True)
        for t, fr in enumerate(coded_frames(n, 20, 20)):
            Image.fromarray(fr).save(tmp_path / "ep0" / cam / f"{t:04d}.png")
    with pytest.raises(DataError, match=r"field 'fps': expected a frame rate for image sequences"):
        open_dataset(tmp_path)
    src = open_dataset(tmp_path, fps=5.0)
    ep = src.load(0)
    np.testing.assert_array_equal(ep.frames["a"], coded_frames(6, 20, 20))  # PNG: exact
    (tmp_path / "ep0" / "b" / "0005.png").unlink()
    with pytest.raises(DataError, match=r"ep0: field 'frame counts': expected the same number of frames in every camera"):
        open_dataset(tmp_path, fps=5.0)


def test_corrupt_video_in_folder(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match=r"clip\.mp4: field 'video stream': expected a decodable video in a local mp4"):
        open_dataset(tmp_path)


@pytest.mark.skipif(not REAL_VIDEO_DIR.is_dir(), reason=f"real robot videos not found at {REAL_VIDEO_DIR}")
def test_real_robot_videos_resize_and_gap_in_seconds(tmp_path):
    """The two 720p recordings as they are: resize to 64 px, keep each video's own fps, convert
    a gap in seconds per episode (LAPA's 2.4 s for slow human-like video)."""
    src = open_dataset(REAL_VIDEO_DIR)
    fps = {e.metadata["name"]: e.fps for e in src.episodes}
    assert fps["realman-push_the_green_block_to_position_4"] == pytest.approx(30.0)
    assert fps["xhand-flick_the_ball"] == pytest.approx(29.69, abs=0.01)
    cache = FrameCache(build_cache(src, tmp_path / "cache", CacheConfig(size=64)))
    assert [e["length"] for e in cache.episodes] == [388, 289]
    ds = PairDataset(cache, split=None, gap=GapConfig(seconds=2.4))
    b = ds.__getitems__([0, len(ds) - 1])
    assert b.gap.tolist() == [72, 71]  # round(2.4 * 30), round(2.4 * 29.69)
    assert b.frames["main"].shape == (2, 2, 3, 64, 64) and b.action is None
    frame = cache.frames("main")[100]
    assert frame.std() > 10  # real picture content, not a blank frame


def test_natural_frame_order_and_unrecognised_files(tmp_path):
    d = tmp_path / "clips" / "ep0"
    d.mkdir(parents=True)
    frames = coded_frames(12, 20, 20)
    for t, fr in enumerate(frames):
        Image.fromarray(fr).save(d / f"frame_{t}.png")  # frame_2 must come before frame_10
    ep = open_dataset(tmp_path / "clips", fps=5.0).load(0)
    np.testing.assert_array_equal(ep.frames["main"], frames)
    (d / "notes.docx").write_bytes(b"x")
    with pytest.raises(DataError, match=r"ep0: field 'files': expected videos, images and .txt sidecars only, got unrecognised \['notes\.docx'\]"):
        open_dataset(tmp_path / "clips", fps=5.0)


def test_single_clip_folders_still_get_val_and_test(tmp_path):
    for i in range(10):
        _write_video(tmp_path / f"clip{i:02d}.mkv", coded_frames(6, 16, 16), 10.0)  # mkv: no frame count in header
    src = open_dataset(tmp_path)
    assert [e.length for e in src.episodes] == [6] * 10
    sizes = {k: len(v["episodes"]) for k, v in src.splits.items()}
    assert sizes == {"train": 8, "val": 1, "test": 1}
