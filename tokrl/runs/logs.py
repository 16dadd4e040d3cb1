"""The JSON-lines logs of a run directory: reading them, and cutting them back on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; [] when it is missing. A torn line (a run
    killed mid-write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_logs(run_dir: Path, step: int) -> dict[str, float]:
    """Drop log records of steps after ``step`` (and any final evaluation at ``step``);
    returns the evaluation before training (the step-0 line of eval.jsonl)."""
    before: dict[str, float] = {}
    for name in ("metrics", "samples", "eval", "eval_samples"):
        path = run_dir / f"{name}.jsonl"
        if not path.is_file():
            continue
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:          # a line cut short by the crash
                continue
            limit = step if name in ("metrics", "samples") else step - 1
            if record.get("step", 0) <= limit or record.get("step", 0) == 0:
                keep.append(line)
                if name == "eval" and record.get("step") == 0:
                    before = {k: v for k, v in record.items() if k != "step"}
        path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
    return before
