"""Device cost of a model: bytes on disk, item-table bytes, memory and latency of one recommendation.

For an artifact (``.safetensors``), a checkpoint folder (exported here to a temporary artifact and ONNX
file) or a random table built for scale (``--synthetic-items N --kind dense|tt|codebook``, untrained
encoder), measures, each runtime in its own fresh subprocess with one thread
(``OMP/OPENBLAS/MKL_NUM_THREADS=1``; onnxruntime ``intra_op_num_threads=1``):

* ``artifact_bytes`` / ``onnx_bytes``: the files on disk; ``table_bytes``: the item table as stored;
  ``dense_table_bytes``: a dense float32 table of the same catalogue and width (the yardstick);
* ``peak_rss_increase_mib``: peak RSS during load + ranking minus the RSS after the imports (Linux: the
  peak mark is reset with ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` before and after);
  ``rss_increase_mib``: the resident increase that stays after loading and ranking (what the model keeps);
* ``latency_ms_p50`` / ``latency_ms_p95``: one recommendation (top 20 over the whole catalogue) for a
  random history of ``--history-len`` items, over ``--repeats`` runs after a warm-up.

    python benchmarks/device.py runs/teacher-tmall/best
    python benchmarks/device.py runs/bench/eodrec-d512-int8-diginetica/best --label eodrec-d512-int8 --no-onnx
    python benchmarks/device.py --synthetic-items 100000 --kind codebook --dim 64
    python benchmarks/device.py --synthetic-items 1000000 --dim 256 --kind codebook --table-ratio 64 --no-onnx

Prints a Markdown table and writes the rows to ``benchmarks/results/device.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import print_table, write_rows  # noqa: E402

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss_kib() -> int:
    """Reset the peak-RSS mark to the current RSS where Linux allows it; returns the baseline in KiB.

    Imports briefly use more memory than they keep, so a plain ``ru_maxrss`` baseline would hide the
    load. Elsewhere falls back to ``ru_maxrss``.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        current = _status_kib("VmRSS")
        if current is not None:
            return current
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_kib() -> int:
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(runtime: str, path: str, repeats: int, history_len: int, seed: int) -> dict:
    """Runs in the measuring subprocess: load, rank, time; returns the measurements."""
    import numpy as np

    from pocketrec.device.runtime import OnnxModel
    from pocketrec.device.runtime import load as load_numpy

    if runtime != "numpy":
        import onnxruntime  # noqa: F401  (imported before the baseline, like numpy)
    assert "torch" not in sys.modules
    base = reset_peak_rss_kib()
    start = time.perf_counter()
    if runtime == "numpy":
        model = load_numpy(path)
        num_items, max_len = model.num_items, model.max_len

        def rank(ids):
            return model.top_k(ids, 20)
    else:
        model = OnnxModel(path, threads=1)
        num_items, max_len = len(model.vocab), model.max_len

        def rank(ids):
            return model.top_k(ids)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    length = min(history_len, max_len)
    histories = [rng.integers(1, num_items + 1, size=length) for _ in range(repeats + 3)]
    for ids in histories[:3]:  # warm-up
        rank(ids)
    times = []
    for ids in histories[3:]:
        t0 = time.perf_counter()
        rank(ids)
        times.append(1000 * (time.perf_counter() - t0))
    peak = peak_rss_kib()
    steady = _status_kib("VmRSS") or peak
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95)),
            "peak_rss_increase_mib": (peak - base) / 1024, "rss_increase_mib": (steady - base) / 1024,
            "load_seconds": load_s}


