"""Contact sheet: a few episodes x cameras x time, each frame next to its mask overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from openlam.data.episode import Episode

OVERLAY = np.array([0, 255, 255], np.float32)  # robot mask tint


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    out = frame.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * OVERLAY
    return out.astype(np.uint8)


def contact_sheet(episodes: list[tuple[str, Episode]], times: int = 6, scale: int = 2) -> Image.Image:
    """Rows: (episode, camera). Columns: `times` evenly spaced frames, each shown as frame | mask."""
    label_w, gap = 170, 4
    cells: list[tuple[str, list[np.ndarray]]] = []
    for name, ep in episodes:
        ts = np.linspace(0, ep.length - 1, times).round().astype(int)
        for cam in ep.cameras:
            row = []
            for t in ts:
                f = ep.frames[cam][t]
                row.append(f)
                row.append(overlay(f, ep.masks[cam][t]) if cam in ep.masks else np.zeros_like(f))
            cells.append((f"{name}\n{cam}", row))
    S = cells[0][1][0].shape[0] * scale
    W = label_w + times * (2 * S + gap)
    H = 24 + len(cells) * (S + gap)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    first_ts = np.linspace(0, episodes[0][1].length - 1, times).round().astype(int)
    for j, t in enumerate(first_ts):
        draw.text((label_w + j * (2 * S + gap), 6), f"t={t} | mask", fill=(0, 0, 0))
    for i, (label, row) in enumerate(cells):
        y = 24 + i * (S + gap)
        draw.multiline_text((4, y + 4), label, fill=(0, 0, 0))
        for j in range(times):
            x = label_w + j * (2 * S + gap)
            for k in range(2):
                img = Image.fromarray(row[2 * j + k]).resize((S, S), Image.NEAREST)
                sheet.paste(img, (x + k * S, y))
    return sheet


def save_contact_sheet(path: str | Path, episodes: list[tuple[str, Episode]], times: int = 6) -> Path:
    from openlam.artifacts import atomic_write_bytes
    import io

    buf = io.BytesIO()
    contact_sheet(episodes, times).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
