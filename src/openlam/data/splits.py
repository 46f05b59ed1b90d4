"""Episode-level splits (never frame-level), including named out-of-distribution sets.

Assignment is by a seeded hash of each episode's key, stratified by task, so it is deterministic
and an episode keeps its split when others are added.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from openlam.data.source import EpisodeInfo


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    holdout_tasks: list[str] = field(default_factory=list)  # whole tasks kept out: split "ood_task"
    holdout_cameras: list[str] = field(default_factory=list)  # views kept out: split "ood_camera"

    def validate(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("split fractions must be in [0, 1) and sum to < 1")


def _hash01(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def make_splits(infos: list[EpisodeInfo], cameras: list[str], cfg: SplitConfig) -> dict[str, dict[str, Any]]:
    """train/val/test over in-distribution episodes, plus:

    - `ood:<preset>` for episodes recorded with an OOD distractor preset (metadata
      `distractor_role == "ood"`),
    - `ood_task` for `holdout_tasks`,
    - `ood_camera`: the test episodes seen through `holdout_cameras` only; those cameras are then
      excluded from train/val/test (recorded in each split's "cameras").
    """
    groups: dict[str, list[EpisodeInfo]] = defaultdict(list)
    ood: dict[str, list[int]] = defaultdict(list)
    for e in infos:
        task = str(e.metadata.get("task", e.language))
        if task in cfg.holdout_tasks:
            ood["ood_task"].append(e.index)
        elif e.metadata.get("distractor_role") == "ood":
            ood[f"ood:{e.metadata.get('distractor_preset', 'unknown')}"].append(e.index)
        else:
            groups[task].append(e)
    # tasks with fewer than 3 episodes (e.g. video folders, where every clip is its own "task") are
    # pooled, so they still contribute val/test episodes
    small = [e for t in sorted(groups) if len(groups[t]) < 3 for e in groups[t]]
    groups = {t: g for t, g in groups.items() if len(g) >= 3}
    if small:
        groups["\0pooled"] = small
    split_eps: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for task in sorted(groups):
        eps = sorted(groups[task], key=lambda e: _hash01(cfg.seed, str(e.metadata.get("key", e.index))))
        n = len(eps)
        n_test = round(n * cfg.test_fraction)
        n_val = round(n * cfg.val_fraction)
        if n >= 3:  # every group still gets one held-out episode per nonzero fraction
            n_test = max(n_test, 1 if cfg.test_fraction > 0 else 0)
            n_val = max(n_val, 1 if cfg.val_fraction > 0 else 0)
        split_eps["test"] += [e.index for e in eps[:n_test]]
        split_eps["val"] += [e.index for e in eps[n_test : n_test + n_val]]
        split_eps["train"] += [e.index for e in eps[n_test + n_val :]]
    seen_cams = [c for c in cameras if c not in cfg.holdout_cameras]
    out: dict[str, dict[str, Any]] = {
        name: {"episodes": sorted(ix), "cameras": seen_cams} for name, ix in split_eps.items()
    }
    for name, ix in sorted(ood.items()):
        out[name] = {"episodes": sorted(ix), "cameras": seen_cams}
    held = [c for c in cfg.holdout_cameras if c in cameras]
    if held:
        out["ood_camera"] = {"episodes": sorted(split_eps["test"]), "cameras": held}
    return out


def nested_subset(episodes: list[int], tasks: list[str], n: int, seed: int = 0) -> list[int]:
    """n of `episodes` (tasks[i] is episode i's task), taken round-robin over tasks, each task's
    episodes in a seeded order: the subset for n lies inside the one for n + 1, so a data-size
    curve only ever adds episodes, and every task is represented as evenly as it can be."""
    if not 1 <= n <= len(episodes):
        raise ValueError(f"need 1 <= n <= {len(episodes)} episodes, got {n}")
    by_task: dict[str, list[int]] = defaultdict(list)
    for e, t in zip(episodes, tasks):
        by_task[t].append(e)
    queues = [sorted(by_task[t], key=lambda e: _hash01(seed, f"subset:{e}")) for t in sorted(by_task)]
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    return sorted(order[:n])


def check_splits(splits: dict[str, dict[str, Any]], n_episodes: int, cameras: list[str], where: Any) -> None:
    """Stored splits must be in range, use known cameras, and train must not share episodes with
    val/test (OOD splits may reuse test episodes, e.g. ood_camera)."""
    from openlam.errors import DataError

    for name, sp in splits.items():
        eps = sp.get("episodes")
        if not isinstance(eps, list) or not all(isinstance(e, int) and 0 <= e < n_episodes for e in eps):
            raise DataError(where, f"splits.{name}.episodes", f"a list of episode indices in 0..{n_episodes - 1}", str(eps)[:80])
        bad = [c for c in sp.get("cameras", []) if c not in cameras]
        if bad:
            raise DataError(where, f"splits.{name}.cameras", f"cameras among {cameras}", str(bad))
    train = set(splits.get("train", {}).get("episodes", []))
    for name in ("val", "test"):
        both = sorted(train & set(splits.get(name, {}).get("episodes", [])))
        if both:
            raise DataError(where, f"splits.{name}.episodes", "no episode shared with train", f"shared: {both[:10]}")
