"""Unlabelled video: folders of video files or image sequences (e.g. human or real-robot video).

Layouts (an episode per entry, detected from the folder contents):
  root/clip.mp4                      one single-view episode per video file
  root/ep/frame_0001.png ...         one single-view episode per folder of images
  root/ep/<camera>.mp4 ...           one multi-view episode per folder of videos (camera = stem)
  root/ep/<camera>/frame_0001.png    one multi-view episode per folder of image folders
A single video file path is also accepted. Optional `<episode>.txt` (next to a video) or
`instruction.txt` (inside an episode folder) holds the language instruction. Optional foreground
masks (e.g. the robot or hand, for the Motion-Focused objective): a video `<stem>.mask.<ext>` beside
a video (white = foreground), for every episode of that camera or none.
Image sequences have no frame rate, so `fps` must be given for them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from openlam.artifacts import fingerprint_files
from openlam.data.episode import Episode
from openlam.data.source import EpisodeInfo, EpisodeSource
from openlam.data.splits import SplitConfig, make_splits
from openlam.data.video import count_frames, decode_all, probe_video, resize_frame
from openlam.errors import DataError

VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXT


def _is_mask(p: Path) -> bool:
    return _is_video(p) and p.stem.endswith(".mask")


def _mask_of(video: Path) -> Path | None:
    """The mask video beside a video (<stem>.mask.<any video ext>), if there is one."""
    for ext in sorted(VIDEO_EXT):
        m = video.with_name(f"{video.stem}.mask{ext}")
        if m.is_file():
            return m
    return None


SIDECAR_EXT = {".txt", ".json", ".md"}


def natural_key(p: Path) -> list[int | str]:
    """frame_2.png before frame_10.png: numbers compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _images(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT), key=natural_key)


def _unrecognised(d: Path, allowed: set[str]) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in allowed | SIDECAR_EXT)


