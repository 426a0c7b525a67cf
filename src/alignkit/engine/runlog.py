"""metrics.jsonl: one JSON object per logged step, flushed as written, so a killed run keeps its curves.

On resume the log is cut back to the resumed step, so the steps after the last checkpoint (which the
resumed run repeats) are not logged twice.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

from alignkit.engine.distributed import is_main_process
from alignkit.files import write_text_atomic


def peak_memory_mb() -> float:
    """Peak memory of this process so far: GPU allocator peak on CUDA, else peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """Every complete line of a metrics file (a half-written last line is ignored)."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Appends metric rows to a JSONL file (main process only) and forwards them to trackers."""

    def __init__(self, path: str | Path, truncate_after: int = 0, accelerator=None, main: bool | None = None):
        """`main`: whether this process writes (default: the accelerator's main process, else rank 0)."""
        self.path = Path(path)
        self.accelerator = accelerator
        if main is None:
            main = accelerator.is_main_process if accelerator is not None else is_main_process()
        self.main = main
        if not self.main:
            self.file = None
            return
        if truncate_after and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif not truncate_after and self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self.file.flush()
        if self.accelerator is not None:
            numeric = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
            self.accelerator.log(numeric, step=row.get("step"))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
