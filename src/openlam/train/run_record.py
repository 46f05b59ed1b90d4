"""What a run was made from, checked before it is continued or its cache reused.

A run folder records its config (config.yaml) and its inputs (inputs.json: cache, source and
source fingerprint). `--resume` continues a run only under the same config, but for the keys
declared safe below (more steps, logging, checkpointing, loader workers), and only on the same data;
a cache decoded into the run folder is reused only if it was made from the same source, at the same
size and cameras, and the source has not changed since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from openlam.config import to_dict
from openlam.errors import ConfigError, DamagedFile, OpenLAMError

# keys a resumed run may change: they alter what is logged, saved, where it runs or how long, never
# what a training step computes (`steps` moves the end of the cosine schedule, which is what asking
# for more steps means; it may not fall before the checkpoint)
SAFE_ON_RESUME = frozenset({
    "steps", "log_every", "preview_every", "eval_every", "eval_batches", "probe_every", "probe_pairs",
    "ckpt_every", "keep_last", "time_limit_s", "data.workers", "out", "device",
})


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted.key: leaf}; lists are leaves."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def config_changes(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, given value)} for every dotted key whose value differs."""
    a, b = flatten(saved), flatten(given)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(a.keys() | b.keys()) if a.get(k, "<absent>") != b.get(k, "<absent>")}


def check_resume(cfg: Any, out: Path, step: int) -> None:
    """Refuse to resume the run in `out` (latest checkpoint at `step`) under a config that changes
    what it computes; list every such key with its recorded and given value."""
    path = out / "config.yaml"
    if not path.is_file():
        raise OpenLAMError(f"{path}: missing, so the run's config cannot be checked; resume needs the run's own record")
    from openlam.config import load_config

    try:  # loaded as a config: keys added since the run was made take their defaults on both sides
        saved = _comparable(to_dict(load_config(type(cfg), path)))
    except (ConfigError, OSError) as e:
        raise DamagedFile(f"{e}; resume needs the run's own record") from e
    changes = config_changes(saved, _comparable(to_dict(cfg)))
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        lines = "\n".join(f"  {k}: {a!r} in the run, {b!r} given" for k, (a, b) in unsafe.items())
        raise ConfigError(f"{out}: --resume with a config that changes the run:\n{lines}\n"
                          f"resume with the run's own config ({path}; may differ only in {', '.join(sorted(SAFE_ON_RESUME))}), "
                          "or start a new run in another out")
    if cfg.steps < step:  # equal: a run stopped after its last checkpoint is finished (model, summary)
        raise ConfigError(f"{out}: --resume with steps={cfg.steps}, but the latest checkpoint is at step {step}; "
                          f"give steps >= {step}")


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """Dataset and cache paths compared as the folders they name (`a` and `/abs/a` are one dataset;
    check_inputs compares the data itself)."""
    data = dict(d.get("data", {}))
    for key in ("dataset", "cache"):
        if data.get(key) is not None:
            data[key] = str(Path(data[key]).resolve())
    return {**d, "data": data}


def check_inputs(out: Path, cache_meta: dict[str, Any], cache_path: Path) -> None:
    """On resume: the cache the run would now read must be the data it was trained on."""
    path = out / "inputs.json"
    if not path.is_file():
        raise OpenLAMError(f"{path}: missing, so the run's data cannot be checked; resume needs the run's own record")
    try:
        rec = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise DamagedFile(f"{path}: unreadable ({type(e).__name__}: {e}); resume needs the run's own record") from e
    if rec.get("source_fingerprint") != cache_meta["source_fingerprint"] or rec.get("source") != cache_meta["source"]:
        raise ConfigError(f"{out}: --resume on other data: the run was trained on {rec.get('source')} "
                          f"(fingerprint {rec.get('source_fingerprint')}), the cache {cache_path} holds {cache_meta['source']} "
                          f"(fingerprint {cache_meta['source_fingerprint']}); start a new run in another out")


def cache_mismatch(meta: dict[str, Any], source: Path, fingerprint: str, size: int, cameras: list[str],
                   fps: list[float] | None = None) -> list[str]:
    """Why a cache (its cache.json `meta`) is not a decoding of `source` as it is now at `size` px,
    `cameras` and per-episode `fps`; empty when it is."""
    why = []
    if meta.get("source") != str(source.resolve()):
        why.append(f"it was decoded from {meta.get('source')}, not {source.resolve()}")
    elif meta.get("source_fingerprint") != fingerprint:
        why.append(f"{source} changed since (fingerprint {meta.get('source_fingerprint')} then, {fingerprint} now)")
    if meta.get("config", {}).get("size") != size:
        why.append(f"its frames are {meta.get('config', {}).get('size')} px, the model needs {size}")
    if meta.get("cameras") != cameras:
        why.append(f"it holds cameras {meta.get('cameras')}, the config asks for {cameras}")
    if fps is not None and [e.get("fps") for e in meta.get("episodes", [])] != fps:
        why.append("its episodes' frame rates differ from the source's as now opened (data.fps?)")
    return why