class FolderSource(EpisodeSource):
    def __init__(self, path: str | Path, fps: float | None = None, camera: str = "main", split_config: SplitConfig | None = None):
        self.path = root = Path(path)
        self.default_camera = camera
        self.given_fps = fps
        self.action_space = None
        self.mask_cameras = []
        # entry: (name, {camera: video path or image dir or list of images}, language)
        self.entries: list[tuple[str, dict[str, Path | list[Path]], str]] = []
        if root.is_file():
            if not _is_video(root):
                raise DataError(root, "file type", f"a video file ({', '.join(sorted(VIDEO_EXT))})", root.suffix)
            self.entries.append((root.stem, {camera: root}, self._sidecar(root.with_suffix(".txt"))))
        else:
            stray = _unrecognised(root, VIDEO_EXT)
            if stray:
                raise DataError(root, "files", f"only videos ({', '.join(sorted(VIDEO_EXT))}), episode folders and .txt sidecars", f"unrecognised {stray[:5]}")
            for p in sorted(root.iterdir(), key=natural_key):
                if p.name.startswith(".") or _is_mask(p):
                    continue
                if _is_video(p):
                    self.entries.append((p.stem, {camera: p}, self._sidecar(p.with_suffix(".txt"))))
                elif p.is_dir():
                    self.entries.append(self._episode_dir(p))
        if not self.entries:
            raise DataError(root, "contents", "video files or episode folders of images/videos", "nothing usable (empty dataset)")
        cam_sets = {tuple(sorted(v)) for _, v, _ in self.entries}
        if len(cam_sets) != 1:
            raise DataError(root, "cameras", "the same camera set in every episode", f"{sorted(cam_sets)}")
        self.cameras = sorted(next(iter(cam_sets)))
        self.mask_cameras = self._find_masks()
        self.episodes = [self._info(i, e) for i, e in enumerate(self.entries)]
        self.splits = make_splits(self.episodes, self.cameras, split_config or SplitConfig())

    def _find_masks(self) -> list[str]:
        """Cameras whose every episode has a mask video; some but not all is an error."""
        out = []
        for cam in self.cameras:
            have = [isinstance(v[cam], Path) and _mask_of(v[cam]) is not None for _, v, _ in self.entries]  # type: ignore[arg-type]
            if all(have):
                out.append(cam)
            elif any(have):
                lacking = [name for (name, _, _), h in zip(self.entries, have) if not h]
                raise DataError(self.path, f"masks of camera '{cam}'", "a <stem>.mask.<ext> video beside every episode's video, or none",
                                f"missing for {lacking[:5]}{' ...' if len(lacking) > 5 else ''}")
        return out

    @staticmethod
    def _sidecar(p: Path) -> str:
        return p.read_text().strip() if p.is_file() else ""

    def _episode_dir(self, d: Path) -> tuple[str, dict[str, Path | list[Path]], str]:
        lang = self._sidecar(d / "instruction.txt")
        stray = _unrecognised(d, VIDEO_EXT | IMAGE_EXT)
        if stray:
            raise DataError(d, "files", "videos, images and .txt sidecars only", f"unrecognised {stray[:5]}")
        videos = [p for p in sorted(d.iterdir()) if _is_video(p) and not _is_mask(p)]
        if videos:
            return d.name, {p.stem: p for p in videos}, lang
        images = _images(d)
        if images:
            return d.name, {self.default_camera: images}, lang
        subdirs = [p for p in sorted(d.iterdir()) if p.is_dir() and _images(p)]
        if subdirs:
            return d.name, {p.name: _images(p) for p in subdirs}, lang
        raise DataError(d, "contents", "video files, images, or one image folder per camera", "none found")

    def _info(self, i: int, entry: tuple[str, dict[str, Path | list[Path]], str]) -> EpisodeInfo:
        name, views, lang = entry
        lengths, fps = {}, None
        for cam, src in views.items():
            if isinstance(src, list):
                lengths[cam] = len(src)
                if self.given_fps is None:
                    raise DataError(src[0].parent, "fps", "a frame rate for image sequences (pass fps=... / --fps)", "none")
                fps = self.given_fps
            else:
                meta = probe_video(src)
                lengths[cam] = meta["frames"] or int(round((meta["duration"] or 0) * (meta["fps"] or 0))) or count_frames(src)
                fps = self.given_fps or meta["fps"]
        if len(set(lengths.values())) > 1:
            raise DataError(self.path / name, "frame counts", "the same number of frames in every camera", str(lengths))
        return EpisodeInfo(index=i, length=next(iter(lengths.values())), fps=float(fps), language=lang, metadata={"name": name, "task": lang or name})

    def fingerprint(self) -> str:
        files = [self.path] if self.path.is_file() else [p for p in self.path.rglob("*") if p.is_file()]
        return fingerprint_files(files, root=None if self.path.is_file() else self.path)

    def load(self, index: int, cameras: list[str] | None = None, *, size: int | None = None, crop: str = "center") -> Episode:
        cams = self.check_cameras(cameras)
        name, views, lang = self.entries[index]
        frames: dict[str, np.ndarray] = {}
        fps = self.episodes[index].fps
        for cam in cams:
            src = views[cam]
            if isinstance(src, list):
                frames[cam] = np.stack([resize_frame(np.asarray(Image.open(p).convert("RGB")), size, crop) for p in src])
            else:
                frames[cam], vfps = decode_all(src, size=size, crop=crop)
                fps = self.given_fps or vfps
        masks: dict[str, np.ndarray] = {}
        for cam in (c for c in cams if c in self.mask_cameras):
            path = _mask_of(views[cam])  # type: ignore[arg-type]
            assert path is not None
            m, _ = decode_all(path, size=size, crop=crop)
            if m.shape[0] != frames[cam].shape[0]:
                raise DataError(path, "frame count", f"{frames[cam].shape[0]} frames, as in {views[cam]}", str(m.shape[0]))
            masks[cam] = m.mean(-1) > 127
        lengths = {c: f.shape[0] for c, f in frames.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(self.path / name, "frame counts", "the same number of decoded frames in every camera", str(lengths))
        ep = Episode(frames=frames, fps=fps, language=lang, masks=masks, metadata=dict(self.episodes[index].metadata))
        ep.validate(str(self.path / name))
        return ep
