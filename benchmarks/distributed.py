"""Data-parallel training on torch.distributed: epoch time and peak RSS per process, 1 vs N processes.

The session teacher (``encoder.dim=64``, no dropout, one epoch, pocketrec's defaults otherwise) trains once per world
size: one process on its own, then N workers launched by torch's launcher (``torch.distributed.run
--standalone``, gloo). The cores are shared out (``--cores``, default 2: one process gets 2 threads, two
processes 1 each), so on a 2-core machine no speed-up is expected: the point is that it runs and matches
(the same global batch and seed, so the same test metrics). Every rank prints its own row: the epoch's
training seconds (no validation), its peak RSS, and (rank 0) the test metrics.

    python benchmarks/distributed.py                       # Tmall, 1 and 2 processes, 1 epoch each
    python benchmarks/distributed.py --max-sessions 20000  # a quick check on a slice of Tmall

Writes ``benchmarks/results/distributed.json`` (rows merged by dataset, slice, processes and rank).
GPU throughput (1 GPU) is not measured: pocketrec's trainer runs models on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import command_line, peak_rss_mib, print_table, write_rows

#: Dropout off: a rank draws the masks of its own slice, so with dropout the runs differ (statistically alike).
DEFAULTS = ["encoder.dim=64", "encoder.dropout=0", "encoder.attn_dropout=0", "train.epochs=1", "train.progress=false"]


def run_worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): train, write its row to ``--rows``."""
    import torch

    from pocketrec.data.registry import load_dataset
    from pocketrec.train import distributed
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    torch.set_num_threads(args.threads)
    distributed.init()
    try:
        cfg = load_teacher_config(None, [*DEFAULTS, *args.overrides, f"dataset={args.dataset}"])
        data = load_dataset(Path(args.data_path) if args.data_path else args.dataset)
        _, result = train_teacher(data, cfg)
        row = {"dataset": args.dataset, "sessions": args.max_sessions or "all", "processes": distributed.world_size(),
               "rank": distributed.rank(), "threads": torch.get_num_threads(),
               "epoch_seconds": result.history[0]["seconds"], "peak_rss_mib": peak_rss_mib(),
               "batch": cfg.train.batch_size, "dim": cfg.encoder.dim, "num_items": data.num_items,
               "train_sequences": len(data.train), "test": result.history[-1]["test"], "torch": torch.__version__}
        (Path(args.rows) / f"{row['processes']}-{row['rank']}.json").write_text(json.dumps(row))
    finally:
        distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tmall", help="a registered session dataset, or a folder")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="world sizes to run")
    parser.add_argument("--cores", type=int, default=2, help="cores shared out among a run's processes")
    parser.add_argument("--max-sessions", type=int, help="only the first N train and test sessions")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="TeacherConfig overrides")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--data-path", help=argparse.SUPPRESS)  # internal: a sliced copy
    parser.add_argument("--rows", help=argparse.SUPPRESS)  # internal: where each rank writes its row
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    with tempfile.TemporaryDirectory(prefix="pocketrec-dist-") as tmp:
        data_path = None
        if args.max_sessions:
            from teacher_speed import session_files, slice_sessions

            data_path = str(slice_sessions(*session_files(args.dataset), args.max_sessions, Path(tmp) / "data"))
        rows = []
        for nproc in args.nproc:
            threads = max(1, args.cores // nproc)
            rows_dir = Path(tmp) / f"rows-{nproc}"
            rows_dir.mkdir()
            script = [str(Path(__file__).resolve()), "--worker", "--dataset", args.dataset, "--threads", str(threads),
                      "--rows", str(rows_dir),
                      *(["--data-path", data_path, "--max-sessions", str(args.max_sessions)] if data_path else []),
                      *(["--overrides", *args.overrides] if args.overrides else [])]
            launcher = ([] if nproc == 1 else
                        ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"])
            cmd = [sys.executable, *launcher, *script]
            print(f"{nproc} process(es): {shlex.join(cmd)}", file=sys.stderr, flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            proc = subprocess.run(cmd, env=env)
            found = [json.loads(path.read_text()) for path in rows_dir.glob("*.json")]
            if proc.returncode or len(found) != nproc:
                sys.exit(f"the run of {nproc} process(es) failed (exit {proc.returncode})")
            rows += sorted(found, key=lambda r: r["rank"])
    for row in rows:
        test = row["test"]
        row.update({"recall@20": 100 * test["recall@20"], "mrr@20": 100 * test["mrr@20"],
                    "command": command_line("distributed.py")})
    print_table(rows, ["dataset", "sessions", "processes", "rank", "threads", "epoch_seconds", "peak_rss_mib",
                       "recall@20", "mrr@20"])
    by_world = {r["processes"]: r["test"] for r in rows if r["rank"] == 0}
    first = next(iter(by_world.values()))
    gap = max(abs(test[k] - first[k]) for test in by_world.values() for k in first if k != "examples")
    if gap == 0:
        print("\nthe test metrics of every world size are equal")
    else:  # the same global batches, but sums split differently: rounding that grows over an epoch's steps
        print(f"\nthe test metrics of the world sizes differ by at most {100 * gap:.3f} points (float rounding "
              "grown over the epoch; one process with 1 or 2 threads differs likewise)")
    if not args.no_write:
        print(f"wrote {write_rows('distributed', rows, merge_key=('dataset', 'sessions', 'processes', 'rank'))}")


if __name__ == "__main__":
    main()
