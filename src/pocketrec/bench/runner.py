"""``pocketrec bench``: every method at every byte budget on one dataset, one row per (method, budget).

For a dataset and a list of budgets (relative to the teacher's dense fp32 item table, ``"3%"``, ``"30x"``,
or absolute, ``"200KB"``):

1. the teacher is trained into ``OUT/teacher`` (or taken from ``teacher=``); a finished one is reused;
2. each method is built at each budget it can reach: ``odrec`` (STT, t = 2), ``tt`` (plain TT, t = 1, same
   distillation), ``eodrec`` (codebooks), and the baselines of :mod:`pocketrec.bench.baselines`:
   ``dense-small`` (smaller d from scratch), ``kmeans`` (post-hoc residual k-means codebooks), and
   ``int8`` / ``int4`` (post-hoc row quantisation; their size is fixed, so they get one row each, budget
   ``fixed``). A method whose smallest table is above a budget gets a row with the reason in ``note``;
   one that fails for another reason stops the bench (no silent gaps);
3. each model is exported as a device artifact (``OUT/artifacts``) and timed in the numpy runtime, one
   thread, one recommendation (whole catalogue, top 20) at a time;
4. rows go to ``OUT/results.json`` and ``OUT/results.md``; :mod:`pocketrec.bench.report` draws the plots.

Every model lives in ``OUT/METHOD-BUDGET/best``; a second run reuses a finished one (same dataset and
vocabulary, table within the budget) instead of training it again, so interrupted benches resume.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.bench.baselines import POST_HOC, post_hoc_model, train_dense_small
from pocketrec.data.dataset import Dataset
from pocketrec.search.budget import format_bytes, parse_budget
from pocketrec.tables.dense import DenseTable
from pocketrec.train.checkpoint import load_checkpoint, read_meta
from pocketrec.train.distill import DistillConfig
from pocketrec.train.teacher import TeacherConfig, train_teacher
from pocketrec.train.trainer import TrainConfig

METHODS = ("odrec", "tt", "eodrec", "dense-small", "kmeans", "int8", "int4")
FIXED_SIZE = ("int8", "int4")


@dataclass
class BenchConfig:
    """Everything ``pocketrec bench`` reads (overridable as ``--key=value``).

    ``student`` is the schedule of the distilled students (odrec, tt, eodrec); ``dense-small`` is trained
    with the teacher's schedule (``teacher.train``), as a from-scratch model needs it.
    """

    dataset: str = "ml-100k"
    out: str = ""
    budgets: list[str] = field(default_factory=lambda: ["3%", "10%"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    teacher_checkpoint: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, patience=3))
    odrec_distill: DistillConfig = field(default_factory=DistillConfig)
    eodrec_code_epochs: int = 10
    latency_repeats: int = 30

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown} (known: {', '.join(METHODS)})")
        if not self.budgets:
            raise ValueError("give at least one budget (e.g. budgets=3%,10%)")


def budget_tag(budget: str) -> str:
    return budget.replace("%", "pct").replace(".", "p").replace("/", "-")


def _reusable(run_dir: Path, data: Dataset, budget_bytes: int | None) -> bool:
    path = run_dir / "best"
    if not (path / "checkpoint.json").is_file():
        return False
    meta = read_meta(path)
    same_data = meta.get("dataset") == data.name and meta.get("vocab_fingerprint") == data.vocab.fingerprint()
    fits = budget_bytes is None or int(meta.get("table_bytes", meta.get("table_nbytes", 0))) <= budget_bytes
    return same_data and fits and meta.get("test") is not None


def ensure_teacher(cfg: BenchConfig, data: Dataset, out: Path, log: Callable[[str], None]) -> Path:
    """The teacher checkpoint folder: ``teacher_checkpoint``, a finished ``OUT/teacher``, or a new one."""
    if cfg.teacher_checkpoint:
        return Path(cfg.teacher_checkpoint)
    if _reusable(out / "teacher", data, None):
        log(f"teacher: reusing {out / 'teacher' / 'best'}")
        return out / "teacher" / "best"
    log("teacher: training")
    teacher_cfg = cfg.teacher
    teacher_cfg.dataset, teacher_cfg.out = data.name, str(out / "teacher")
    train_teacher(data, teacher_cfg)
    return out / "teacher" / "best"


def numpy_latency_ms(artifact: Path, history: list[int], repeats: int) -> float:
    """Median ms of one whole-catalogue top-20 in the numpy runtime, with BLAS held to one thread."""
    from threadpoolctl import threadpool_limits

    from pocketrec.device.runtime import load

    model = load(artifact)
    with threadpool_limits(limits=1):
        model.top_k(history, 20)
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            model.top_k(history, 20)
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def build_one(method: str, budget: str | None, budget_bytes: int | None, teacher_dir: Path, data: Dataset,
              cfg: BenchConfig, run_dir: Path) -> None:
    """Train or build ``method`` at ``budget`` into ``run_dir/best``."""
    from pocketrec.methods.eodrec import compress_eodrec
    from pocketrec.methods.odrec import compress_odrec

    student = cfg.student
    if method in ("odrec", "tt"):
        compress_odrec(teacher_dir, data, budget_bytes, t=2 if method == "odrec" else 1, out_dir=run_dir,
                       distill=cfg.odrec_distill, train=student)
    elif method == "eodrec":
        compress_eodrec(teacher_dir, data, budget_bytes, code_epochs=cfg.eodrec_code_epochs, out_dir=run_dir,
                        train=student)
    elif method == "dense-small":
        teacher, _ = load_checkpoint(teacher_dir)
        train_dense_small(teacher, data, budget_bytes, cfg.teacher.train, run_dir)
    elif method in POST_HOC:
        teacher, _ = load_checkpoint(teacher_dir)
        post_hoc_model(method, teacher, data, budget_bytes, run_dir, seed=student.seed)
    else:  # pragma: no cover - BenchConfig validates the names
        raise ValueError(method)


def run_bench(cfg: BenchConfig, data: Dataset, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the bench (module docstring); returns the rows (also written to ``OUT/results.json``)."""
    from pocketrec.device.artifact import export_artifact

    out = Path(cfg.out or f"runs/bench-{data.name}")
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = ensure_teacher(cfg, data, out, log)
    teacher_meta = read_meta(teacher_dir)
    dense_bytes = DenseTable.bytes_for(data.num_items, int(teacher_meta["encoder"]["dim"]))
    budgets = [(b, parse_budget(b, dense_bytes)) for b in cfg.budgets]
    history = [int(i) for i in data.test.sequences[0][:-1]]
    jobs: list[tuple[str, str, int | None, Path]] = [("teacher", "-", None, teacher_dir.parent)]
    for method in cfg.methods:
        if method in FIXED_SIZE:
            jobs.append((method, "fixed", None, out / method))
        else:
            jobs += [(method, budget, size, out / f"{method}-{budget_tag(budget)}") for budget, size in budgets]

    rows: list[dict[str, Any]] = []
    for method, budget, size, run_dir in jobs:
        row: dict[str, Any] = {"dataset": data.name, "method": method, "budget": budget, "budget_bytes": size}
        started = time.perf_counter()
        if method != "teacher" and not _reusable(run_dir, data, size):
            log(f"{method} @ {budget}: building")
            try:
                build_one(method, budget, size, teacher_dir, data, cfg, run_dir)
            except ValueError as err:
                if "below the smallest" not in str(err):
                    raise
                log(f"{method} @ {budget}: {err}")
                rows.append({**row, "note": str(err)})
                continue
            row["build_seconds"] = time.perf_counter() - started
        else:
            log(f"{method} @ {budget}: reusing {run_dir / 'best'}")
        meta = read_meta(run_dir / "best")
        row["build_seconds"] = row.get("build_seconds", meta.get("build_seconds"))
        artifact = out / "artifacts" / f"{run_dir.name}.safetensors"
        export_artifact(run_dir / "best", artifact)
        test = meta["test"]
        table_bytes = int(meta["table_nbytes"])
        row.update({"table_bytes": table_bytes, "artifact_bytes": artifact.stat().st_size,
                    "ratio": dense_bytes / table_bytes, "recall@20": test["recall@20"], "mrr@20": test["mrr@20"],
                    "ndcg@20": test["ndcg@20"], "table": meta["table"],
                    "latency_ms": numpy_latency_ms(artifact, history, cfg.latency_repeats),
                    "epoch_seconds": meta.get("epoch_seconds"), "checkpoint": str(run_dir / "best"),
                    "artifact": str(artifact)})
        rows.append(row)
        _write(out, rows)
        log(f"{method} @ {budget}: {format_bytes(table_bytes)} ({row['ratio']:.1f}x), "
            f"Recall@20 {100 * test['recall@20']:.2f}, MRR@20 {100 * test['mrr@20']:.2f}, "
            f"{row['latency_ms']:.2f} ms")
    _write(out, rows)
    return rows


