"""What the codebooks' stored precision buys at a fixed budget: post-hoc residual k-means codebooks of a
teacher's rows (the EODRec student's initial table, no training), float16 against int8 codebooks.

At a budget of ``--ratio`` x less than the teacher's dense fp32 table, the budget solver lays out each
precision (int8 codebooks cost a quarter of float32's plus a float32 scale per codeword, so more of the
budget buys codes), residual k-means fits the codes, and the teacher's encoder scores with the table.
Prints M x K, bytes, the relative reconstruction error of the rows (``|e - e_hat|^2 / |e|^2``, averaged
over items before the ratio) and validation and test Recall@20 / MRR@20::

    python benchmarks/codebook_precision.py --teacher runs/bench-d256/teacher-d256-lr5e4-diginetica/best \\
        --ratio 40 --max_codebooks 192
"""

from __future__ import annotations

import argparse
import time

from common import print_table, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="teacher checkpoint folder")
    parser.add_argument("--ratio", type=float, default=40.0)
    parser.add_argument("--dtypes", default="float16,int8")
    parser.add_argument("--max_codebooks", type=int, default=192)
    args = parser.parse_args()

    from pocketrec.bench.baselines import post_hoc_model
    from pocketrec.data.registry import load_dataset
    from pocketrec.methods.recipe import teacher_rows
    from pocketrec.tables.dense import DenseTable
    from pocketrec.train.checkpoint import load_checkpoint

    teacher, meta = load_checkpoint(args.teacher)
    data = load_dataset(meta["dataset"])
    dense = DenseTable.bytes_for(teacher.num_items, teacher.config.dim)
    budget = int(dense / args.ratio)
    rows = [{"dtype": "teacher (dense fp32)", "bytes": dense, **split_metrics(meta["valid"], "valid"),
             **split_metrics(meta["test"], "test")}]  # the checkpoint's own metrics at its chosen epoch
    for dtype in args.dtypes.split(","):
        start = time.perf_counter()
        model, scores = post_hoc_model("kmeans", teacher, data, budget, dtype=dtype, max_codebooks=args.max_codebooks)
        table, weight = model.table, teacher_rows(teacher)
        error = table.reconstruction_error(weight) / float(weight[1:].pow(2).sum(1).mean())
        row = {"dtype": dtype, "layout": f"{table.M} x {table.K}", "bytes": table.nbytes(),
               "ratio": dense / table.nbytes(), "code_error": round(error, 4),
               **split_metrics(scores["valid"], "valid"), **split_metrics(scores["test"], "test"),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(row, flush=True)
    for row in rows:
        row.update(teacher=args.teacher, ratio_target=args.ratio)
    print_table(rows, ["dtype", "layout", "bytes", "ratio", "code_error", "valid_R@20", "valid_MRR@20", "test_R@20",
                       "test_MRR@20"])
    write_rows("codebook_precision", rows, merge_key=("teacher", "ratio_target", "dtype"))


def split_metrics(metrics: dict[str, float], split: str) -> dict[str, float]:
    return {f"{split}_R@20": round(100 * metrics["recall@20"], 2), f"{split}_MRR@20": round(100 * metrics["mrr@20"], 2)}


if __name__ == "__main__":
    main()
