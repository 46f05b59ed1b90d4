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
    """Rows: (episode, camera). Columns: `times` evenly spaced frames, each beside its mask overlay
    when the data has masks (a camera without one gets a labelled grey panel, not a black frame).
    Frames keep their aspect ratio: rows share a height, columns are as wide as the widest camera."""
    label_w, gap, head = 170, 4, 24
    with_masks = any(ep.masks for _, ep in episodes)
    panels = 2 if with_masks else 1
    rows: list[tuple[str, list[np.ndarray | None]]] = []
    for name, ep in episodes:
        ts = np.linspace(0, ep.length - 1, times).round().astype(int)
        for cam in ep.cameras:
            row: list[np.ndarray | None] = []
            for t in ts:
                f = ep.frames[cam][t]
                row.append(f)
                if with_masks:
                    row.append(overlay(f, ep.masks[cam][t]) if cam in ep.masks else None)
            rows.append((f"{name}\n{cam}", row))
    S = max(r[1][0].shape[0] for r in rows) * scale  # common row height
    widths = [round(r[1][0].shape[1] * S / r[1][0].shape[0]) for r in rows]
    cell = max(widths)
    col = panels * cell + gap
    sheet = Image.new("RGB", (label_w + times * col, head + len(rows) * (S + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    first_ts = np.linspace(0, episodes[0][1].length - 1, times).round().astype(int)
    for j, t in enumerate(first_ts):
        draw.text((label_w + j * col, 6), f"t={t}" + (" | mask" if with_masks else ""), fill=(0, 0, 0))
    for i, ((label, row), w) in enumerate(zip(rows, widths)):
        y = head + i * (S + gap)
        draw.multiline_text((4, y + 4), label, fill=(0, 0, 0))
        for j in range(times):
            for k in range(panels):
                x = label_w + j * col + k * cell
                img = row[panels * j + k]
                if img is None:
                    draw.rectangle((x, y, x + w - 1, y + S - 1), fill=(200, 200, 200))
                    draw.text((x + 4, y + S // 2 - 6), "no mask", fill=(90, 90, 90))
                else:
                    sheet.paste(Image.fromarray(img).resize((w, S), Image.NEAREST), (x, y))
    return sheet


def save_contact_sheet(path: str | Path, episodes: list[tuple[str, Episode]], times: int = 6) -> Path:
    from openlam.artifacts import atomic_write_bytes
    import io

    buf = io.BytesIO()
    contact_sheet(episodes, times).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
