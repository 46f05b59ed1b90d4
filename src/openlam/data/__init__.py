"""Episodes, on-disk formats (LeRobot v3, video folders), the frame cache and the pair sampler."""

from openlam.data.episode import ActionSpace, Episode
from openlam.data.source import EpisodeInfo, EpisodeSource, open_dataset

__all__ = ["ActionSpace", "Episode", "EpisodeInfo", "EpisodeSource", "open_dataset"]
