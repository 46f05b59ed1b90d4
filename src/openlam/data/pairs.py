"""Frame-pair sampling: (o_t, o_t+H) for a set of synchronized views, the action target over the
gap, language and ids, served as one typed `PairBatch` per DataLoader batch.

The gap H is given in seconds (converted per episode with its own fps, as LAPA does: 0.6 s for robot
video) or in frames, optionally as a range [min, max] sampled uniformly per pair. Sampling is
counter-based (hash of seed, epoch, index), so a pair is the same whatever the batch or worker.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from openlam.data.cache import FrameCache
from openlam.errors import ConfigError, DataError


@dataclass
class GapConfig:
    """Exactly one of seconds / frames. *_max turns the gap into a uniform random range."""

    seconds: float | None = None  # with frames also None: 0.6 s
    frames: int | None = None
    max_seconds: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        # giving only frames (e.g. `gap.frames=8` on the command line) means a gap in frames
        if self.seconds is None and self.frames is None and self.max_frames is None:
            self.seconds = 0.6

    def validate(self) -> None:
        if (self.seconds is None) == (self.frames is None):
            raise ConfigError(f"gap: give exactly one of gap.seconds or gap.frames, got seconds={self.seconds}, frames={self.frames} "
                              "(to turn a config's gap in seconds into one in frames, also set gap.seconds=null)")
        if self.seconds is not None and self.seconds <= 0 or self.frames is not None and self.frames < 1:
            raise ConfigError("gap: must be positive (seconds > 0 or frames >= 1)")
        if self.max_seconds is not None and self.seconds is None or self.max_frames is not None and self.frames is None:
            raise ConfigError("gap: max_seconds goes with seconds, max_frames with frames")

    def frame_range(self, fps: float) -> tuple[int, int]:
        if self.frames is not None:
            lo = self.frames
            hi = self.max_frames if self.max_frames is not None else lo
        else:
            assert self.seconds is not None
            lo = max(1, round(self.seconds * fps))
            hi = max(lo, round(self.max_seconds * fps)) if self.max_seconds is not None else lo
        if hi < lo:
            raise ConfigError(f"gap: max ({hi} frames) is below min ({lo} frames)")
        return lo, hi

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class PairBatch:
    """frames[view]: (B, 2, 3, S, S) uint8; masks[view]: (B, 2, S, S) bool; action: (B, A) float32."""

    frames: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    action: torch.Tensor | None
    language: list[str]
    episode: torch.Tensor
    t: torch.Tensor
    gap: torch.Tensor
    views: list[str] = field(default_factory=list)
    key: int = 0  # host-side hash of the pairs (seed for per-batch randomness without a device sync)

    def __len__(self) -> int:
        return int(self.episode.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairBatch:
        mv = lambda d: {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}  # noqa: E731
        return PairBatch(
            mv(self.frames), mv(self.masks),
            None if self.action is None else self.action.to(device, non_blocking=non_blocking),
            self.language, self.episode.to(device), self.t.to(device), self.gap.to(device), self.views, self.key,
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return x ^ (x >> np.uint64(31))


def action_targets(cum: np.ndarray, actions: np.ndarray, g0: np.ndarray, gap: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Action target of pairs (t, t+H): delta dims summed over actions[t : t+H], absolute dims take
    actions[t+H-1] (the last command before o_t+H). `cum` is the zero-prefixed cumulative sum."""
    g1 = g0 + gap
    summed = cum[g1] - cum[g0]
    last = actions[g1 - 1].astype(np.float64)
    return np.where(delta[None, :], summed, last).astype(np.float32)


