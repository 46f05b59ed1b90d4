"""`openlam bench label MODEL --dataset DATASET`: labelling throughput (pairs/s). `label()` times
only its shard loop, after the frame cache is built, so decoding is not counted."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from openlam.label import LabelConfig, label, resolve_model


def bench_label(model: str, dataset: str) -> dict[str, Any]:
    _, gap = resolve_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        r = label(model, dataset, Path(tmp) / "out", LabelConfig(gap=gap))
    return {"model": model, "dataset": dataset, "pairs labelled (all views)": r["labelled_pairs_this_run"],
            "seconds": r["seconds"], "pairs/s": r["pairs_per_s"]}
