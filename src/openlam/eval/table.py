"""One row per labelled pair, joined with what the metrics need: the pair's action target over its
gap, its task, and which splits it belongs to (episode in the split AND view among the split's
cameras, so `ood_camera` rows are the held-out views only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openlam.data.cache import FrameCache
from openlam.data.pairs import action_targets
from openlam.errors import DataError
from openlam.label import load_labels


@dataclass
class EvalTable:
    episode: np.ndarray  # (N,) int64
    frame: np.ndarray  # (N,) int64, t of the pair (o_t, o_t+gap)
    view: np.ndarray  # (N,) str
    gap: np.ndarray  # (N,) int64, frames
    tokens: np.ndarray  # (N, K) int64
    z: np.ndarray  # (N, K * code_dim) float32, pre-quantization embedding
    action: np.ndarray  # (N, A) float32 action target over the gap
    task: np.ndarray  # (N,) str
    splits: dict[str, np.ndarray]  # split name -> (N,) bool
    meta: dict[str, Any]  # labels.json
    codebook_size: int
    action_names: list[str] = field(default_factory=list)
    # with a background bottleneck (Motion-Focused LAM): its codes (N, K_bg), pre-quantization embedding and codebook size
    bg_tokens: np.ndarray | None = None
    bg_z: np.ndarray | None = None
    bg_codebook_size: int = 0

    def __len__(self) -> int:
        return len(self.episode)

    def rows(self, split: str) -> np.ndarray:
        return np.nonzero(self.splits[split])[0]

    def features(self) -> dict[str, np.ndarray]:
        """The two latent representations probes read: one-hot codes and the continuous embedding."""
        from openlam.eval.probes import one_hot_tokens

        if not hasattr(self, "_features"):
            self._features = {"onehot": one_hot_tokens(self.tokens, self.codebook_size), "continuous": self.z}
        return self._features

    def target_keys(self) -> np.ndarray:
        """One integer per action target (episode, frame): the views of a pair share it."""
        return self.episode * (int(self.frame.max()) + 1 if len(self.frame) else 1) + self.frame

    def counts(self, rows: np.ndarray) -> dict[str, int]:
        """Sizes of a set of rows: rows, distinct action targets and episodes (the interval's unit)."""
        return {"n": int(len(rows)), "n_targets": int(len(np.unique(self.target_keys()[rows]))),
                "n_episodes": int(len(np.unique(self.episode[rows])))}

    def eval_splits(self) -> list[str]:
        """Held-out splits that have labelled rows: test first, then the OOD ones."""
        names = ["test"] + sorted(s for s in self.splits if s.startswith("ood"))
        return [s for s in names if s in self.splits and self.splits[s].any()]


def build_table(labels_dir: str | Path, cache: FrameCache, require_actions: bool = True) -> EvalTable:
    """require_actions=False: datasets used only for alignment (e.g. human video) get (N, 0) actions."""
    meta, t = load_labels(labels_dir)
    if cache.action_space is None and require_actions:
        raise DataError(cache.path / "cache.json", "action_space", "a dataset with actions (evaluation compares latents to real actions)", "none")
    ep = t.column("episode").to_numpy().astype(np.int64)
    if len(ep) and ep.max() >= len(cache.episodes):
        raise DataError(Path(labels_dir) / "labels.json", "episodes", f"labels of the dataset cached at {cache.path} ({len(cache.episodes)} episodes)",
                        f"episode index {ep.max()}")
    frame = t.column("frame").to_numpy().astype(np.int64)
    gap = t.column("gap").to_numpy().astype(np.int64)
    view = np.asarray(t.column("view").to_pylist(), dtype=object)
    K = meta["num_tokens"]
    tokens = np.asarray(t.column("tokens").combine_chunks().flatten(), dtype=np.int64).reshape(-1, K)
    zc = t.column("z_cont").combine_chunks()
    z = np.asarray(zc.flatten(), dtype=np.float32).reshape(len(ep), -1)
    starts = cache.starts
    if cache.action_space is not None:
        acts = np.asarray(cache.actions(), dtype=np.float64)
        cum = np.concatenate([np.zeros((1, acts.shape[1])), np.cumsum(acts, 0)])
        delta = np.array([k == "delta" for k in cache.action_space.kinds])
        action = action_targets(cum, acts, starts[ep] + frame, gap, delta)
    else:
        action = np.zeros((len(ep), 0), np.float32)
    tasks = np.array(cache.tasks, dtype=object)
    splits = {}
    for name, sp in cache.splits.items():
        in_eps = np.isin(ep, np.asarray(sp["episodes"], dtype=np.int64))
        splits[name] = in_eps & np.isin(view, np.asarray(sp.get("cameras", cache.cameras), dtype=object))
    bg_tokens = bg_z = None
    if "bg_tokens" in t.column_names:
        bg_tokens = np.asarray(t.column("bg_tokens").combine_chunks().flatten(), dtype=np.int64).reshape(len(ep), -1)
        bg_z = np.asarray(t.column("bg_z_cont").combine_chunks().flatten(), dtype=np.float32).reshape(len(ep), -1)
    return EvalTable(ep, frame, view, gap, tokens, z, action, tasks[ep] if len(ep) else tasks[:0], splits, meta,
                     int(meta["codebook_size"]), list(cache.action_space.names) if cache.action_space is not None else [],
                     bg_tokens, bg_z, int(meta.get("background_codebook_size", 0)))
