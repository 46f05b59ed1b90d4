"""Randomness of the global batch under DDP: every rank draws the whole global batch's tensor from
the same RNG state and keeps its own rows, so N ranks use exactly the random numbers one process
would (NSVQ noise, the cycle's buffer draws, flow-matching noise and times)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def global_draw(draw: Callable[..., torch.Tensor], n: int, *tail: int, **kw: object) -> torch.Tensor:
    """This rank's n rows of draw((world * n, *tail), **kw), e.g. global_draw(torch.randn, 8, 4, device=d)."""
    if not distributed():
        return draw((n, *tail), **kw)
    world, rank = dist.get_world_size(), dist.get_rank()
    return draw((world * n, *tail), **kw)[rank * n : (rank + 1) * n]
