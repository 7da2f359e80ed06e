"""TT and codebook item tables on a collaborative-filtering backbone (LightGCN), against the baselines at the
same bytes.

For each dataset (a per-user random 80/10/10 split, ``load_interactions(name)``), a LightGCN teacher (d = 64,
3 layers, the reference schedule: Adam 1e-3, batch 2048, BPR, L2 1e-4, up to 400 epochs, patience 10 on
valid NDCG@20) is trained once into ``OUT/DATASET/teacher`` and reused. Its device table is the dense fp32
table of its *propagated* item vectors; at each ratio of that table (default 10x and 40x) the script builds,
through the method registry (:mod:`pocketrec.methods.cf_compress`):

* ``cf-tt``: the propagated vectors in a TT table (OD-Rec's, ``t = 2``), fine-tuned on BPR + KD;
* ``cf-codebook``: in codebooks (EODRec's layout and learned codes), fine-tuned on BPR + KD;
* ``cf-kmeans``: residual k-means codebooks of them in the same layout, no training;
* ``cf-dense-small``: a LightGCN with the largest smaller d whose propagated table fits, from scratch with
  the teacher's schedule.

The students keep the teacher's propagated user vectors (frozen) and train with the recipe's defaults
(``cf_student_train``: batch 2048, lr 1e-3, up to 100 epochs, patience 5). Every model is selected on valid
NDCG@20 and tested once. Finished runs in OUT are reused, so an interrupted run continues. Rows: dataset,
method, budget, table_bytes, dense_table_bytes, ratio, recall@20, ndcg@20, best epoch, mean epoch seconds,
build seconds (when built by this run), the ``pocketrec`` command that builds the row's model, and this
script's command::

    python benchmarks/cf_tables.py                          # ml-100k, 10x and 40x
    python benchmarks/cf_tables.py --datasets ml-100k,beauty
    python benchmarks/cf_tables.py --quick                  # 2 epochs everywhere; writes nothing

The stored results (``benchmarks/results/cf_tables.json``, ml-100k) ran with the full schedules
(``python benchmarks/cf_tables.py --out runs/cf-tables-full``: the teacher early-stopped at epoch 226, best
216); each row's ``command`` says what built it. At 40x, ``cf-dense-small``'s largest fitting width is d = 1
(64x): d = 2 would be 13,256 B.

Prints a Markdown table and writes ``benchmarks/results/cf_tables.json`` (rows replaced by dataset, method
and budget).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from common import print_table, write_rows

METHODS = ("cf-tt", "cf-codebook", "cf-kmeans", "cf-dense-small")
TEACHER = ["backbone=lightgcn", "encoder.dim=64", "encoder.layers=3"]
COLUMNS = ["dataset", "method", "budget", "table_bytes", "artifact_bytes", "dense_table_bytes", "ratio", "Recall@20 %",
           "NDCG@20 %", "best_epoch", "epoch_seconds"]


def finished(run: Path) -> dict[str, Any] | None:
    """The ``best`` checkpoint meta of a finished run (one tested), else None."""
    from pocketrec.train.checkpoint import read_meta

    best = run / "best"
    if not (best / "checkpoint.json").is_file():
        return None
    meta = read_meta(best)
    return meta if meta.get("test") is not None else None


def teacher_run(data: Any, out: Path, epochs: int | None, log) -> tuple[Path, dict[str, Any], float]:
    """The LightGCN teacher of ``out`` (trained, or resumed from ``out/last``, when not finished)."""
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    meta = finished(out)
    if meta is not None:
        log(f"teacher: reusing {out / 'best'}")
        return out / "best", meta, 0.0
    overrides = [*TEACHER, f"dataset={data.name}", f"out={out}", "train.progress=false"]
    if epochs:
        overrides.append(f"train.epochs={epochs}")
    started = time.perf_counter()
    log("teacher: training" + (" (resuming)" if (out / "last").is_dir() else ""))
    train_teacher(data, load_teacher_config(None, overrides), resume=(out / "last").is_dir())
    return out / "best", finished(out) or {}, time.perf_counter() - started


def build(method: str, budget: str, teacher: Path, data: Any, run: Path, options: list[str]) -> float:
    """Build ``method`` at ``budget`` into ``run`` through the registry; returns the seconds it took."""
    from pocketrec.methods import registry

    spec = registry.get_method(method)
    cfg = spec.load_config(None, [f"teacher={teacher}", f"budget={budget}", f"out={run}", *options])
    if hasattr(cfg, "train"):
        cfg.train.progress = False
    started = time.perf_counter()
    spec.compress(cfg, data)
    return time.perf_counter() - started


def method_options(method: str, args: argparse.Namespace) -> list[str]:
    """The schedule options of a method from the command line (``--quick``, ``--student-epochs``, ...)."""
    from pocketrec.methods import registry

    kind = registry.get_method(method).kind
    if kind == "post-hoc":
        return []
    epochs = 2 if args.quick else args.scratch_epochs if kind == "scratch" else args.student_epochs
    options = [f"train.epochs={epochs}"] if epochs else []
    if args.quick and method == "cf-codebook":
        options.append("code_epochs=1")
    return options


def row_of(data: Any, method: str, budget: str, meta: dict[str, Any], seconds: float, command: str,
           script: str) -> dict[str, Any]:
    test = meta["test"]
    table_bytes = int(meta["table_bytes"])
    dense = int(meta.get("dense_table_bytes", table_bytes))
    return {"dataset": data.name, "method": method, "budget": budget, "table_bytes": table_bytes,
            "dense_table_bytes": dense, "ratio": dense / table_bytes, "recall@20": test["recall@20"],
            "ndcg@20": test["ndcg@20"], "best_epoch": (meta.get("epoch", -1) + 1) or None,
            "epoch_seconds": meta.get("epoch_seconds"), "seconds": round(seconds, 1) if seconds else None,
            "table": meta.get("table"),
            "command": command, "script": script}


def artifact_bytes(checkpoint: Path, data: Any, path: Path) -> int:
    """Bytes of the device file of ``data``'s first user (item table, vocabulary, the user's vector and
    items, manifest): what one phone downloads."""
    from pocketrec.device.artifact import export_artifact

    return export_artifact(checkpoint, path, users=[data.users.raw_ids[0]], data=data).nbytes


def run_dataset(name: str, args: argparse.Namespace, script: str, log) -> list[dict[str, Any]]:
    from pocketrec.backbones.lightgcn import LightGCNConfig
    from pocketrec.data import load_interactions
    from pocketrec.tables.dense import DenseTable

    data = load_interactions(name)
    root = Path(args.out) / (f"{data.name}-quick" if args.quick else data.name)
    log(f"{data.name}: {data.num_users:,} users, {data.num_items:,} items, {data.train.nnz:,} training interactions")
    teacher, meta, seconds = teacher_run(data, root / "teacher", 2 if args.quick else args.teacher_epochs, log)
    epochs = meta.get("train_config", {}).get("epochs")  # a capped teacher says so in its command
    teacher_command = (f"pocketrec train --dataset {data.name} " + " ".join(f"--{o}" for o in TEACHER)
                       + (f" --train.epochs={epochs}" if epochs and epochs != 400 else "")
                       + f" --out {root / 'teacher'}")
    dense = DenseTable.bytes_for(data.num_items, LightGCNConfig(**meta["encoder"]).out_dim)  # propagated rows
    rows = [row_of(data, "lightgcn (teacher)", "1x", {**meta, "dense_table_bytes": dense, "table_bytes": dense},
                   seconds, teacher_command, script)]
    rows[0]["artifact_bytes"] = artifact_bytes(teacher, data, root / "artifacts" / "teacher.safetensors")
    log(f"teacher: ndcg@20 {100 * meta['test']['ndcg@20']:.2f}")
    for budget in args.ratios.split(","):
        for method in args.methods.split(","):
            run = root / f"{method}-{budget}"
            options = method_options(method, args)
            meta = finished(run)
            seconds = 0.0
            if meta is None:
                log(f"{method} @ {budget}: building")
                seconds = build(method, budget, teacher, data, run, options)
                meta = finished(run)
            else:
                log(f"{method} @ {budget}: reusing {run / 'best'}")
            command = (f"pocketrec compress --teacher {teacher} --method {method} --budget {budget} --out {run}"
                       + "".join(f" --{o}" for o in options))
            row = row_of(data, method, budget, meta, seconds, command, script)
            row["artifact_bytes"] = artifact_bytes(run / "best", data, root / "artifacts" / f"{run.name}.safetensors")
            log(f"{method} @ {budget}: {row['table_bytes']:,} B ({row['ratio']:.1f}x), ndcg@20 "
                f"{100 * row['ndcg@20']:.2f}, recall@20 {100 * row['recall@20']:.2f}")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k")
    parser.add_argument("--ratios", default="10x,40x", help="budgets, comma-separated (any pocketrec budget)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/cf-tables", help="run folders (reused)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="cap the teacher's epochs (default 400)")
    parser.add_argument("--student-epochs", type=int, default=None, help="cap the students' epochs (default 100)")
    parser.add_argument("--scratch-epochs", type=int, default=None,
                        help="cap cf-dense-small's epochs (default the teacher's 400)")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere (a smoke run); writes nothing")
    args = parser.parse_args(argv)
    script = shlex.join(["python", "benchmarks/cf_tables.py", *(sys.argv[1:] if argv is None else argv)])

    def log(line: str) -> None:
        print(f"[cf_tables] {line}", file=sys.stderr, flush=True)

    rows = []
    for name in args.datasets.split(","):
        rows += run_dataset(name.strip(), args, script, log)
    print_table([{**r, "Recall@20 %": 100 * r["recall@20"], "NDCG@20 %": 100 * r["ndcg@20"]} for r in rows], COLUMNS)
    if not args.quick:
        path = write_rows("cf_tables", rows, merge_key=("dataset", "method", "budget"))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
