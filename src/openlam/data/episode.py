"""The in-memory episode: synchronized multi-view frames plus whatever labels are known."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from openlam.errors import DataError

DimKind = Literal["delta", "absolute"]


@dataclass
class ActionSpace:
    """What the numbers in `actions` mean.

    `kinds[d]` says how dimension d accumulates over a frame gap: "delta" dims (end-effector
    displacement commands) are summed over the gap, "absolute" dims (gripper open/close, joint
    targets) take the last command in the gap. This single rule defines the action target used by
    the pair sampler and every metric (docs/metrics.md).
    """

    names: list[str]
    kinds: list[DimKind]
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.names) != len(self.kinds):
            raise ValueError(f"action space: {len(self.names)} names but {len(self.kinds)} kinds")
        bad = [k for k in self.kinds if k not in ("delta", "absolute")]
        if bad:
            raise ValueError(f"action space: kinds must be 'delta' or 'absolute', got {bad}")

    @property
    def dim(self) -> int:
        return len(self.names)

    @classmethod
    def guess(cls, names: list[str], description: str = "") -> ActionSpace:
        """For datasets that do not say: gripper-like dims are absolute, the rest deltas."""
        kinds: list[DimKind] = ["absolute" if "grip" in n.lower() else "delta" for n in names]
        return cls(list(names), kinds, description or "kinds guessed from names (gripper=absolute)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionSpace:
        return cls(list(d["names"]), list(d["kinds"]), d.get("description", ""))


@dataclass
class Episode:
    """One synchronized multi-view episode.

    frames:  view -> (T, H, W, 3) uint8, all views the same T (views may differ in H, W)
    masks:   view -> (T, H, W) bool foreground (robot/hand) masks, optional, any subset of views
    actions: (T, A) float32, actions[t] is the command issued at frame t (LeRobot convention)
    state:   (T, S) float32 proprioception, optional
    extras:  name -> (T,) or (T, D) numeric per-frame features that ride along as ordinary
             LeRobot features (e.g. "next.success", "observation.distractors")
    """

    frames: dict[str, np.ndarray]
    fps: float
    language: str = ""
    robot: str = "unknown"
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    actions: np.ndarray | None = None
    action_space: ActionSpace | None = None
    state: np.ndarray | None = None
    state_names: list[str] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return next(iter(self.frames.values())).shape[0]

    @property
    def cameras(self) -> list[str]:
        return list(self.frames)

    def validate(self, where: str = "episode") -> None:
        """Raise DataError naming `where` and the field for any inconsistency."""
        if not self.frames:
            raise DataError(where, "frames", "at least one camera view")
        if not (isinstance(self.fps, (int, float)) and np.isfinite(self.fps) and self.fps > 0):
            raise DataError(where, "fps", "a positive finite number", repr(self.fps))
        T = None
        for view, f in self.frames.items():
            if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
                got = f"{getattr(f, 'dtype', type(f).__name__)} {getattr(f, 'shape', '')}"
                raise DataError(where, f"frames[{view}]", "uint8 array of shape (T, H, W, 3)", got)
            if T is None:
                T = f.shape[0]
            elif f.shape[0] != T:
                raise DataError(where, f"frames[{view}]", f"{T} frames like the other views", f"{f.shape[0]} frames")
        assert T is not None
        if T < 2:
            raise DataError(where, "frames", "at least 2 frames", f"{T}")
        for view, m in self.masks.items():
            if view not in self.frames:
                raise DataError(where, f"masks[{view}]", f"a mask for one of the views {self.cameras}")
            fshape = self.frames[view].shape[:3]
            if not isinstance(m, np.ndarray) or m.dtype != np.bool_ or m.shape != fshape:
                got = f"{getattr(m, 'dtype', type(m).__name__)} {getattr(m, 'shape', '')}"
                raise DataError(where, f"masks[{view}]", f"bool array of shape {fshape}", got)
        if self.actions is not None:
            a = self.actions
            if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[0] != T or a.dtype != np.float32:
                got = f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
                raise DataError(where, "actions", f"float32 array of shape ({T}, A)", got)
            if not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise DataError(where, "actions", "finite values", f"{a[tuple(bad)]} at frame {bad[0]}, dim {bad[1]}")
            if self.action_space is None or self.action_space.dim != a.shape[1]:
                raise DataError(where, "action_space", f"an ActionSpace with {a.shape[1]} dims")
        if self.state is not None:
            s = self.state
            if not isinstance(s, np.ndarray) or s.ndim != 2 or s.shape[0] != T or s.dtype != np.float32:
                got = f"{getattr(s, 'dtype', type(s).__name__)} {getattr(s, 'shape', '')}"
                raise DataError(where, "state", f"float32 array of shape ({T}, S)", got)
            if not np.isfinite(s).all():
                raise DataError(where, "state", "finite values", "NaN/inf")
        for name, x in self.extras.items():
            if not isinstance(x, np.ndarray) or x.ndim not in (1, 2) or x.shape[0] != T or x.dtype.kind not in "biuf":
                got = f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
                raise DataError(where, f"extras[{name}]", f"numeric array of shape ({T},) or ({T}, D)", got)
