"""Policy training data: one row per (episode, frame, camera) of a frame cache, with the frame, the
episode's instruction and a target: the latent action tokens `openlam label` gave that frame
(stage 2) or the chunk of real actions that starts there (stage 3 and the action-pretraining bound)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openlam.artifacts import fingerprint_files
from openlam.data.cache import FrameCache
from openlam.data.pairs import GapConfig
from openlam.data.splits import nested_subset
from openlam.errors import ConfigError, DataError
from openlam.label import labelled_cache, load_labels
from openlam.policy.config import PolicyDataConfig


@dataclass
class PolicyBatch:
    image: torch.Tensor  # (B, 3, S, S) uint8
    words: torch.Tensor  # (B, max_words) long, 0-padded
    state: torch.Tensor | None = None  # (B, D) float
    tokens: torch.Tensor | None = None  # (B, K) long: latent targets
    actions: torch.Tensor | None = None  # (B, C, A) float: action targets

    def __len__(self) -> int:
        return len(self.image)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PolicyBatch:
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PolicyBatch(mv(self.image), mv(self.words), mv(self.state), mv(self.tokens), mv(self.actions))


def split_episodes(cache: FrameCache, cfg: PolicyDataConfig) -> tuple[list[int], list[str]]:
    """The split's episodes (the first N per task when data.episodes_per_task is set) and cameras."""
    if cfg.split not in cache.splits:
        raise ConfigError(f"data.split: '{cfg.split}' not in {cache.path}; available: {sorted(cache.splits)}")
    eps = list(cache.splits[cfg.split]["episodes"])
    cams = cfg.views or list(cache.splits[cfg.split].get("cameras", cache.cameras))
    missing = [v for v in cams if v not in cache.cameras]
    if missing:
        raise DataError(cache.path / "cache.json", "cameras", f"data.views among {cache.cameras}", str(missing))
    if not eps:
        raise DataError(cache.path / "cache.json", f"splits.{cfg.split}.episodes", "at least one episode", "none")
    if cfg.episodes_per_task is not None:
        tasks = [cache.tasks[e] for e in eps]
        per = {t: tasks.count(t) for t in set(tasks)}
        short = {t: n for t, n in per.items() if n < cfg.episodes_per_task}
        if short:
            raise ConfigError(f"data.episodes_per_task={cfg.episodes_per_task}: split '{cfg.split}' of {cache.path} has fewer "
                              f"episodes of {short}")
        eps = nested_subset(eps, tasks, cfg.episodes_per_task * len(per), seed=cfg.subset_seed)
    return eps, cams


def check_labels(labels: Path, meta: dict[str, Any], expect_gap: GapConfig | None, expect_lam: str | None) -> None:
    """Labels made with another gap or by another LAM than the run expects are refused."""
    if expect_gap is not None and meta["gap"] != expect_gap.describe():
        raise DataError(labels / "labels.json", "gap", f"{expect_gap.describe()} (expect_gap)", str(meta["gap"]))
    if expect_lam is not None:
        from openlam.label import resolve_model

        mdir, _ = resolve_model(expect_lam)
        fp = fingerprint_files([mdir / "model.safetensors"])
        if meta["model_fingerprint"] != fp:
            raise DataError(labels / "labels.json", "model_fingerprint", f"{fp} (the LAM in {expect_lam}, expect_lam)",
                            f"{meta['model_fingerprint']} (labels of another LAM, or of this one before it changed)")


Encode = Callable[[list[str]], torch.Tensor]  # instructions -> (B, max_words) word ids


def instructions(cache: FrameCache, episodes: list[int]) -> dict[str, str]:
    """task -> instruction of these episodes; an episode without one, or a task with two, is an error."""
    out: dict[str, str] = {}
    for e in episodes:
        lang, task = str(cache.episodes[e].get("language") or "").strip(), cache.tasks[e]
        if not lang:
            raise DataError(cache.path / "cache.json", f"episodes[{e}].language", "a language instruction (LeRobot 'task')", "none")
        if out.setdefault(task, lang) != lang:
            raise DataError(cache.path / "cache.json", f"episodes[{e}].language", f"one instruction per task ('{out[task]}' for {task})", lang)
    return out


def instruction_ids(cache: FrameCache, episodes: list[int], encode: Encode, max_words: int) -> dict[int, torch.Tensor]:
    import warnings

    from openlam.policy.model import words

    for task, text in instructions(cache, episodes).items():  # every episode has one
        if len(words(text)) > max_words:
            warnings.warn(f"{cache.path}: the instruction of {task} has {len(words(text))} words; the policy reads the first "
                          f"{max_words} (model.max_words)", stacklevel=2)
    return {e: encode([cache.episodes[e]["language"]])[0] for e in episodes}


