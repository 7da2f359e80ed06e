"""``pocketrec bench``: every method at every byte budget on one dataset, one row per (method, budget).

For a dataset and a list of budgets (relative to the teacher's dense fp32 item table, ``"3%"``, ``"30x"``,
or absolute, ``"200KB"``):

1. the teacher is trained into ``OUT/teacher`` (or taken from ``teacher=``); a finished one is reused;
2. each method is built at each budget it can reach: ``odrec`` (STT, t = 2), ``tt`` (plain TT, t = 1, same
   distillation), ``eodrec`` (codebooks), and the baselines of :mod:`pocketrec.bench.baselines`:
   ``dense-small`` (smaller d from scratch), ``kmeans`` (post-hoc residual k-means codebooks), and
   ``int8`` / ``int4`` (post-hoc row quantisation; their size is fixed, so they get one row each, budget
   ``fixed``). The names, configs and runners are those of :mod:`pocketrec.methods.registry`; each method
   runs with its registered defaults, the bench's settings (:func:`method_config`) and its
   ``method_options``. A method whose smallest table is above a budget gets a row with the reason in
   ``note``; one that fails for another reason stops the bench (no silent gaps);
3. each model is exported as a device artifact (``OUT/artifacts``) and timed in the numpy runtime, one
   thread, one recommendation (whole catalogue, top 20) at a time;
4. rows go to ``OUT/results.json`` and ``OUT/results.md``; :mod:`pocketrec.bench.report` draws the plots.

Every model lives in ``OUT/METHOD-BUDGET/best`` (``OUT/METHOD-BUDGET-oHASH/best`` when the method has
``method_options``, so that other options never reuse it); a second run reuses a finished one (same dataset
and vocabulary, table within the budget) instead of training it again, so interrupted benches resume.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.config import ConfigError, load_config
from pocketrec.data.dataset import Dataset
from pocketrec.methods import registry
from pocketrec.search.budget import format_bytes, parse_budget
from pocketrec.tables.dense import DenseTable
from pocketrec.train.checkpoint import read_meta
from pocketrec.train.distill import DistillConfig
from pocketrec.train.teacher import TeacherConfig, train_teacher
from pocketrec.train.trainer import TrainConfig

#: the methods of :mod:`pocketrec.methods.registry` that compress session teachers (all run by default)
METHODS = registry.method_names("session")
#: those whose size is fixed (no budget): one row each
FIXED_SIZE = tuple(m for m in METHODS if registry.get_method(m).fixed_size)
#: method config keys the bench sets itself (``method_options`` may not)
BENCH_KEYS = ("teacher", "dataset", "budget", "out")


@dataclass
class BenchConfig:
    """Everything ``pocketrec bench`` reads (overridable as ``--key=value``).

    ``methods`` are names of :mod:`pocketrec.methods.registry`. ``student`` is the schedule of the distilled
    students (odrec, tt, eodrec); ``dense-small`` is trained with the teacher's schedule (``teacher.train``),
    as a from-scratch model needs it; ``odrec_distill`` is the loss of odrec and tt, ``eodrec_code_epochs``
    eodrec's code learning.

    ``method_options`` passes a method's own config keys (those of ``pocketrec compress --method M``), as
    ``METHOD.KEY=VALUE`` entries applied after the settings above, e.g.
    ``--method_options=eodrec.dtype=int8,eodrec.max_codebooks=64,odrec.distill.kd_weight=0.5`` on the command
    line, or in YAML ``method_options: [eodrec.dtype=int8, tt.train.epochs=5]``. ``teacher``, ``dataset``,
    ``budget`` and ``out`` are the bench's own; options of a method not in ``methods`` are checked but unused.

    ``family`` is the teachers compressed: ``"session"`` (this module's bench) or ``"cf"`` (a LightGCN teacher
    and the collaborative-filtering methods, :mod:`pocketrec.bench.cf_runner`, whose
    :func:`~pocketrec.bench.cf_runner.load_bench_config` gives that family's defaults); every one of
    ``methods`` must be of it.
    """

    dataset: str = "ml-100k"
    out: str = ""
    budgets: list[str] = field(default_factory=lambda: ["3%", "10%"])
    methods: list[str] = field(default_factory=lambda: list(registry.method_names("session")))
    teacher_checkpoint: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, patience=3))
    odrec_distill: DistillConfig = field(default_factory=DistillConfig)
    eodrec_code_epochs: int = 10
    latency_repeats: int = 30
    method_options: list[str] = field(default_factory=list)
    family: str = "session"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in registry.METHODS]
        if unknown:
            raise registry.unknown_method_error(unknown)
        if self.family not in registry.FAMILIES:
            raise ValueError(f"family must be one of {', '.join(registry.FAMILIES)}, got {self.family!r}")
        other = [m for m in self.methods if registry.get_method(m).family != self.family]
        if other:
            raise ValueError(f"methods {', '.join(other)} do not compress {self.family} teachers; a {self.family} "
                             f"bench runs {', '.join(registry.method_names(self.family))}")
        if not self.budgets:
            raise ValueError("give at least one budget (e.g. budgets=3%,10%)")
        by_method: dict[str, list[str]] = {}
        for entry in self.method_options:
            method, option = split_method_option(entry)
            by_method.setdefault(method, []).append(option)
        for method, options in by_method.items():  # a bad key or value is refused now, not after the teacher
            try:
                registry.get_method(method).load_config(None, options)
            except ValueError as err:
                raise ConfigError(f"method_options: {method}: {err}") from None

    def options_for(self, method: str) -> list[str]:
        """``method``'s ``KEY=VALUE`` overrides from ``method_options``, in order."""
        return [option for m, option in map(split_method_option, self.method_options) if m == method]


def split_method_option(entry: str) -> tuple[str, str]:
    """``("eodrec", "dtype=int8")`` of ``"eodrec.dtype=int8"``; ``ConfigError`` for anything else."""
    key, sep, value = entry.partition("=")
    method, dot, option = key.strip().partition(".")
    if not sep or not dot or not option:
        raise ConfigError(f"method_options: {entry!r} is not METHOD.KEY=VALUE (e.g. eodrec.dtype=int8)")
    if method not in registry.METHODS:
        raise ConfigError(f"method_options: {registry.unknown_method_error(method)}")
    if option.replace("-", "_") in BENCH_KEYS:
        raise ConfigError(f"method_options: {entry!r}: the bench sets {option} itself")
    return method, f"{option}={value}"


def budget_tag(budget: str) -> str:
    return budget.replace("%", "pct").replace(".", "p").replace("/", "-")


def _reusable(run_dir: Path, data: Dataset, budget_bytes: int | None) -> bool:
    path = run_dir / "best"
    if not (path / "checkpoint.json").is_file():
        return False
    meta = read_meta(path)
    same_data = meta.get("dataset") == data.name and meta.get("vocab_fingerprint") == data.vocab.fingerprint()
    fits = budget_bytes is None or int(meta["table_bytes"]) <= budget_bytes
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


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median ms of ``call()`` over ``repeats`` runs after one warm-up, with BLAS held to one thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        call()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def numpy_latency_ms(artifact: Path, history: list[int], repeats: int) -> float:
    """Median ms of one whole-catalogue top-20 in the numpy runtime, with BLAS held to one thread."""
    from pocketrec.device.runtime import load

    model = load(artifact)
    return median_ms(lambda: model.top_k(history, 20), repeats)


def method_config(method: str, budget_bytes: int | None, teacher_dir: Path, data: Dataset, cfg: BenchConfig,
                  run_dir: Path) -> Any:
    """``method``'s config for one bench job: its registered defaults; the bench's teacher, budget, run folder
    and schedule (``student``, or ``teacher.train`` for a from-scratch method; ``student.seed`` for a post-hoc
    one), ``odrec_distill`` (odrec, tt) and ``eodrec_code_epochs`` (eodrec, cf-codebook); then
    ``method_options``."""
    spec = registry.get_method(method)
    mcfg = spec.load_config()
    mcfg.teacher, mcfg.dataset, mcfg.out = str(teacher_dir), data.name, str(run_dir)
    if budget_bytes is not None:
        mcfg.budget = str(budget_bytes)
    if hasattr(mcfg, "train") and spec.teacher_method:  # refines another method's run: its own schedule, capped
        mcfg.train = dataclasses.replace(mcfg.train, epochs=min(mcfg.train.epochs, cfg.student.epochs),
                                         seed=cfg.student.seed, progress=cfg.student.progress)
    elif hasattr(mcfg, "train"):
        mcfg.train = copy.deepcopy(cfg.teacher.train if spec.kind == "scratch" else cfg.student)
    if hasattr(mcfg, "seed"):
        mcfg.seed = cfg.student.seed
    if method in ("odrec", "tt"):
        mcfg.distill = copy.deepcopy(cfg.odrec_distill)
    elif method in ("eodrec", "cf-codebook"):
        mcfg.code_epochs = cfg.eodrec_code_epochs
    return load_config(type(mcfg), None, cfg.options_for(method), base=mcfg)


def ensure_built(method: str, budget: str | None, budget_bytes: int | None, teacher_dir: Path, data: Dataset,
                 cfg: BenchConfig, run_dir: Path, log: Callable[[str], None]) -> tuple[float | None, str | None]:
    """:func:`build_one` unless a finished model of the same data within the budget is in ``run_dir``:
    ``(build seconds or None when reused, the reason when no table of the method fits the budget)``."""
    if _reusable(run_dir, data, budget_bytes):
        log(f"{method} @ {budget}: reusing {run_dir / 'best'}")
        return None, None
    log(f"{method} @ {budget}: building")
    started = time.perf_counter()
    try:
        build_one(method, budget, budget_bytes, teacher_dir, data, cfg, run_dir)
    except ValueError as err:
        if "below the smallest" not in str(err):
            raise
        log(f"{method} @ {budget}: {err}")
        return None, str(err)
    return time.perf_counter() - started, None


def build_one(method: str, budget: str | None, budget_bytes: int | None, teacher_dir: Path, data: Dataset,
              cfg: BenchConfig, run_dir: Path) -> None:
    """Train or build ``method`` at ``budget`` into ``run_dir/best`` (through the method registry)."""
    spec = registry.get_method(method)
    spec.compress(method_config(method, budget_bytes, teacher_dir, data, cfg, run_dir), data)


def options_tag(options: list[str]) -> str:
    """``""`` without options, else ``-o`` and 8 hex digits of them: a run folder of its own."""
    if not options:
        return ""
    return "-o" + hashlib.sha1("\n".join(options).encode()).hexdigest()[:8]


def run_bench(cfg: BenchConfig, data: Dataset, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the bench (module docstring); returns the rows (also written to ``OUT/results.json``)."""
    from pocketrec.device.artifact import export_artifact

    if cfg.family != "session":
        raise ValueError(f"a {cfg.family} bench runs in pocketrec.bench.cf_runner (run_cf_bench), not here")
    out = Path(cfg.out or f"runs/bench-{data.name}")
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = ensure_teacher(cfg, data, out, log)
    teacher_meta = read_meta(teacher_dir)
    dense_bytes = DenseTable.bytes_for(data.num_items, int(teacher_meta["encoder"]["dim"]))
    budgets = [(b, parse_budget(b, dense_bytes)) for b in cfg.budgets]
    history = [int(i) for i in data.test.sequences[0][:-1]]
    jobs: list[tuple[str, str, int | None, Path]] = [("teacher", "-", None, teacher_dir.parent)]
    for method in cfg.methods:
        tag = options_tag(cfg.options_for(method))
        if registry.get_method(method).fixed_size:
            jobs.append((method, "fixed", None, out / f"{method}{tag}"))
        else:
            jobs += [(method, budget, size, out / f"{method}-{budget_tag(budget)}{tag}") for budget, size in budgets]

    rows: list[dict[str, Any]] = []
    for method, budget, size, run_dir in jobs:
        row: dict[str, Any] = {"dataset": data.name, "method": method, "budget": budget, "budget_bytes": size}
        if method != "teacher" and cfg.options_for(method):
            row["options"] = cfg.options_for(method)
        if method == "teacher":
            log(f"{method} @ {budget}: reusing {run_dir / 'best'}")
        else:
            seconds, note = ensure_built(method, budget, size, teacher_dir, data, cfg, run_dir, log)
            if note is not None:
                rows.append({**row, "note": note})
                continue
            if seconds is not None:
                row["build_seconds"] = seconds
        meta = read_meta(run_dir / "best")
        row["build_seconds"] = row.get("build_seconds", meta.get("build_seconds"))
        artifact = out / "artifacts" / f"{run_dir.name}.safetensors"
        export_artifact(run_dir / "best", artifact)
        test = meta["test"]
        table_bytes = int(meta["table_bytes"])
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
#: every column :func:`table_rows` fills (``customise s``: seconds to fit a trained RULE model to the budget)
ALL_COLUMNS = (*COLUMNS, "customise s")


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows formatted for the Markdown table (and the console), with every column of :data:`ALL_COLUMNS`
    (empty where a row has no such figure)."""
    def pct(value: Any) -> str:
        return f"{100 * value:.2f}" if isinstance(value, float) else ""

    out = []
    for r in rows:
        if "note" in r:
            out.append({**{c: "" for c in ALL_COLUMNS}, "method": r["method"], "budget": r["budget"],
                        "table bytes": "does not fit"})
            continue
        out.append({"method": r["method"], "budget": r["budget"], "table bytes": f"{r['table_bytes']:,}",
                    "artifact bytes": f"{r['artifact_bytes']:,}", "ratio": f"{r['ratio']:.1f}x",
                    "Recall@20 %": pct(r["recall@20"]), "MRR@20 %": pct(r.get("mrr@20")),
                    "NDCG@20 %": pct(r["ndcg@20"]), "latency ms": f"{r['latency_ms']:.2f}",
                    "epoch s": f"{r['epoch_seconds']:.1f}" if r.get("epoch_seconds") else "",
                    "customise s": f"{r['customize_seconds']:.2f}" if r.get("customize_seconds") is not None else ""})
    return out


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows as a Markdown table of ``columns`` (names of :data:`ALL_COLUMNS`)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in table_rows(rows)]
    return "\n".join(lines) + "\n"


def _write(out: Path, rows: list[dict[str, Any]], markdown: str | None = None) -> None:
    """``results.json`` and ``results.md`` (``markdown``, else the session table), each replaced atomically."""
    markdown = markdown_table(rows) if markdown is None else markdown
    for name, text in (("results.json", json.dumps(rows, indent=1)), ("results.md", markdown)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
