"""Whole-catalogue scoring of 4-bit codebook tables against the memory-bandwidth floor, one thread, one query.

For each catalogue size in ``--items`` and dim in ``--dims``: a dense fp32 table and a codebook table with ``K = 16``
(4-bit codes, bit-packed, the budget solver's ``M`` at dense bytes / ``--ratio``), random weights (speed does not
depend on training). Each runtime returns the top ``--k`` items of the whole catalogue for one query:

* ``dense``: the numpy runtime's dense scorer (float32 matrix-vector products a block at a time);
* ``numpy (32k LUTs)``: the numpy runtime's codebook scorer with groups of codebooks up to 32,768 lookup-table entries
  (as it was before: 3 codebooks of 16 a group);
* ``numpy``: the scorer as shipped (:data:`~pocketrec.formats.table_arrays.MAX_GROUP_LUT` entries: 4 of 16);

these three rank as the runtime does (:func:`~pocketrec.device.np_tables.stream_top_k`, block by block);
* ``fast-scan``: :class:`~pocketrec.device.np_fastscan.FastScanScorer`, FAISS's 4-bit kernels plus the exact re-rank
  (same ranks as the numpy scorer);
* ``onnxruntime``: the table's ONNX scoring graph (:func:`~pocketrec.device.onnx_export.table_query_model`,
  grouped lookup tables, ``TopK``), one intra-op thread.

The floor is the bytes a scorer must read, the packed codes, over the machine's read bandwidth, measured here on a
buffer 8x the last-level cache (numpy's ``max`` and ``sum`` over 512 MiB; the faster one). Prints p50 per runtime,
its ratio to the floor, and ratios between runtimes; rows go to ``benchmarks/results/fast_scan.json``.

    python benchmarks/fast_scan.py                                  # 100k, 1M, 10M items at d = 64 and 128
    python benchmarks/fast_scan.py --items 100000 --dims 64 --quick # smoke: writes nothing
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread for numpy's BLAS too (set before importing it)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from common import command_line, print_table, write_rows  # noqa: E402
from pocketrec.device.np_tables import CodebookScorer, DenseScorer, stream_top_k  # noqa: E402
from pocketrec.formats.bitpack import pack_codes  # noqa: E402
from pocketrec.methods.eodrec import DEFAULT_DTYPE  # noqa: E402
from pocketrec.tables.codebook import CodebookTable  # noqa: E402
from pocketrec.tables.dense import DenseTable  # noqa: E402

RUNTIMES = ("dense", "numpy (32k LUTs)", "numpy", "fast-scan", "onnxruntime")


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second one thread reads from memory (best of numpy ``max`` over uint8 and ``sum`` over float64)."""
    buffer = np.ones(mib << 20, dtype=np.uint8)
    best = float("inf")
    for fn in (lambda: buffer.max(), lambda: buffer.view(np.float64).sum()):
        best = min(best, float(np.median([timed(fn) for _ in range(repeats)])))
    return buffer.nbytes / best


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def p50_ms(fn, repeats: int, max_seconds: float) -> float:
    fn()  # warm-up (and onnxruntime's first run)
    out: list[float] = []
    started = time.perf_counter()
    while len(out) < repeats and (len(out) < 5 or time.perf_counter() - started < max_seconds):
        out.append(1000 * timed(fn))
    return float(np.median(out))


