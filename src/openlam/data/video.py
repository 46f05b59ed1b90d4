"""Video I/O with PyAV: an appending mp4 writer (many episodes per file, as LeRobot v3 does) and
a range decoder that checks it got every frame it was asked for."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from openlam.errors import DataError


@dataclass
class VideoConfig:
    """Encoder settings for camera streams. Masks always use lossless H.264 (qp=0, luma-exact)."""

    codec: str = "libx264"
    pix_fmt: str = "yuv420p"  # what LeRobot and browsers expect
    crf: int = 18
    gop: int = 2  # short GOP: cheap random access for per-episode seeks (LeRobot uses 2)


def fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoAppender:
    """Encode frames into one mp4 stream; successive episodes continue its timeline.

    `frames_written` is what tells the episode table where an episode starts (from_timestamp).
    """

    def __init__(self, path: Path, fps: float, width: int, height: int, cfg: VideoConfig, mask: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.mask = mask
        self.rate = fps_fraction(fps)
        self.container = av.open(str(path), "w")
        codec = "libx264" if mask else cfg.codec
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p" if mask else cfg.pix_fmt
        self.stream.options = {"qp": "0", "g": str(cfg.gop)} if mask else {"crf": str(cfg.crf), "g": str(cfg.gop)}
        self.frames_written = 0

    def append(self, frames: np.ndarray) -> None:
        """frames: (T, H, W, 3) uint8 RGB, or (T, H, W) bool/uint8 for masks."""
        for fr in frames:
            if self.mask:
                img = av.VideoFrame.from_ndarray(np.where(fr, 255, 0).astype(np.uint8), format="gray")
            else:
                img = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")
            img.pts = self.frames_written
            img.time_base = 1 / self.rate
            for packet in self.stream.encode(img):
                self.container.mux(packet)
            self.frames_written += 1

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()

    @property
    def codec_name(self) -> str:
        return self.stream.codec_context.name


# the demuxers of media container files only (mp4/mov family, mkv/webm, avi), read from local files
# only: a playlist or concat list (HLS .m3u8, ffconcat) would make FFmpeg open whatever files or
# URLs it names, inside the dataset folder or not
DEMUXERS = "mov,matroska,avi"


def open_video(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), options={"format_whitelist": DEMUXERS, "protocol_whitelist": "file"})
    except (av.FFmpegError, ValueError) as e:
        raise DataError(path, "video stream", "a decodable video in a local mp4, mov, mkv, webm or avi file "
                        "(playlists and other formats are refused)", f"{type(e).__name__}: {e}") from None


def probe_video(path: Path) -> dict:
    """fps, frame count, size and codec of the first video stream; DataError if unreadable."""
    try:
        with open_video(path) as c:
            if not c.streams.video:
                raise DataError(path, "streams", "a video stream", "none")
            s = c.streams.video[0]
            fps = float(s.average_rate) if s.average_rate else None
            duration = float(s.duration * s.time_base) if s.duration else None
            return {
                "fps": fps,
                "frames": s.frames or None,
                "width": s.codec_context.width,
                "height": s.codec_context.height,
                "codec": s.codec_context.name,
                "pix_fmt": s.codec_context.pix_fmt,
                "duration": duration,
            }
    except av.FFmpegError as e:
        raise DataError(path, "video stream", "a readable video file", f"{type(e).__name__}: {e}") from None


def count_frames(path: Path) -> int:
    """Count video packets (containers like mkv/webm often record neither frame count nor duration)."""
    try:
        with open_video(path) as c:
            s = c.streams.video[0]
            return sum(1 for pkt in c.demux(s) if pkt.size > 0)
    except av.FFmpegError as e:
        raise DataError(path, "video stream", "a readable video file", f"{type(e).__name__}: {e}") from None


def resize_frame(frame: np.ndarray, size: int | None, crop: str = "center") -> np.ndarray:
    """Square `size` x `size` output: center-crop to square then area-resize ("center"), or stretch."""
    if size is None:
        return frame
    h, w = frame.shape[:2]
    if crop == "center" and h != w:
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        frame = frame[y0 : y0 + s, x0 : x0 + s]
    if frame.shape[0] == size and frame.shape[1] == size:
        return np.ascontiguousarray(frame)
    mode = "L" if frame.ndim == 2 else "RGB"
    img = Image.fromarray(frame, mode).resize((size, size), Image.BOX if frame.shape[0] > size else Image.BILINEAR)
    return np.asarray(img)


def decode_range(
    path: Path,
    start_s: float,
    count: int,
    fps: float,
    *,
    mask: bool = False,
    size: int | None = None,
    crop: str = "center",
    tolerance_s: float | None = None,
    where: str = "",
) -> np.ndarray:
    """Decode `count` frames starting at `start_s` seconds from the first video stream of `path`.

    Returns (count, H, W, 3) uint8, or (count, H, W) bool for masks. Frames are matched to the
    expected timestamps start_s + i/fps; a short, truncated or corrupt stream is a DataError naming
    the file, never a silently shorter episode.
    """
    if not path.is_file():
        raise DataError(path, "video file", "an existing mp4 file" + (f" ({where})" if where else ""), "missing")
    tol = tolerance_s if tolerance_s is not None else 0.5 / fps
    out: list[np.ndarray] = []
    try:
        with open_video(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            tb = s.time_base
            if start_s > 0:  # lands on the keyframe at or before the start (2 frames of slack)
                c.seek(int(max(start_s - 2.0 / fps, 0) / tb), stream=s, backward=True, any_frame=False)
            for frame in c.decode(s):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb)
                expected = start_s + len(out) / fps
                if t < expected - tol:
                    continue
                if abs(t - expected) > tol:
                    raise DataError(
                        path, "frame timestamps",
                        f"frame {len(out)} at {expected:.4f}s (+-{tol:.4f}s){' for ' + where if where else ''}",
                        f"{t:.4f}s",
                    )
                if mask:
                    arr = frame.to_ndarray(format="gray")
                    out.append(resize_frame(arr, size, crop) > 127)
                else:
                    out.append(resize_frame(frame.to_ndarray(format="rgb24"), size, crop))
                if len(out) == count:
                    break
    except av.FFmpegError as e:
        raise DataError(path, "video stream", "a decodable video", f"{type(e).__name__}: {e}") from None
    if len(out) != count:
        raise DataError(
            path, "video frames",
            f"{count} frames from {start_s:.4f}s{' for ' + where if where else ''}",
            f"{len(out)} (truncated or corrupt file?)",
        )
    return np.stack(out)


def decode_all(path: Path, *, size: int | None = None, crop: str = "center") -> tuple[np.ndarray, float]:
    """Every frame of a video file (for unlabelled video folders) and its average fps."""
    info = probe_video(path)
    if not info["fps"]:
        raise DataError(path, "fps", "a video stream with a frame rate")
    out = []
    try:
        with open_video(path) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            for frame in c.decode(s):
                out.append(resize_frame(frame.to_ndarray(format="rgb24"), size, crop))
    except av.FFmpegError as e:
        raise DataError(path, "video stream", "a decodable video", f"{type(e).__name__}: {e}") from None
    if len(out) < 2:
        raise DataError(path, "video frames", "at least 2 decodable frames", str(len(out)))
    return np.stack(out), info["fps"]