def measure(runtime: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", runtime, str(path), "--repeats", str(args.repeats),
           "--history-len", str(args.history_len), "--seed", str(args.seed)]
    out = subprocess.run(cmd, env={**os.environ, **THREAD_ENV}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def synthetic_model(num_items: int, kind: str, dim: int, max_len: int, seed: int, table_ratio: float = 40.0):
    """An untrained model with a random table; TT and codebook tables get dense bytes / ``table_ratio``."""
    import torch

    from pocketrec.methods.eodrec import codebook_table_for_budget
    from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
    from pocketrec.tables.dense import DenseTable
    from pocketrec.tables.tt import TTTable

    torch.manual_seed(seed)
    budget = int(DenseTable.bytes_for(num_items, dim) / table_ratio)
    if kind == "dense":
        table = DenseTable(num_items, dim)
    elif kind == "tt":
        table = TTTable.for_budget(num_items, dim, budget, num_cores=2, t=2)
    elif kind == "codebook":
        table = codebook_table_for_budget(num_items, dim, budget, seed=seed)
    else:
        raise SystemExit(f"--kind must be dense, tt or codebook, got {kind!r}")
    return SessionRecommender(EncoderConfig(dim=dim, max_len=max_len), table).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", help="artifact (.safetensors) or checkpoint folder")
    parser.add_argument("--synthetic-items", type=int, default=0, help="build a random table of N items")
    parser.add_argument("--kind", default="dense", help="synthetic table kind: dense, tt or codebook")
    parser.add_argument("--dim", type=int, default=64, help="synthetic model width")
    parser.add_argument("--table-ratio", type=float, default=40.0,
                        help="synthetic tt/codebook tables: dense table bytes / RATIO")
    parser.add_argument("--max-len", type=int, default=50, help="synthetic model max_len")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--history-len", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", action="store_true", help="measure the numpy runtime only")
    parser.add_argument("--label", default="", help="the rows' method name (default: the checkpoint's method, "
                        "e.g. teacher; set it to tell models of one dataset apart)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.source, args.repeats, args.history_len, args.seed)))
        return

    from pocketrec.device.artifact import export_artifact
    from pocketrec.device.onnx_export import export_onnx
    from pocketrec.device.runtime import read_artifact

    tmp = Path(tempfile.mkdtemp(prefix="pocketrec-device-bench-"))
    onnx_path = None
    if args.synthetic_items:
        model = synthetic_model(args.synthetic_items, args.kind, args.dim, args.max_len, args.seed, args.table_ratio)
        artifact = export_artifact(model, tmp / "model.safetensors")
        if not args.no_onnx:
            onnx_path = export_onnx(model, tmp / "model.onnx", k=20)
        dataset = f"synthetic-{args.synthetic_items}-d{args.dim}"
        method = f"{args.kind}-untrained" + ("" if args.kind == "dense" else f"-{args.table_ratio:g}x")
    elif args.source and Path(args.source).is_dir():
        from pocketrec.train.checkpoint import read_meta

        meta = read_meta(args.source)
        artifact = export_artifact(args.source, tmp / "model.safetensors")
        if not args.no_onnx:
            onnx_path = export_onnx(args.source, tmp / "model.onnx", k=20)
        dataset, method = str(meta.get("dataset", "")), str(meta.get("method", meta["table"]["kind"]))
    elif args.source:
        artifact = Path(args.source)
        dataset, method = "", ""
    else:
        raise SystemExit("give an artifact or checkpoint, or --synthetic-items N")

    tensors, manifest = read_artifact(artifact)
    description = json.loads(manifest["table"])
    dataset = dataset or manifest.get("dataset", "") or artifact.stem
    method = args.label or method or description["kind"]
    num_items, dim = int(manifest["num_items"]), int(description["dim"])
    common = {
        "dataset": dataset, "method": method, "table_kind": description["kind"], "num_items": num_items,
        "dim": dim, "table_bytes": int(manifest["table_bytes"]), "dense_table_bytes": (num_items + 1) * dim * 4,
        "artifact_bytes": artifact.stat().st_size, "threads": 1, "history_len": args.history_len,
        "setting": f"one session, top 20 over all {num_items:,} items, 1 thread, {args.repeats} repeats",
    }
    rows = [{**common, "runtime": "numpy", **measure("numpy", artifact, args)}]
    if onnx_path is not None:
        rows.append({**common, "runtime": "onnxruntime", "onnx_bytes": onnx_path.stat().st_size,
                     **measure("onnx", onnx_path, args)})
    for row in rows:
        for key in ("latency_ms_p50", "latency_ms_p95", "peak_rss_increase_mib", "rss_increase_mib", "load_seconds"):
            row[key] = round(row[key], 4)
    print_table(rows, ["dataset", "method", "runtime", "table_bytes", "dense_table_bytes", "artifact_bytes",
                       "latency_ms_p50", "latency_ms_p95", "peak_rss_increase_mib", "rss_increase_mib"])
    if len(rows) == 2:
        print(f"\nnumpy / onnxruntime p50 latency: {rows[0]['latency_ms_p50'] / rows[1]['latency_ms_p50']:.2f}x")
    path = write_rows("device", rows, merge_key=("dataset", "method", "runtime"))
    print(f"wrote {path}")
    del tensors
    shutil.rmtree(tmp, ignore_errors=True)  # the exported files can be GBs at scale


if __name__ == "__main__":
    main()
