"""The dataset contact sheet: no black stand-ins for masks that do not exist, aspect ratios kept."""

from __future__ import annotations

import numpy as np

from conftest import make_episode
from openlam.viz.contact_sheet import contact_sheet


def test_without_masks_there_are_no_mask_panels():
    ep = make_episode(10, cams=("front",), masks=False)
    sheet = np.asarray(contact_sheet([("ep", ep)], times=3, scale=1))
    assert sheet.shape[1] == 170 + 3 * (32 + 4)  # one panel per time, not frame | black
    cell = sheet[24:56, 170:202]
    np.testing.assert_array_equal(cell, ep.frames["front"][0])


def test_wide_cameras_keep_their_aspect_and_missing_masks_are_labelled_grey():
    wide = make_episode(10, cams=("wide",), h=16, w=48, masks=True)
    square = make_episode(10, cams=("square",), h=32, w=32, masks=False)
    sheet = np.asarray(contact_sheet([("a", wide), ("b", square)], times=2, scale=1))
    # rows share the height of the tallest camera (32 px); the wide camera is 96 px wide there, not squashed
    cell, col = 96, 2 * 96 + 4
    assert sheet.shape == (24 + 2 * (32 + 4), 170 + 2 * col, 3)
    wide_frame = sheet[24:56, 170:170 + cell]
    np.testing.assert_array_equal(wide_frame[::2, ::2], wide.frames["wide"][0])  # 2x nearest upscale, 3:1 kept
    no_mask = sheet[60:92, 170 + cell:170 + cell + 32]  # the square camera's mask panel, in the mask column
    assert (no_mask.reshape(-1, 3) == 200).all(1).mean() > 0.8  # grey (a label drawn on it), never black
    assert not (no_mask == 0).all()
