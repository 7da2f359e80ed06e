"""How well does a TT table fit a teacher's item rows, by item order? The warm start OD-Rec begins from.

For each teacher checkpoint, builds the largest 2-core STT table (t = 2) within ``--ratio`` of the
teacher's dense fp32 table (the ordered tables pay for their order out of that budget, so their rank can
be lower), installs the item order, fits the cores to the teacher's rows by least squares
(:meth:`TTTable.fit_to`, the recipe's warm start) and prints the relative squared error
``||W_tt - W||² / ||W||²`` over the real rows:

* ``identity``: item id = TT index (the dataset's order, OD-Rec's);
* ``random``: a random permutation (what the dataset's order is worth);
* ``clustered``: :func:`pocketrec.tables.tt_order.clustered_slots`.

::

    python benchmarks/tt_order.py --teachers 'runs/bench-item/teacher-d128-item-diginetica/best' --ratio 30
"""

from __future__ import annotations

import argparse
import time

import torch

from common import print_table, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", required=True, help="comma-separated teacher checkpoint folders")
    parser.add_argument("--ratio", type=float, default=30.0, help="budget: dense fp32 bytes / this")
    parser.add_argument("--steps", type=int, default=300, help="least-squares steps (the recipe's default)")
    parser.add_argument("--orders", default="identity,random,clustered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print only; do not write results/tt_order.json")
    args = parser.parse_args()

    from pocketrec.methods.recipe import teacher_rows
    from pocketrec.tables.dense import DenseTable
    from pocketrec.tables.tt import TTTable
    from pocketrec.tables.tt_order import clustered_slots
    from pocketrec.train.checkpoint import load_checkpoint

    rows = []
    for path in args.teachers.split(","):
        teacher, meta = load_checkpoint(path)
        weight = teacher_rows(teacher)
        n, dim = teacher.num_items, teacher.config.dim
        budget = int(DenseTable.bytes_for(n, dim) / args.ratio)
        for order in args.orders.split(","):
            start = time.perf_counter()
            table = TTTable.for_budget(n, dim, budget, num_cores=2, t=2, ordered=order != "identity")
            if order == "random":
                perm = torch.randperm(table.num_slots - 1, generator=torch.Generator().manual_seed(args.seed))[:n] + 1
                table.set_slots(torch.cat([torch.zeros(1, dtype=torch.long), perm]))
            elif order == "clustered":
                table.set_slots(clustered_slots(weight[1:], table.item_factors, seed=args.seed))
            elif order != "identity":
                raise SystemExit(f"unknown order {order!r}")
            order_s = time.perf_counter() - start
            torch.manual_seed(args.seed)
            error = table.fit_to(weight, steps=args.steps, seed=args.seed)
            rows.append({"dataset": meta.get("dataset"), "teacher": path, "dim": dim, "order": order,
                         "rank": table.rank, "bytes": table.nbytes(), "ratio": DenseTable.bytes_for(n, dim) /
                         table.nbytes(), "fit_error": round(error, 4), "order_s": round(order_s, 1),
                         "total_s": round(time.perf_counter() - start, 1)})
            print(rows[-1], flush=True)
    print_table(rows, ["dataset", "dim", "order", "rank", "bytes", "ratio", "fit_error", "order_s"])
    if not args.dry_run:
        write_rows("tt_order", rows, merge_key=("teacher", "order"))


if __name__ == "__main__":
    main()