COLUMNS = ("method", "budget", "table bytes", "artifact bytes", "ratio", "Recall@20 %", "MRR@20 %", "NDCG@20 %",
           "latency ms", "epoch s")


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows formatted for the Markdown table (and the console)."""
    def pct(value: Any) -> str:
        return f"{100 * value:.2f}" if isinstance(value, float) else ""

    out = []
    for r in rows:
        if "note" in r:
            out.append({"method": r["method"], "budget": r["budget"], "table bytes": "does not fit",
                        **{c: "" for c in COLUMNS[3:]}})
            continue
        out.append({"method": r["method"], "budget": r["budget"], "table bytes": f"{r['table_bytes']:,}",
                    "artifact bytes": f"{r['artifact_bytes']:,}", "ratio": f"{r['ratio']:.1f}x",
                    "Recall@20 %": pct(r["recall@20"]), "MRR@20 %": pct(r["mrr@20"]),
                    "NDCG@20 %": pct(r["ndcg@20"]), "latency ms": f"{r['latency_ms']:.2f}",
                    "epoch s": f"{r['epoch_seconds']:.1f}" if r.get("epoch_seconds") else ""})
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in table_rows(rows)]
    return "\n".join(lines) + "\n"


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    for name, text in (("results.json", json.dumps(rows, indent=1)), ("results.md", markdown_table(rows))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
