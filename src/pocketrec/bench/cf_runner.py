"""``pocketrec bench --family cf``: the collaborative-filtering methods at every byte budget, RULE included.

The session bench (:mod:`pocketrec.bench.runner`) for a LightGCN teacher, one row per (method, budget):

1. the teacher (``teacher``: LightGCN, d = 64, 3 layers, its reference schedule by default) is trained into
   ``OUT/teacher`` (or taken from ``teacher_checkpoint``); a finished one of the same data is reused. Budgets
   (``"2%"``, ``"40x"``, ``"20KB"``) are relative to its device table: the dense fp32 table of its
   *propagated* item vectors;
2. each method of ``methods`` (default: every ``cf`` method of :mod:`pocketrec.methods.registry`) is built
   through the registry with the session bench's settings (:func:`~pocketrec.bench.runner.method_config`:
   ``student`` for the students, the teacher's schedule for ``cf-dense-small``, ``student.seed`` for the
   post-hoc ones, ``method_options`` last), at every budget; a fixed-size one (``cf-int8``, ``cf-int4``)
   once, budget ``fixed``, its row's ``remark`` naming the budgets it is over. A method whose smallest table
   is above a budget gets a row with the reason in ``note``;
3. ``rule`` is trained **once** (``OUT/rule``, as ``pocketrec compress --method rule`` does), then for each
   budget :class:`~pocketrec.methods.customize.Customizer` chooses its architecture and writes the device
   file, and the choice is evaluated on the test split; the row records those seconds
   (``customize_seconds``) next to the one training's (``build_seconds``);
4. every model is exported as the device file of the dataset's first user (``OUT/artifacts``) and timed in
   the numpy runtime, one thread, one ``recommend_user(user, k=20)`` at a time;
5. rows go to ``OUT/results.json`` and ``OUT/results.md``; :func:`write_cf_report` draws the plots
   (Recall@20 and NDCG@20 against bytes, latency).

Run folders are named as the session bench names them, and finished ones are reused the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pocketrec.bench.runner import (
    BenchConfig,
    _reusable,
    _write,
    budget_tag,
    build_one,
    ensure_built,
    markdown_table,
    median_ms,
    options_tag,
)
from pocketrec.config import load_config, read_yaml, split_override
from pocketrec.methods import registry
from pocketrec.search.budget import format_bytes, parse_budget
from pocketrec.tables.dense import DenseTable
from pocketrec.train.checkpoint import read_meta

#: the registry's collaborative-filtering methods (all run by default)
CF_METHODS = registry.method_names("cf")
#: the default teacher: LightGCN's reference shape (its schedule: the backbone's own defaults)
CF_TEACHER = ("backbone=lightgcn", "encoder.dim=64", "encoder.layers=3")
#: the results table's columns (those of :data:`pocketrec.bench.runner.ALL_COLUMNS` that apply)
CF_COLUMNS = ("method", "budget", "table bytes", "artifact bytes", "ratio", "Recall@20 %", "NDCG@20 %", "latency ms",
              "epoch s", "customise s")
#: the report's accuracy panels
CF_METRICS = (("recall@20", "Recall@20 (%)"), ("ndcg@20", "NDCG@20 (%)"))
CF_CAPTION = ("Test metrics over every test user (each user's earlier items excluded), at the best-validation "
              "epoch; RULE's at the architecture chosen for the budget on validation. Bytes are the item table as "
              "a device stores it, the artifact the device file of one user (item table, item ids, the user's "
              "vector and items, manifest); latency is one `recommend_user(user, k=20)` in the numpy runtime on "
              "one thread.")


def cf_bench_defaults() -> BenchConfig:
    """A :class:`~pocketrec.bench.runner.BenchConfig` of the ``cf`` family: every cf method, the LightGCN
    teacher of :data:`CF_TEACHER`, and the CF students' schedule (``cf_student_train``)."""
    from pocketrec.methods.cf_compress import cf_student_train
    from pocketrec.train.teacher import load_teacher_config

    return BenchConfig(family="cf", methods=list(CF_METHODS), teacher=load_teacher_config(None, list(CF_TEACHER)),
                       student=cf_student_train())


