"""Helpers shared by the benchmark scripts: result rows, peak memory, printing."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_rows(name: str, rows: list[dict[str, Any]], merge_key: tuple[str, ...] = ("dataset", "method")) -> Path:
    """Write ``results/NAME.json``, replacing earlier rows with the same ``merge_key`` values."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {tuple(r.get(k) for k in merge_key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in merge_key) not in keys]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(kept + rows, indent=1))
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str], file=sys.stdout) -> None:
    """A plain Markdown table of ``rows``."""
    def fmt(v: Any) -> str:
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    print("| " + " | ".join(columns) + " |", file=file)
    print("|" + "---|" * len(columns), file=file)
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |", file=file)


def last_json(stdout: str, tag: str) -> dict[str, Any] | None:
    """The JSON of the last ``TAG {json}`` line a benchmark subprocess printed, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    return json.loads(lines[-1][len(tag) + 1:]) if lines else None
