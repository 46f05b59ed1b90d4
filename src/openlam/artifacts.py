"""Atomic writes and input fingerprints.

Anything a later stage relies on (datasets, caches, checkpoints, label files) is written to a
temporary sibling and renamed into place, so a killed process never leaves a half artifact that
looks complete.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openlam.errors import OpenLAMError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Remove the `.NAME.tmp-PID` / `.NAME.old-PID` siblings of `path` left by writers that died
    (killed before they could clean up); a live writer's are kept. Returns what was removed."""
    removed = []
    for p in list(path.parent.glob(f".{glob.escape(path.name)}.tmp-*")) + list(path.parent.glob(f".{glob.escape(path.name)}.old-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out` only if the block finishes.

    The temporary name (`.NAME.tmp-PID`) never looks like a finished artifact; on error it is removed.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OpenLAMError(f"{out}: already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def fingerprint_files(paths: list[Path], root: Path | None = None, sample: int = 1 << 16) -> str:
    """A short hash over files, stable across machines and cheap on large videos.

    Small files are hashed whole; a file larger than 4*`sample` bytes contributes its size and its
    first and last `sample` bytes, which changes whenever a video is re-encoded or truncated.
    """
    h = hashlib.sha256()
    for p in sorted(paths):
        rel = str(p.relative_to(root)) if root else p.name
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= 4 * sample:
                h.update(f.read())
            else:
                h.update(f.read(sample))
                f.seek(size - sample)
                h.update(f.read(sample))
    return h.hexdigest()[:16]
