"""Training-step cost of a codebook table's rows: forward + backward of all ``n`` item rows, side by side.

Every distillation step rebuilds the student's whole catalogue of rows (the catalogue loss multiplies the
queries with them) and back-propagates into the codebooks. This times that step, one thread, in one
process, for three implementations of ``rows[i] = sum_m A[m, codes[i, m]]``:

* ``lookups``: ``F.embedding(codes, A).sum(-2)``, the plain formula (builds ``n x M x dim``, forward and
  backward): what the table did before;
* ``embedding_bag``: the fused sum, with its own backward (scattered adds);
* ``table``: :func:`pocketrec.tables.codebook.codeword_sum`, what the table runs now (embedding_bag
  forward, one-hot matrix-product backward for ``K <= 16``).

    python benchmarks/codebook_rows.py                     # Tmall's 40,727 items, d = 128, 4 layouts
    python benchmarks/codebook_rows.py --items 1000000 --layouts 46x4
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import print_table, write_rows  # noqa: E402
from pocketrec.tables.codebook import codeword_sum  # noqa: E402


def implementations(K: int):
    return {
        "lookups": lambda flat, books: F.embedding(flat, books).sum(-2),
        "embedding_bag": lambda flat, books: F.embedding_bag(flat, books, mode="sum"),
        "table": lambda flat, books: codeword_sum(flat, books, K),
    }


def step_ms(fn, flat: torch.Tensor, books: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        books.grad = None
        t0 = time.perf_counter()
        fn(flat, books).backward(grad)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40727)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layouts", default="46x4,24x8,16x16,8x64", help="comma-separated MxK")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="print only, write no results (smoke tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for layout in args.layouts.split(","):
        M, K = (int(v) for v in layout.split("x"))
        gen = torch.Generator().manual_seed(0)
        books = torch.randn(M * K, args.dim, generator=gen, requires_grad=True)
        flat = torch.randint(K, (args.items, M), generator=gen) + torch.arange(M) * K
        grad = torch.randn(args.items, args.dim, generator=gen)
        row = {"items": args.items, "dim": args.dim, "layout": f"{M}x{K}"}
        for name, fn in implementations(K).items():
            row[f"{name} ms"] = step_ms(fn, flat, books, grad, args.repeats)
        row["table vs lookups"] = row["lookups ms"] / row["table ms"]
        row["table vs embedding_bag"] = row["embedding_bag ms"] / row["table ms"]
        rows.append(row)
        print(row, flush=True)
    if not args.dry_run:
        write_rows("codebook_rows", rows, merge_key=("items", "dim", "layout"))
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
