"""A dataset is an `EpisodeSource`: episode infos up front, episodes decoded on demand."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openlam.data.episode import ActionSpace, Episode
from openlam.errors import DataError


@dataclass
class EpisodeInfo:
    """What is known about an episode without decoding it."""

    index: int
    length: int
    fps: float
    language: str = ""
    robot: str = "unknown"
    metadata: dict[str, Any] = field(default_factory=dict)


class EpisodeSource(abc.ABC):
    """Common interface of every dataset format openlam reads."""

    path: Path
    cameras: list[str]
    mask_cameras: list[str]
    action_space: ActionSpace | None
    episodes: list[EpisodeInfo]
    splits: dict[str, dict[str, Any]]  # name -> {"episodes": [...], optional "cameras": [...]}

    def __len__(self) -> int:
        return len(self.episodes)

    @abc.abstractmethod
    def load(
        self, index: int, cameras: list[str] | None = None, *, size: int | None = None, crop: str = "center"
    ) -> Episode:
        """Decode episode `index` (optionally only some cameras, resized to `size` x `size`)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Short hash that changes whenever the data on disk changes."""

    def check_cameras(self, cameras: list[str] | None) -> list[str]:
        if cameras is None:
            return list(self.cameras)
        missing = [c for c in cameras if c not in self.cameras]
        if missing:
            raise DataError(self.path, "cameras", f"cameras among {self.cameras}", f"{missing}")
        return list(cameras)


def open_dataset(path: str | Path, fps: float | None = None, **kwargs: Any) -> EpisodeSource:
    """Open a LeRobot v3 dataset (has meta/info.json) or a folder of videos / image sequences.
    `fps` is the frame rate of image-sequence folders; a dataset that records its own rate ignores it."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "path", "an existing dataset directory", "nothing there")
    if path.name.startswith(".") and ".tmp-" in path.name:
        raise DataError(path, "path", "a finished dataset", "an unfinished temporary directory (killed writer?)")
    if (path / "meta" / "info.json").is_file():
        from openlam.data.lerobot_reader import LeRobotSource

        return LeRobotSource(path, **kwargs)
    if path.is_dir() or path.is_file():
        from openlam.data.folder import FolderSource

        return FolderSource(path, fps=fps, **kwargs)
    raise DataError(path, "path", "a LeRobot dataset (meta/info.json) or a folder of videos/images")
