"""Strict weight loading: every key accounted for, errors that list what does not fit."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from openlam.errors import ConfigError, DamagedFile


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """load_state_dict(strict=True) with an error that lists missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"{where}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(state, strict=True)


def read_weights(path: Path | str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or an error naming the file when it is truncated or corrupt."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error type, or OSError, for a damaged file
        raise DamagedFile(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); it is truncated or damaged") from e
