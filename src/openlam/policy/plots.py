"""The policy experiment's figure: closed-loop success per row and number of demos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def success_figure(rows: list[str], demos: list[int], seeds: list[int], records: list[dict[str, Any]], path: Path) -> Path:
    """Bars: mean overall success over seeds per row, grouped by demos; dots: each seed's rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(rows) * len(demos), 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        for j, n in enumerate(demos):
            rates = [float(r["rollout"]["overall"]["rate"]) for r in records if r["row"] == row and r["demos"] == n]
            if not rates:
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            ax.bar(x, np.mean(rates), width * 0.9, color=f"C{i}", label=row if j == 0 else None)
            ax.scatter([x] * len(rates), rates, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(demos)), [f"{n} demos per task" for n in demos])
    ax.set_ylabel("closed-loop success")
    ax.set_ylim(0, 1)
    ax.set_title(f"success per row: mean over {len(seeds)} seeds (bars), each seed (dots)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
