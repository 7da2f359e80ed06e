"""Quantizers for EODRec's codebook table, judged by what they do to ranking.

For each teacher (the best dense model of its dataset, whose table the budgets are fractions of) and each budget
(default 40x and 20x), the budget solver picks EODRec's default layout (M codebooks of K, float16 codebooks,
bit-packed codes) once; then every quantizer of ``--quantizers`` fills it (:mod:`pocketrec.quantize`):

1. code error: ``sum |x - x^|^2 / sum |x|^2`` over the teacher's item rows, at the stored precision;
2. zero-shot: the teacher's own encoder scores a seeded sample of ``--sessions`` validation sessions against the
   quantised table (no training): validation Recall@20 / MRR@20;
3. distilled (``--distill``: quantizer names, ``best`` for the best zero-shot one, or ``none``): the EODRec student
   trained from those codes with the headline rows' schedule (3 epochs, patience 1, lr x 0.1 every 2 epochs),
   test Recall@20 / MRR@20 at the epoch chosen on validation.

Prints a Markdown table per teacher and writes ``benchmarks/results/quantizers.json``::

    python benchmarks/quantizers.py --teachers tmall=runs/bench-d128/teacher-d128-tmall/best
    python benchmarks/quantizers.py --teachers diginetica=runs/bench-item/teacher-d128-item-diginetica/best \\
        --distill rq,best
    python benchmarks/quantizers.py --quick --teachers NAME=RUN   # two quantizers, 200 sessions; writes nothing
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from common import command_line, peak_rss_mib, print_table, write_rows

#: every quantizer, and ``learned``: the paper's autoencoder (EODRec's ``--codes learned``)
DEFAULT_QUANTIZERS = "rq,rq-icm,pq,faiss-rq,faiss-prq,faiss-pq,faiss-lsq,learned"


def zero_shot_rows(name: str, checkpoint: Path, ratio: str, quantizers: list[str], sessions: int, log,
                   data: Any = None) -> tuple[list[dict[str, Any]], Any, Any]:
    from pocketrec.data.registry import load_dataset
    from pocketrec.methods.code_ranking import quantized_table, valid_sample, zero_shot
    from pocketrec.methods.eodrec import EODRecConfig
    from pocketrec.methods.recipe import teacher_rows
    from pocketrec.search.budget import parse_budget
    from pocketrec.tables.codebook import CodebookTable
    from pocketrec.tables.dense import DenseTable
    from pocketrec.train.checkpoint import load_checkpoint

    teacher, meta = load_checkpoint(checkpoint)
    data = data if data is not None else load_dataset(meta["dataset"])
    dense = DenseTable.bytes_for(teacher.num_items, teacher.config.dim)
    budget = parse_budget(ratio, dense)
    layout = EODRecConfig()
    M, K = CodebookTable.config_for_budget(teacher.num_items, teacher.config.dim, budget, dtype=layout.dtype,
                                           bitpack=layout.bitpack, max_codebooks=layout.max_codebooks)
    rows = teacher_rows(teacher)
    split = valid_sample(data, sessions, seed=0)
    from pocketrec.eval.evaluate import evaluate

    own = evaluate(teacher, split, ks=(20,))  # the dense teacher on the same sample: the zero-shot yardstick
    out = [{"dataset": name, "method": "teacher", "phase": "zero-shot", "budget": "1x", "teacher": str(checkpoint),
            "quantizer": "dense", "layout": "dense float32", "table_bytes": dense, "dense_table_bytes": dense,
            "code_error": 0.0, "valid_recall@20": own["recall@20"], "valid_mrr@20": own["mrr@20"],
            "sessions": len(split)}]
    log(f"{name} dense teacher: valid R@20 {100 * own['recall@20']:.2f} MRR@20 {100 * own['mrr@20']:.2f} "
        f"({len(split)} sessions)")
    for quantizer in quantizers:
        try:
            if quantizer == "learned":  # the paper's autoencoder (EODRec's --codes learned), timed like the others
                table, report = learned_table(teacher, budget, layout)
            else:
                table, report = quantized_table(quantizer, rows, M, K, layout.dtype, layout.bitpack, seed=0)
        except ValueError as err:
            log(f"{name} {ratio} {quantizer}: skipped ({err})")
            continue
        started = time.perf_counter()
        valid = zero_shot(teacher, table, split)
        out.append({"dataset": name, "method": f"codes-{quantizer}", "phase": "zero-shot", "budget": ratio,
                    "teacher": str(checkpoint), "quantizer": quantizer, "layout": report["layout"], "M": M, "K": K,
                    "table_bytes": table.nbytes(), "dense_table_bytes": dense, "code_error": report["code_error"],
                    "fit_seconds": report["fit_seconds"], "eval_seconds": round(time.perf_counter() - started, 1),
                    **({"used_learned": report["used_learned"]} if "used_learned" in report else {}),
                    "valid_recall@20": valid["recall@20"], "valid_mrr@20": valid["mrr@20"],
                    "sessions": len(split)})
        log(f"{name} {ratio} {report['layout']:>10} ({quantizer}): error {report['code_error']:.4f}, zero-shot "
            f"valid R@20 {100 * valid['recall@20']:.2f} MRR@20 {100 * valid['mrr@20']:.2f} "
            f"(fit {report['fit_seconds']:.0f} s)")
    return out, data, teacher


def learned_table(teacher: Any, budget: int, layout: Any) -> tuple[Any, dict[str, Any]]:
    """EODRec's ``codes=learned`` (the Gumbel autoencoder from residual k-means), built by EODRec's own table
    builder with the layout keys and schedule of its defaults, timed."""
    from pocketrec.methods.eodrec import codebook_table_builder

    started = time.perf_counter()
    build = codebook_table_builder(0, 0, layout.bitpack, layout.max_codebooks, "learned", layout.code_epochs, seed=0,
                                   dtype=layout.dtype)
    table, meta = build(teacher, budget)
    return table, {"layout": meta["layout"], "code_error": meta["code_error"],
                   "fit_seconds": round(time.perf_counter() - started, 2),
                   "used_learned": meta["code_learning"]["used_learned"]}


def distill_row(name: str, checkpoint: Path, ratio: str, quantizer: str, data: Any, out: Path, epochs: int | None,
                log) -> dict[str, Any]:
    from pocketrec.methods.eodrec import compress_eodrec
    from pocketrec.train.trainer import TrainConfig

    # the schedule of the headline EODRec rows (benchmarks/recipes/eodrec-tmall-d128.yaml); the codes are fitted
    # again with the trainer's seed (42), the zero-shot rows with seed 0: same quantizer, another draw
    train = TrainConfig(progress=False, epochs=epochs or 3, patience=1, lr_decay=0.1, lr_decay_every=2)
    run = out / f"{name}-{ratio}-{quantizer}"
    started = time.perf_counter()
    student, result = compress_eodrec(checkpoint, data, ratio, codes=quantizer, out_dir=run, train=train)
    fit = result.fit
    log(f"{name} {ratio} {quantizer}: distilled, test R@20 {100 * result.test['recall@20']:.2f} MRR@20 "
        f"{100 * result.test['mrr@20']:.2f} (best epoch {fit.best_epoch + 1}, {time.perf_counter() - started:.0f} s)")
    return {"dataset": name, "method": f"eodrec-{quantizer}", "phase": "distilled", "budget": ratio,
            "teacher": str(checkpoint), "quantizer": quantizer, "layout": result.meta.get("layout"),
            "table_bytes": result.table_bytes, "dense_table_bytes": result.dense_table_bytes,
            "code_error": result.meta.get("code_error"), "recall@20": result.test["recall@20"],
            "mrr@20": result.test["mrr@20"], "ndcg@20": result.test["ndcg@20"], "best_epoch": fit.best_epoch + 1,
            "total_seconds": round(time.perf_counter() - started, 1), "run": str(run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="", help="NAME=CHECKPOINT,... (each the best dense model of NAME)")
    parser.add_argument("--ratios", default="40x,20x")
    parser.add_argument("--quantizers", default=DEFAULT_QUANTIZERS)
    parser.add_argument("--sessions", type=int, default=5000, help="validation sessions of the zero-shot figures")
    parser.add_argument("--distill", default="none", help="quantizers to distill: names, 'best', or 'none'")
    parser.add_argument("--epochs", type=int, default=0, help="distillation epochs (0: 3, the headline EODRec "
                                                              "schedule: patience 1, lr x 0.1 every 2 epochs)")
    parser.add_argument("--out", default="runs/quantizers", help="folder of the distilled runs")
    parser.add_argument("--quick", action="store_true", help="a tiny synthetic teacher, rq and pq, 200 sessions, "
                                                              "1 epoch; writes nothing")
    args = parser.parse_args()
    quantizers = [q.strip() for q in args.quantizers.split(",") if q.strip() and q.strip() != "none"]
    data = None
    if args.quick:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from compress import quick_setup

        quantizers, args.sessions, args.epochs = ["rq", "pq"], 200, 1
        data, teacher_dir = quick_setup(Path(args.out) / "quick")
        args.teachers, args.ratios = f"synthetic={teacher_dir}", "4x"
    if not args.teachers:
        sys.exit("give --teachers NAME=CHECKPOINT (or --quick)")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    for entry in args.teachers.split(","):
        name, _, path = entry.partition("=")
        for ratio in [r.strip() for r in args.ratios.split(",") if r.strip()]:
            zero, data, _ = zero_shot_rows(name, Path(path), ratio, quantizers, args.sessions, log, data)
            rows += [r for r in zero if r["method"] != "teacher" or r not in rows]
            wanted = [] if args.distill == "none" else [q.strip() for q in args.distill.split(",") if q.strip()]
            coded = [r for r in zero if r["method"] != "teacher"]
            best = max(coded, key=lambda r: r["valid_recall@20"])["quantizer"] if coded else None
            for quantizer in dict.fromkeys(best if q == "best" else q for q in wanted):
                if quantizer:
                    rows.append(distill_row(name, Path(path), ratio, quantizer, data, Path(args.out), args.epochs,
                                            log))
                    save(rows, args.quick)  # each distillation is long: keep what is done
    save(rows, args.quick)
    for name in dict.fromkeys(r["dataset"] for r in rows):
        print(f"\n## {name}\n")
        table = [{"budget": r["budget"], "codes": r["layout"] + f" ({r['quantizer']})",
                  "code error": f"{r['code_error']:.4f}", "fit s": r.get("fit_seconds", ""),
                  "zero-shot valid R@20 %": 100 * r["valid_recall@20"] if "valid_recall@20" in r else "",
                  "zero-shot valid MRR@20 %": 100 * r["valid_mrr@20"] if "valid_mrr@20" in r else "",
                  "distilled test R@20 %": 100 * r["recall@20"] if "recall@20" in r else "",
                  "distilled test MRR@20 %": 100 * r["mrr@20"] if "mrr@20" in r else ""}
                 for r in rows if r["dataset"] == name]
        print_table(table, list(table[0]))
    print(f"\npeak memory {peak_rss_mib():.0f} MiB")


def save(rows: list[dict[str, Any]], quick: bool) -> None:
    """Write the rows so far to results/quantizers.json (not with ``--quick``), each with this command."""
    if quick or not rows:
        return
    for row in rows:
        row["command"] = command_line("quantizers.py")
    print(f"wrote {write_rows('quantizers', rows, merge_key=('dataset', 'method', 'phase', 'budget'))}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