class PolicyDataset(torch.utils.data.Dataset):
    """Rows (global frame index, camera, episode) with their target; index i (mod the row count)."""

    def __init__(self, cache: FrameCache, episodes: list[int], views: list[str], word_ids: dict[int, torch.Tensor],
                 frame: np.ndarray, view: np.ndarray, episode: np.ndarray, tokens: np.ndarray | None = None,
                 chunk: int = 1, with_state: bool = False):
        self.cache, self.episodes, self.views = cache, episodes, views
        self.word_ids, self.frame, self.view, self.episode = word_ids, frame, view, episode
        self.tokens, self.chunk, self.with_state = tokens, chunk, with_state
        if tokens is None:
            ends = np.array([cache.episodes[e]["start"] + cache.episodes[e]["length"] - 1 for e in range(len(cache.episodes))])
            self.last = ends[episode]  # a chunk never reads past its episode: the last action repeats

    @classmethod
    def from_labels(cls, labels: str | Path, cfg: PolicyDataConfig, encode: Encode, max_words: int) -> PolicyDataset:
        labels = Path(labels)
        meta, table = load_labels(labels)
        cache = FrameCache(labelled_cache(labels))
        eps, views = split_episodes(cache, cfg)
        unlabelled = [v for v in views if v not in meta["views"]]
        if unlabelled:
            raise DataError(labels / "labels.json", "views", f"the policy's cameras {views}", f"{meta['views']} (no labels for {unlabelled})")
        ep = table.column("episode").to_numpy()
        view = np.asarray(table.column("view").to_pylist())
        keep = np.isin(ep, eps) & np.isin(view, views)
        if not keep.any():
            raise DataError(labels / "labels.json", "episodes", f"labels for episodes of split '{cfg.split}'", "none")
        K = meta["num_tokens"]
        tokens = np.asarray(table.column("tokens").combine_chunks().flatten().to_numpy(), np.int64).reshape(-1, K)[keep]
        if cfg.shuffle_tokens:
            tokens = tokens[np.random.default_rng(cfg.subset_seed).permutation(len(tokens))]
        starts = cache.starts
        frame = starts[ep[keep]] + table.column("frame").to_numpy()[keep]
        return cls(cache, eps, views, instruction_ids(cache, eps, encode, max_words), frame, view[keep], ep[keep], tokens=tokens)

    @classmethod
    def from_cache(cls, cache: FrameCache, cfg: PolicyDataConfig, encode: Encode, max_words: int, chunk: int,
                   with_state: bool) -> PolicyDataset:
        if cache.action_space is None:
            raise DataError(cache.path / "cache.json", "action_space", "actions (action targets need them)", "none")
        if with_state and cache.state_dim is None:
            raise DataError(cache.path / "cache.json", "state_dim", "observation.state (head.state: true)", "none")
        eps, views = split_episodes(cache, cfg)
        frame, view, episode = [], [], []
        for e in eps:
            info = cache.episodes[e]
            for v in views:
                frame.append(info["start"] + np.arange(info["length"]))
                view.append(np.full(info["length"], v, dtype=object))
                episode.append(np.full(info["length"], e))
        return cls(cache, eps, views, instruction_ids(cache, eps, encode, max_words), np.concatenate(frame), np.concatenate(view).astype(str),
                   np.concatenate(episode), chunk=chunk, with_state=with_state)

    def action_rows(self) -> np.ndarray:
        """(N, A) every training action once (per frame, not per camera): fits bins and statistics."""
        idx = np.unique(self.frame)
        return np.asarray(self.cache.actions()[idx], np.float32)

    def state_rows(self) -> np.ndarray:
        return np.asarray(self.cache.state()[np.unique(self.frame)], np.float32)

    def __len__(self) -> int:
        return len(self.frame)

    def __getitems__(self, indices: list[int]) -> PolicyBatch:
        i = np.asarray(indices, np.int64) % len(self.frame)
        order = np.argsort(i, kind="stable")  # memmap reads in ascending order
        image = np.empty((len(i), self.cache.size, self.cache.size, 3), np.uint8)
        for v in np.unique(self.view[i]):
            sel = order[self.view[i][order] == v]
            image[sel] = self.cache.frames(str(v))[self.frame[i[sel]]]
        words = torch.stack([self.word_ids[int(e)] for e in self.episode[i]])
        batch = PolicyBatch(torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(), words)
        if self.tokens is not None:
            batch.tokens = torch.from_numpy(self.tokens[i])
        else:
            steps = np.minimum(self.frame[i, None] + np.arange(self.chunk), self.last[i, None])
            batch.actions = torch.from_numpy(np.asarray(self.cache.actions()[steps.ravel()], np.float32).reshape(len(i), self.chunk, -1))
        if self.with_state:
            batch.state = torch.from_numpy(np.asarray(self.cache.state()[self.frame[i]], np.float32))
        return batch

    def __getitem__(self, i: int) -> PolicyBatch:
        return self.__getitems__([i])
