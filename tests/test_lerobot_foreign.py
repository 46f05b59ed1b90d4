from __future__ import annotations

import numpy as np

from conftest import frame_level
from lerobot_fixture import LENGTHS, build
from openlam.data import open_dataset
from openlam.data.validate import validate_dataset


def test_reads_lerobot_layout(tmp_path):
    truth = build(tmp_path / "ds")
    src = open_dataset(tmp_path / "ds")
    assert sorted(src.cameras) == ["top", "wrist"] and src.mask_cameras == []
    assert [e.length for e in src.episodes] == LENGTHS
    assert src.action_space.names[-1] == "gripper" and src.action_space.kinds == ["delta"] * 6 + ["absolute"]
    assert src.state_names == ["x", "y"]
    for i in range(len(LENGTHS)):
        ep = src.load(i)
        assert ep.language == truth["task"][i]
        np.testing.assert_array_equal(ep.actions, truth["action"][i])
        np.testing.assert_allclose(ep.state, truth["state"][i])
        np.testing.assert_array_equal(ep.frames["wrist"], truth["wrist"][i])  # PNG: lossless
        # AV1 video from concatenated files: every frame is the right one (its coded level matches)
        np.testing.assert_allclose(frame_level(ep.frames["top"]), frame_level(truth["top"][i]), atol=6)
        assert np.abs(ep.frames["top"].astype(float) - truth["top"][i]).mean() < 8
    assert validate_dataset(tmp_path / "ds") == []


def test_camera_subset_and_resize(tmp_path):
    build(tmp_path / "ds")
    src = open_dataset(tmp_path / "ds")
    ep = src.load(3, ["top"], size=32)
    assert list(ep.frames) == ["top"] and ep.frames["top"].shape == (10, 32, 32, 3)