def codebook_arrays(items: int, dim: int, M: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """The exported arrays of a random bit-packed ``K = 16`` codebook table (what :meth:`CodebookTable.export`
    writes), built without torch's per-item work so 10M items take seconds."""
    rng = np.random.default_rng(seed)
    books = (rng.standard_normal((M, 16, dim)) / np.sqrt(M * dim)).astype(DEFAULT_DTYPE)
    codes = np.empty(items * M, dtype=np.uint8)
    for start in range(0, len(codes), 1 << 24):
        codes[start:start + (1 << 24)] = rng.integers(0, 16, min(1 << 24, len(codes) - start), dtype=np.uint8)
    description = {"kind": "codebook", "num_items": items, "dim": dim, "M": M, "K": 16, "dtype": DEFAULT_DTYPE,
                   "code_dtype": "uint8", "bitpack": True, "code_bits": 4, "code_rows": "items_1_to_n"}
    return {"codebooks": books, "codes": pack_codes(codes, 4)}, description


def same_top_k(ids: np.ndarray, exact: np.ndarray, kth: float, k: int) -> bool:
    """``ids`` are an exact top ``k`` of ``exact``: ``k`` distinct ids, every item scoring above the ``k``-th score
    among them, the others tied with it (float32 sums in another order: within 1e-5 relative)."""
    tol = 1e-5 * max(1.0, abs(float(kth)))
    above = np.flatnonzero(exact > kth + tol)
    return (len(np.unique(ids)) == k == len(ids) and bool(np.isin(above, ids).all())
            and bool((exact[ids] >= kth - tol).all()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="100000,1000000,10000000", help="comma-separated catalogue sizes")
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--ratio", type=float, default=40.0, help="codebook budget = dense fp32 bytes / RATIO")
    parser.add_argument("-k", type=int, default=100, help="items returned per query")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=10.0, help="per (size, runtime)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--quick", action="store_true", help="a few repeats, a small bandwidth buffer; writes nothing")
    parser.add_argument("--name", default="fast_scan", help="results file name")
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        parser.error(f"unknown runtimes {sorted(unknown)} (known: {', '.join(RUNTIMES)})")
    repeats = 5 if args.quick else args.repeats
    bandwidth = read_bandwidth(64 if args.quick else 512)
    print(f"read bandwidth, one thread: {bandwidth / 1e9:.1f} GB/s", flush=True)

    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for items in (int(n) for n in args.items.split(",")):
            dense_bytes = DenseTable.bytes_for(items, dim)
            M, _ = CodebookTable.config_for_budget(items, dim, int(dense_bytes / args.ratio), dtype=DEFAULT_DTYPE,
                                                   bitpack=True, K=16, max_codebooks=256)
            arrays, description = codebook_arrays(items, dim, M, seed=0)
            table_bytes = sum(a.nbytes for a in arrays.values())
            query = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
            row = {"items": items, "dim": dim, "layout": f"{M}x16", "table_bytes": table_bytes,
                   "ratio": dense_bytes / table_bytes, "code_bytes": int(arrays["codes"].nbytes),
                   "floor_ms": 1000 * arrays["codes"].nbytes / bandwidth, "bandwidth_gbs": bandwidth / 1e9,
                   "k": args.k, "command": command_line("fast_scan.py")}
            exact = CodebookScorer(arrays, description).score(query)  # the judge of every ranking
            exact[0] = -np.inf
            kth = np.sort(exact)[-args.k]
            for runtime in runtimes:
                fn, ranked = runner(runtime, arrays, description, query, args.k, items, dim)
                row[f"{runtime} p50 ms"] = p50_ms(fn, repeats, args.max_seconds)
                if ranked is not None:  # the exact top-k: every item above the k-th score, the rest tied with it
                    row[f"{runtime} same top-k"] = same_top_k(np.asarray(ranked()), exact, kth, args.k)
                print(f"{items:,} items d={dim} {runtime}: {row[f'{runtime} p50 ms']:.3f} ms", flush=True)
                del fn, ranked
            for runtime in runtimes:
                if runtime != "dense":
                    row[f"{runtime} / floor"] = row[f"{runtime} p50 ms"] / row["floor_ms"]
            rows.append(row)
    if not args.quick:
        write_rows(args.name, rows, merge_key=("items", "dim"))
    print()
    print_table(rows, ["items", "dim", "layout", "table_bytes", "floor_ms",
                       *[f"{r} p50 ms" for r in runtimes]])
    print()
    print_table(rows, ["items", "dim", *[f"{r} / floor" for r in runtimes if r != "dense"],
                       *[f"{r} same top-k" for r in runtimes if r != "dense"]])


def runner(runtime: str, arrays: dict[str, np.ndarray], description: dict, query: np.ndarray, k: int,
           items: int, dim: int):
    """``(time this, its top-k ids or None)`` for one runtime."""
    if runtime == "dense":
        weight = np.random.default_rng(2).standard_normal((items + 1, dim), dtype=np.float32)
        dense = DenseScorer({"weight": weight}, {"num_items": items, "dim": dim})
        return (lambda: stream_top_k(dense.score_blocks(query), k)), None
    if runtime.startswith("numpy"):
        scorer = CodebookScorer(arrays, description, max_group_lut=32768 if "32k" in runtime else None)
        return (lambda: stream_top_k(scorer.score_blocks(query), k)), (lambda: stream_top_k(
            scorer.score_blocks(query), k)[0])
    if runtime == "fast-scan":
        from pocketrec.device.np_fastscan import FastScanScorer

        fast = FastScanScorer(arrays, description)
        return (lambda: fast.top_k(query, k)), (lambda: fast.top_k(query, k)[0])
    import onnxruntime as ort

    from pocketrec.device.onnx_export import table_query_model

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(table_query_model(arrays, description, k).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"query": query[None]}
    return (lambda: session.run(None, feed)), (lambda: session.run(None, feed)[1][0])


if __name__ == "__main__":
    main()
