"""Write one benchmark's results as a section of docs/benchmarks.md (replacing its older run)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from openlam.artifacts import atomic_write_text

HEADER = "# Results\n\nEvery section is written by the command it shows; re-run it to refresh the numbers.\n"


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def record(name: str, results: dict[str, Any], notes: str = "", path: str | Path = "docs/benchmarks.md") -> str:
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in results.items())
    return record_section(name, f"| metric | value |\n|---|---|\n{rows}", notes, path)


def command_line() -> str:
    """The command this process was started with, as a user would type it."""
    as_cli = sys.argv and (sys.argv[0].endswith("openlam") or sys.argv[0].endswith("openlam/__main__.py"))  # also python -m openlam
    return "openlam " + " ".join(sys.argv[1:]) if as_cli else " ".join(sys.argv)


def record_section(name: str, body: str, notes: str = "", path: str | Path = "docs/benchmarks.md", header: str = HEADER) -> str:
    """Replace (or append) section `## name` of a markdown file with the command, machine, date and
    `body`; a new file starts with `header`."""
    path = Path(path)
    text = path.read_text() if path.is_file() else header
    section = (
        f"## {name}\n\n- command: `{command_line()}`\n- machine: {machine()}\n- date: {dt.date.today().isoformat()}\n"
        + (f"- notes: {notes}\n" if notes else "")
        + f"\n{body}\n"
    )
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    atomic_write_text(path, text)
    return section


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)