def load_bench_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BenchConfig:
    """The bench's config of either family: ``family`` is read first (the last ``family=`` override, else the
    YAML's ``family:``, else ``"session"``), then the config is loaded over that family's defaults
    (:func:`cf_bench_defaults` for ``cf``) as :func:`pocketrec.config.load_config` does."""
    family = "session"
    if path is not None and Path(path).is_file():
        family = str(read_yaml(Path(path)).get("family", family))
    for override in overrides or []:
        key, value = split_override(override)
        if key == "family":
            family = value
    base = cf_bench_defaults() if family == "cf" else None
    return load_config(BenchConfig, path, overrides, base=base)


def _teacher_dense_bytes(meta: dict[str, Any], num_items: int) -> int:
    """Bytes of the dense fp32 table of the teacher's final (for LightGCN: propagated) item vectors."""
    from pocketrec.backbones.base import backbone_class

    encoder = backbone_class(meta["backbone"]).config_class(**meta["encoder"])
    return DenseTable.bytes_for(num_items, int(getattr(encoder, "out_dim", encoder.dim)))


def _check_cf_teacher(path: Path) -> dict[str, Any]:
    """The meta of the teacher checkpoint ``path``; ``ValueError`` when it is not a collaborative-filtering
    model (a session encoder)."""
    from pocketrec.backbones.base import DEFAULT_BACKBONE

    meta = read_meta(path)
    backbone = meta.get("backbone", DEFAULT_BACKBONE)
    if backbone == DEFAULT_BACKBONE:
        raise ValueError(f"teacher {path} is a {backbone!r} model; the cf bench compresses a collaborative-filtering "
                         "teacher (pocketrec train --backbone lightgcn)")
    return meta


def ensure_cf_teacher(cfg: BenchConfig, data: Any, out: Path, log: Callable[[str], None]) -> Path:
    """The teacher checkpoint folder: ``teacher_checkpoint``, a finished ``OUT/teacher`` of ``data`` and of
    ``cfg.teacher``'s backbone, or a new one trained with ``cfg.teacher``."""
    from pocketrec.backbones.base import DEFAULT_BACKBONE
    from pocketrec.train.teacher import train_teacher

    if cfg.teacher_checkpoint:
        _check_cf_teacher(Path(cfg.teacher_checkpoint))
        return Path(cfg.teacher_checkpoint)
    if cfg.teacher.backbone == DEFAULT_BACKBONE:
        raise ValueError("the cf bench trains a collaborative-filtering teacher: set teacher.backbone=lightgcn "
                         "(load_bench_config with family=cf does)")
    run = out / "teacher"
    if _reusable(run, data, None):
        meta = read_meta(run / "best")
        if meta.get("backbone") == cfg.teacher.backbone and meta.get("num_users") == data.num_users:
            log(f"teacher: reusing {run / 'best'}")
            return run / "best"
    log(f"teacher: training {cfg.teacher.backbone}")
    cfg.teacher.dataset, cfg.teacher.out = data.name, str(run)
    train_teacher(data, cfg.teacher)
    return run / "best"


def user_latency_ms(artifact: Path, user: str, repeats: int) -> float:
    """Median ms of one ``recommend_user(user, k=20)`` (whole catalogue) in the numpy runtime, one thread."""
    from pocketrec.device.runtime import load

    model = load(artifact)
    return median_ms(lambda: model.recommend_user(user, k=20), repeats)


def _measured(row: dict[str, Any], test: dict[str, float], table_bytes: int, dense_bytes: int, artifact: Path,
              user: str, cfg: BenchConfig) -> dict[str, Any]:
    """``row`` with the figures every built model gets: bytes, ratio, test metrics, the artifact and its latency."""
    return {**row, "table_bytes": table_bytes, "artifact_bytes": artifact.stat().st_size,
            "ratio": dense_bytes / table_bytes, "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
            "latency_ms": user_latency_ms(artifact, user, cfg.latency_repeats), "artifact": str(artifact)}