class PairDataset(torch.utils.data.Dataset):
    """Pairs from one split of a FrameCache. Index i is a (episode, t); the gap is drawn per pair."""

    def __init__(
        self,
        cache: FrameCache,
        split: str | None = "train",
        views: list[str] | None = None,
        gap: GapConfig | None = None,
        seed: int = 0,
        with_masks: bool = True,
        episodes: list[int] | None = None,
    ):
        """episodes: keep only these episodes of the split (each must belong to it)."""
        self.cache = cache
        self.gap_cfg = gap or GapConfig()
        self.gap_cfg.validate()
        self.seed = seed
        self.epoch = 0
        if split is None:
            eps, split_cams = list(range(len(cache.episodes))), cache.cameras
        elif split not in cache.splits:
            raise ConfigError(f"split '{split}' not in {cache.path}; available: {sorted(cache.splits)}")
        else:
            eps = cache.splits[split]["episodes"]
            split_cams = cache.splits[split].get("cameras", cache.cameras)
            if not split_cams and views is None:
                raise DataError(cache.path / "cache.json", f"splits.{split}.cameras",
                                f"at least one cached camera for split '{split}' (cached: {cache.cameras})", "none")
        if episodes is not None:
            outside = sorted(set(episodes) - set(eps))
            if outside:
                raise ConfigError(f"episodes {outside[:10]} are not in split '{split}' of {cache.path}")
            eps = sorted(episodes)
        self.views = list(views) if views is not None else list(split_cams)
        missing = [v for v in self.views if v not in cache.cameras]
        if missing:
            raise DataError(cache.path / "cache.json", "cameras", f"views among {cache.cameras}", str(missing))
        self.mask_views = [v for v in self.views if v in cache.mask_cameras] if with_masks else []
        starts, ts, lo, hi, epi = [], [], [], [], []
        self.skipped_episodes: list[int] = []  # shorter than the gap: no pair (warned, never silent)
        for e in eps:
            info = cache.episodes[e]
            T = info["length"]
            h0, h1 = self.gap_cfg.frame_range(info["fps"])
            n = T - h0
            if n <= 0:
                self.skipped_episodes.append(e)
                continue
            t = np.arange(n)
            starts.append(np.full(n, info["start"]))
            ts.append(t)
            lo.append(np.full(n, h0))
            hi.append(np.minimum(h1, T - 1 - t))
            epi.append(np.full(n, e))
        if self.skipped_episodes:
            n_skip = len(self.skipped_episodes)
            warnings.warn(f"{cache.path}: {n_skip} episode(s) shorter than the gap give no pairs: {self.skipped_episodes[:10]}", stacklevel=2)
        if not starts:
            raise DataError(cache.path, f"split {split}", "at least one episode longer than the gap", f"{len(eps)} episodes, none long enough")
        cat = lambda xs: np.concatenate(xs).astype(np.int64)  # noqa: E731
        self._start, self._t, self._lo, self._hi, self._ep = map(cat, (starts, ts, lo, hi, epi))
        self._lang = [info["language"] for info in cache.episodes]
        if cache.action_space is not None:
            acts = np.asarray(cache.actions(), dtype=np.float64)
            self._actions = np.asarray(cache.actions())
            self._cum = np.concatenate([np.zeros((1, acts.shape[1])), np.cumsum(acts, 0)])
            self._delta = np.array([k == "delta" for k in cache.action_space.kinds])
        else:
            self._cum = None

    def pairs_per_episode(self) -> dict[int, int]:
        """Number of pairs (start frames) of each episode that has any."""
        eps, counts = np.unique(self._ep, return_counts=True)
        return {int(e): int(c) for e, c in zip(eps, counts)}

    def action_stats(self, episodes: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-dim mean and std of the action target over this split's pairs at their epoch-0 gap
        draws, optionally only over the pairs of `episodes`."""
        if self._cum is None:
            raise DataError(self.cache.path, "action_space", "a dataset with actions", "none")
        idx = np.arange(len(self))
        if episodes is not None:
            idx = idx[np.isin(self._ep, episodes)]
        if not len(idx):
            raise ConfigError(f"action_stats: none of episodes {episodes[:10] if episodes else episodes} has pairs in this split")
        g0 = self._start[idx] + self._t[idx]
        a = action_targets(self._cum, self._actions, g0, self.gaps(idx, 0), self._delta).astype(np.float64)
        return a.mean(0), a.std(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._t)

    def gaps(self, idx: np.ndarray, epoch: np.ndarray | int | None = None) -> np.ndarray:
        lo, hi = self._lo[idx], self._hi[idx]
        ep = np.asarray(self.epoch if epoch is None else epoch, dtype=np.uint64)
        h = _splitmix64(np.full(idx.shape, self.seed, dtype=np.uint64))  # chained: seed, epoch, index never alias
        h = _splitmix64(h ^ ep)
        u = _splitmix64(h ^ idx.astype(np.uint64)) >> np.uint64(11)
        return lo + (u % (hi - lo + 1).astype(np.uint64)).astype(np.int64)

    def __getitems__(self, indices: list[int]) -> PairBatch:
        """Indices >= len(self) are virtual: epoch * len + i selects pair i with that epoch's gap
        draw, so a stateless sampler can drive epochs inside DataLoader workers."""
        virtual = np.asarray(indices, dtype=np.int64)
        idx = virtual % len(self)
        gap = self.gaps(idx, self.epoch + virtual // len(self))
        g0 = self._start[idx] + self._t[idx]
        g1 = g0 + gap
        pair = np.stack([g0, g1], 1)  # (B, 2)
        frames = {}
        for v in self.views:
            x = self.cache.frames(v)[pair.reshape(-1)]  # (B*2, S, S, 3)
            frames[v] = torch.from_numpy(x).view(len(idx), 2, *x.shape[1:]).permute(0, 1, 4, 2, 3)
        masks = {}
        for v in self.mask_views:
            m = self.cache.masks(v)[pair.reshape(-1)]
            masks[v] = torch.from_numpy(m.astype(bool)).view(len(idx), 2, *m.shape[1:])
        action = None
        if self._cum is not None:
            action = torch.from_numpy(action_targets(self._cum, self._actions, g0, gap, self._delta))
        return PairBatch(
            frames=frames, masks=masks, action=action,
            language=[self._lang[e] for e in self._ep[idx]],
            episode=torch.from_numpy(self._ep[idx]), t=torch.from_numpy(self._t[idx]),
            gap=torch.from_numpy(gap), views=list(self.views),
            key=int(np.bitwise_xor.reduce(_splitmix64(virtual.astype(np.uint64) ^ np.uint64(self.seed))) & np.uint64(0x7FFFFFFF)),
        )

    def __getitem__(self, i: int) -> PairBatch:
        return self.__getitems__([i])


def _keep(batch: PairBatch) -> PairBatch:
    return batch


def pair_loader(
    ds: PairDataset, batch_size: int, shuffle: bool = True, workers: int = 2, seed: int = 0, drop_last: bool = True
) -> torch.utils.data.DataLoader:
    """DataLoader that fetches whole batches at once (vectorised memmap gathers, no per-item collate)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=_keep,
        drop_last=drop_last, generator=gen, persistent_workers=workers > 0,
    )
