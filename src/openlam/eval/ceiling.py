"""The supervised ceiling beside a LAM's probe numbers.

The ceiling is a run of the supervised inverse-dynamics reference (the `action` objective alone,
e.g. configs/supervised_tiny.yaml): the LAM's encoder architecture trained on the true actions of
the same data and splits, evaluated by `openlam eval` like any run. Its held-out probe NMSE from the
continuous embedding is what this encoder can extract from these frames; a LAM is then read as the
share of the ceiling's explained variance it recovers,

    share = (1 - NMSE_LAM) / (1 - NMSE_ceiling),

per split and probe (ridge against ridge, MLP against MLP). 1 = as predictive as supervision; 0 = no
better than the mean. The share is a point estimate: the two NMSEs come from different models
scored on the same rows, and each keeps its own interval in the records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openlam.errors import DataError, OpenLAMError


def _labels_meta(eval_dir: Path) -> dict[str, Any]:
    p = eval_dir / "labels" / "labels.json"
    if not p.is_file():
        raise OpenLAMError(f"{p}: missing; the ceiling run must be evaluated with `openlam eval` first")
    return json.loads(p.read_text())


def check_same_data(ours: dict[str, Any], ref: dict[str, Any], ours_meta: dict[str, Any], ref_dir: Path) -> None:
    """Same source data, views, gap and held-out episodes, or the comparison means nothing."""
    ref_meta = _labels_meta(ref_dir)
    src = ref_dir / "labels" / "labels.json"
    if ref_meta.get("dataset_fingerprint") != ours_meta.get("dataset_fingerprint"):
        raise DataError(src, "dataset_fingerprint", f"the evaluated run's data ({ours_meta.get('dataset')})", str(ref_meta.get("dataset")))
    if sorted(ref_meta.get("views", [])) != sorted(ours_meta.get("views", [])):
        raise DataError(src, "views", f"the evaluated run's views {ours_meta.get('views')}", str(ref_meta.get("views")))
    if ref.get("gap") != ours.get("gap"):
        raise DataError(ref_dir / "metrics.json", "gap", f"the evaluated run's gap {ours.get('gap')}", str(ref.get("gap")))
    if ref.get("splits") != ours.get("splits"):
        raise DataError(ref_dir / "metrics.json", "splits", f"the evaluated run's splits {ours.get('splits')}", str(ref.get("splits")))


MIN_EXPLAINED = 0.1  # the ceiling must explain at least this share of the target's variance


def ceiling_records(records: list[dict[str, Any]], ref: dict[str, Any], ref_run: str) -> list[dict[str, Any]]:
    """For every probe record of the LAM: the ceiling's NMSE (continuous embedding, same probe and
    split) and the share of its explained variance the LAM recovers."""
    ceil = {(r["split"], r["estimator"]): r for r in ref["records"] if r["metric"] == "probe_nmse" and r["features"] == "continuous"}
    out: list[dict[str, Any]] = [{**c, "metric": "ceiling_probe_nmse", "ceiling_run": ref_run} for c in ceil.values()]
    for r in records:
        c = ceil.get((r.get("split"), r.get("estimator"))) if r["metric"] == "probe_nmse" else None
        if c is None or r.get("value") is None or c.get("value") is None:
            continue
        explained = 1.0 - c["value"]
        # a ceiling that explains (almost) nothing defines no share: a ratio to ~0 is noise
        out.append({"metric": "share_of_ceiling", "split": r["split"], "features": r["features"], "estimator": r["estimator"],
                    "value": (1.0 - r["value"]) / explained if explained >= MIN_EXPLAINED else None, "ceiling_nmse": c["value"],
                    "nmse": r["value"], "ceiling_run": ref_run})
    return out
