"""Scoring speed and bytes of each item-table kind, side by side, one thread, one query at a time.

For each catalogue size in ``--items`` (default: Tmall's 40,727 and a synthetic 1M), builds a dense fp32
table, an OD-Rec STT table (t = 2, two cores) and an EODRec codebook table (the recipe's default layout), the last two
at the same budget (dense bytes / ``--ratio``, default 40x), with random weights (speed and memory do not
depend on training). Then, in this one process with one thread, times one query at a time against the
whole catalogue, for

* ``torch``: the table's ``score`` (what training and evaluation use), under ``torch.no_grad``;
* ``numpy``: the device runtime's scorer (:mod:`pocketrec.device.np_tables`) on the exported arrays.

Prints p50 / p95 latency per (size, kind, runtime) and the ratios the EODRec paper claims (codebook vs
STT, codebook vs dense); rows go to ``benchmarks/results/scoring_speed.json``.

    python benchmarks/scoring_speed.py                              # tmall size and 1M
    python benchmarks/scoring_speed.py --items 10000,100000,1000000,10000000 --name scale
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread for numpy's BLAS too (set before importing it)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import print_table, write_rows  # noqa: E402
from pocketrec.device.np_tables import make_scorer  # noqa: E402
from pocketrec.methods.eodrec import codebook_table_for_budget  # noqa: E402
from pocketrec.tables.dense import DenseTable  # noqa: E402
from pocketrec.tables.tt import TTTable  # noqa: E402

KINDS = ("dense", "tt", "codebook")


def build(kind: str, items: int, dim: int, budget: int, seed: int):
    torch.manual_seed(seed)
    if kind == "dense":
        return DenseTable(items, dim)
    if kind == "tt":
        return TTTable.for_budget(items, dim, budget, num_cores=2, t=2)
    return codebook_table_for_budget(items, dim, budget, seed=seed)


def latencies(fn, repeats: int, max_seconds: float) -> list[float]:
    fn()  # warm-up
    out: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - started > max_seconds and len(out) >= 5:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="40727,1000000", help="comma-separated catalogue sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=40.0, help="TT and codebook budget = dense bytes / RATIO")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per (size, kind, runtime)")
    parser.add_argument("--runtimes", default="torch,numpy")
    parser.add_argument("--name", default="scoring_speed", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runtimes = [r for r in args.runtimes.split(",") if r]

    rows = []
    for items in (int(x) for x in args.items.split(",")):
        dense_bytes = DenseTable.bytes_for(items, args.dim)
        budget = int(dense_bytes / args.ratio)
        query = torch.randn(1, args.dim)
        per_runtime: dict[str, dict[str, float]] = {r: {} for r in runtimes}
        for kind in KINDS:
            table = build(kind, items, args.dim, budget, seed=0).eval()
            arrays, description = table.export()
            row = {"items": items, "kind": kind, "table_bytes": table.nbytes(), "ratio": dense_bytes / table.nbytes(),
                   "describe": table.describe()}
            for runtime in runtimes:
                if runtime == "torch":
                    def fn(table=table, query=query):
                        with torch.no_grad():
                            table.score(query)
                else:
                    scorer = make_scorer(arrays, description)
                    q = query[0].numpy()

                    def fn(scorer=scorer, q=q):
                        scorer.score(q)
                lat = latencies(fn, args.repeats, args.max_seconds)
                row[f"{runtime}_p50_ms"] = float(np.percentile(lat, 50))
                row[f"{runtime}_p95_ms"] = float(np.percentile(lat, 95))
                per_runtime[runtime][kind] = row[f"{runtime}_p50_ms"]
            rows.append(row)
            print(f"{items:,} {kind}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_ms")),
                  flush=True)
            del table, arrays
        for runtime in runtimes:
            p50 = per_runtime[runtime]
            rows.append({"items": items, "kind": f"speedup ({runtime})",
                         "codebook_vs_tt": p50["tt"] / p50["codebook"],
                         "codebook_vs_dense": p50["dense"] / p50["codebook"]})
    write_rows(args.name, rows, merge_key=("items", "kind"))
    table_rows = [r for r in rows if "table_bytes" in r]
    print_table(table_rows, ["items", "kind", "table_bytes", "ratio",
                             *[f"{r}_{p}_ms" for r in runtimes for p in ("p50", "p95")]])
    print()
    print_table([r for r in rows if "codebook_vs_tt" in r], ["items", "kind", "codebook_vs_tt", "codebook_vs_dense"])


if __name__ == "__main__":
    main()