def _say(log: Callable[[str], None], row: dict[str, Any]) -> None:
    log(f"{row['method']} @ {row['budget']}: {format_bytes(row['table_bytes'])} ({row['ratio']:.1f}x), "
        f"Recall@20 {100 * row['recall@20']:.2f}, NDCG@20 {100 * row['ndcg@20']:.2f}, {row['latency_ms']:.2f} ms")


def run_cf_bench(cfg: BenchConfig, data: Any, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the CF bench (module docstring) on ``data`` (an
    :class:`~pocketrec.data.interactions.InteractionDataset`); returns the rows (also in ``OUT/results.json``)."""
    from pocketrec.device.artifact import export_artifact

    if cfg.family != "cf":
        raise ValueError(f"run_cf_bench runs a cf bench, not a {cfg.family} one (pocketrec.bench.runner.run_bench)")
    if not hasattr(data, "users"):
        raise ValueError(f"dataset {data.name!r} has no users (session data): the cf bench needs user-item data")
    out = Path(cfg.out or f"runs/bench-{data.name}-cf")
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = ensure_cf_teacher(cfg, data, out, log)
    teacher_meta = _check_cf_teacher(teacher_dir)
    dense_bytes = _teacher_dense_bytes(teacher_meta, data.num_items)
    budgets = [(b, parse_budget(b, dense_bytes)) for b in cfg.budgets]
    user = str(data.users.raw_ids[0])
    artifacts = out / "artifacts"

    def export(checkpoint: Path, name: str) -> Path:
        path = artifacts / f"{name}.safetensors"
        export_artifact(checkpoint, path, users=[user], data=data)
        return path

    def save(row: dict[str, Any]) -> None:
        rows.append(row)
        _write(out, rows, cf_markdown(rows))

    base = {"dataset": data.name, "user": user, "dense_table_bytes": dense_bytes}
    teacher_row = {**base, "method": "teacher", "budget": "-", "budget_bytes": None,
                   "backbone": teacher_meta["backbone"], "build_seconds": teacher_meta.get("build_seconds"),
                   "epoch_seconds": teacher_meta.get("epoch_seconds"), "checkpoint": str(teacher_dir)}
    rows: list[dict[str, Any]] = []
    save(_measured(teacher_row, teacher_meta["test"], dense_bytes, dense_bytes, export(teacher_dir, "teacher"), user,
                   cfg))
    _say(log, rows[-1])

    for method in cfg.methods:
        options = cfg.options_for(method)
        tag = options_tag(options)
        head = {**base, "method": method, **({"options": options} if options else {})}
        if method == "rule":
            for row in _rule_rows(cfg, data, teacher_dir, out / f"rule{tag}", budgets, dense_bytes, user, head, log):
                save(row)
            continue
        if method == "peel":
            rule_dir = out / f"rule{options_tag(cfg.options_for('rule'))}"
            for row in _peel_rows(cfg, data, teacher_dir, rule_dir, out / f"peel{tag}", budgets, dense_bytes, user,
                                  head, log):
                save(row)
            continue
        fixed = registry.get_method(method).fixed_size
        jobs = [("fixed", None, out / f"{method}{tag}")] if fixed else \
            [(budget, size, out / f"{method}-{budget_tag(budget)}{tag}") for budget, size in budgets]
        for budget, size, run_dir in jobs:
            row: dict[str, Any] = {**head, "budget": budget, "budget_bytes": size}
            seconds, note = ensure_built(method, budget, size, teacher_dir, data, cfg, run_dir, log)
            if note is not None:
                save({**row, "note": note})
                continue
            if seconds is not None:
                row["build_seconds"] = seconds
            meta = read_meta(run_dir / "best")
            table_bytes = int(meta["table_bytes"])
            row.update({"build_seconds": row.get("build_seconds", meta.get("build_seconds")), "table": meta["table"],
                        "epoch_seconds": meta.get("epoch_seconds"), "checkpoint": str(run_dir / "best")})
            if fixed:
                over = [budget for budget, size in budgets if table_bytes > size]
                if over:
                    row["over_budgets"] = over
                    row["remark"] = f"{format_bytes(table_bytes)}, over the budget{'s' * (len(over) > 1)} " \
                                    f"{', '.join(over)}"
                    log(f"{method}: {row['remark']}")
            save(_measured(row, meta["test"], table_bytes, dense_bytes, export(run_dir / "best", run_dir.name),
                           user, cfg))
            _say(log, rows[-1])
    _write(out, rows, cf_markdown(rows))
    return rows


def _rule_rows(cfg: BenchConfig, data: Any, teacher_dir: Path, run_dir: Path, budgets: list[tuple[str, int]],
               dense_bytes: int, user: str, head: dict[str, Any], log: Callable[[str], None]) -> list[dict[str, Any]]:
    """RULE's rows: its elastic model trained once into ``run_dir`` (or reused), then customised, written and
    tested at every budget."""
    from pocketrec.methods.customize import Customizer
    from pocketrec.methods.rule import ESTIMATOR_FILE

    build_seconds = _elastic_run("rule", teacher_dir, data, cfg, run_dir, ESTIMATOR_FILE, log)
    meta = read_meta(run_dir / "best")
    customizer = Customizer(run_dir, dataset=data)
    rows = []
    for budget, size in budgets:
        row: dict[str, Any] = {**head, "budget": budget, "budget_bytes": size, "build_seconds": build_seconds,
                               "epoch_seconds": meta.get("epoch_seconds"), "checkpoint": str(run_dir / "best")}
        started = time.perf_counter()
        try:
            choice = customizer.choose(size)
        except ValueError as err:
            if "below" not in str(err):
                raise
            log(f"rule @ {budget}: {err}")
            rows.append({**row, "note": str(err)})
            continue
        artifact = Path(customizer.write(choice, out_artifact(run_dir, budget), users=[user]))
        row["customize_seconds"] = time.perf_counter() - started
        test = customizer.evaluate(choice, "test")
        row.update({"dtype": choice.dtype, "blocks": int(choice.mask.sum()), "valid_recall@20": choice.verified,
                    "table": {**(meta.get("table") or {}), "stored_dtype": choice.dtype}})
        rows.append(_measured(row, test, choice.table_bytes, dense_bytes, artifact, user, cfg))
        _say(log, rows[-1])
        log(f"rule @ {budget}: customised in {row['customize_seconds']:.2f} s ({choice.dtype}, "
            f"{row['blocks']} blocks)")
    return rows


def _elastic_run(method: str, teacher_dir: Path, data: Any, cfg: BenchConfig, run_dir: Path, done: str,
                 log: Callable[[str], None]) -> float | None:
    """Train ``method`` (rule, peel) into ``run_dir`` once for every budget, or reuse it when ``done`` (the file its
    training writes last) is there; returns the build seconds (the recorded ones when reused)."""
    if _reusable(run_dir, data, None) and (run_dir / done).is_file():
        log(f"{method}: reusing {run_dir / 'best'}")
        return read_meta(run_dir / "best").get("build_seconds")
    log(f"{method}: training (once, for every budget)")
    started = time.perf_counter()
    build_one(method, None, None, teacher_dir, data, cfg, run_dir)
    return time.perf_counter() - started


def _peel_rows(cfg: BenchConfig, data: Any, teacher_dir: Path, rule_dir: Path, run_dir: Path,
               budgets: list[tuple[str, int]], dense_bytes: int, user: str, head: dict[str, Any],
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """PEEL's rows: the RULE model (``rule_dir``, trained here when the bench has not) refined per user group
    into ``run_dir`` once, then at every budget one file per user group (the bench's user's group written with
    its vector), every user tested with its group's file. ``table_bytes``: the largest group's."""
    from pocketrec.methods.peel import PEEL_FILE
    from pocketrec.methods.peel_customize import PeelCustomizer
    from pocketrec.methods.rule import ESTIMATOR_FILE

    _elastic_run("rule", teacher_dir, data, cfg, rule_dir, ESTIMATOR_FILE, log)
    build_seconds = _elastic_run("peel", rule_dir / "best", data, cfg, run_dir, PEEL_FILE, log)
    meta = read_meta(run_dir / "best")
    peel = PeelCustomizer(run_dir, dataset=data, resizable=False)
    mine = peel.group_of(user)
    rows = []
    for budget, size in budgets:
        row: dict[str, Any] = {**head, "budget": budget, "budget_bytes": size, "build_seconds": build_seconds,
                               "checkpoint": str(run_dir / "best")}
        started = time.perf_counter()
        try:
            choices = {g: peel.choose(size, g) for g in range(peel.num_groups)}
        except ValueError as err:
            if "below" not in str(err):
                raise
            log(f"peel @ {budget}: {err}")
            rows.append({**row, "note": str(err)})
            continue
        artifact = Path(peel.write(choices[mine], out_artifact(run_dir, budget), users=[user]))
        row["customize_seconds"] = time.perf_counter() - started
        test = peel.state.evaluate(peel.base, data, "test", {g: (c.mask, c.dtype) for g, c in choices.items()})
        row.update({"dtype": ",".join(sorted({c.dtype for c in choices.values()})),
                    "blocks": int(choices[mine].mask.sum()), "user_groups": peel.num_groups,
                    "table": {**(meta.get("table") or {}), "stored_dtype": choices[mine].dtype}})
        rows.append(_measured(row, test, max(c.table_bytes for c in choices.values()), dense_bytes, artifact, user,
                              cfg))
        _say(log, rows[-1])
    return rows


def out_artifact(run_dir: Path, budget: str) -> Path:
    """Where RULE's device file for ``budget`` goes: ``OUT/artifacts/rule[-oHASH]-BUDGET.safetensors``."""
    return run_dir.parent / "artifacts" / f"{run_dir.name}-{budget_tag(budget)}.safetensors"


def cf_markdown(rows: list[dict[str, Any]]) -> str:
    """``results.md``: the rows as a Markdown table of :data:`CF_COLUMNS`, each row's ``remark`` below it."""
    remarks = [f"- {r['method']} @ {r['budget']}: {r['remark']}" for r in rows if r.get("remark")]
    return markdown_table(rows, CF_COLUMNS) + ("\n" + "\n".join(remarks) + "\n" if remarks else "")


def write_cf_report(rows: list[dict[str, Any]], out: Path, title: str, command: str = "") -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` with the plots (:func:`pocketrec.bench.report.write_report` with the CF
    columns, metrics and caption)."""
    from pocketrec.bench.report import write_report

    return write_report(rows, out, title, command, columns=CF_COLUMNS, metrics=CF_METRICS, caption=CF_CAPTION)


def bench_cf(cfg: BenchConfig, command: str = "", quiet: bool = False, log: Callable[[str], None] = print
             ) -> tuple[list[dict[str, Any]], Path, Path]:
    """What ``pocketrec bench --family cf`` does: load ``cfg.dataset`` as interactions (a session dataset is a
    one-line :class:`~pocketrec.data.errors.DataError`), run the bench, write the report; returns the rows and
    the report's two paths."""
    from pocketrec.data import registry as data_registry

    if quiet:
        cfg.teacher.train.progress = cfg.student.progress = False
    data = data_registry.load_interactions(cfg.dataset)
    cfg.out = cfg.out or f"runs/bench-{data.name}-cf"
    log(f"{data.name}: {data.num_users:,} users, {data.num_items:,} items, {data.train.nnz:,} training interactions; "
        f"budgets {', '.join(cfg.budgets)}; out {cfg.out}")
    rows = run_cf_bench(cfg, data, log)
    md, page = write_cf_report(rows, Path(cfg.out), f"{data.name} (collaborative filtering)", command)
    return rows, md, page
