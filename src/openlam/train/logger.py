"""Run logging: metrics.jsonl (every step, flushed each log interval), TensorBoard scalars, and a
progress line with loss, throughput and ETA. Only rank 0 logs."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, out: Path, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total, self.start = total_steps, start_step
        self.t0 = time.perf_counter()
        self.metrics_path = out / "metrics.jsonl"
        self.tb = None
        self.bar = None
        if not enabled:
            return
        if start_step > 0 and self.metrics_path.is_file():  # resume: drop what came after the checkpoint
            keep = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line).get("step", 0) <= start_step]
            self.metrics_path.write_text("".join(x + "\n" for x in keep))
        self.file = open(self.metrics_path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        except ImportError:  # pragma: no cover - tensorboard is a core dependency
            self.tb = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, info="")

    def rows(self, rows: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for r in rows:
            self.file.write(json.dumps(r) + "\n")
        self.file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.enabled and self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def probe(self, step: int, values: dict[str, float]) -> None:
        """Online-probe scores: a metrics.jsonl row and TensorBoard scalars."""
        self.rows([{"step": step, **values}])
        self.scalars(step, values)

    def text(self, step: int, tag: str, msg: str) -> None:
        if self.enabled:
            self.rows([{"step": step, "event": tag, "message": msg}])
            if self.tb is not None:
                self.tb.add_text(tag, msg, step)

    def progress(self, step: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        info = f"loss {loss:.4f} | {samples_per_s:.0f} samples/s | eta {eta:.0f}s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        else:
            print(f"step {step}/{self.total} | {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()
        self.file.close()
