"""Training speed and memory: the session teacher next to RecBole 1.2.1's SASRec, measured in one run.

Each side runs in its own subprocess, so each peak RSS is that process's own, with the same thread
count (``--threads``, default 2: ``torch.set_num_threads`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``):

* pocketrec: ``train_teacher`` for one epoch (``encoder.dim=64 train.epochs=1``, pocketrec's own
  defaults otherwise), epoch time = ``result.history[0]["seconds"]`` (training only, no validation);
  the process also validates once and tests once, as a real run does.
* the peer: ``benchmarks/recbole_peer.py`` in ``.venv-recbole`` (``make recbole-venv``): SASRec, CE
  loss, ``--peer-layers`` layers, batch ``--peer-batch``, on the same split converted to RecBole's
  atomic files; epoch time = RecBole's ``Trainer._train_epoch``; it also validates and tests once.

Prints a Markdown table and the ratios, and writes ``benchmarks/results/teacher_speed.json``::

    make recbole-venv
    python benchmarks/teacher_speed.py                      # Tmall, d=64, 2 threads, 1 epoch each
    python benchmarks/teacher_speed.py --max-sessions 3000  # a quick end-to-end check on a slice

``--pocketrec-overrides`` takes ``key=value`` TeacherConfig overrides (after the defaults above);
``--peer-args`` passes more options to recbole_peer.py, e.g. ``--peer-args=--anomaly`` to train the peer
in the autograd anomaly mode that stock RecBole 1.2.1 leaves on (see recbole_peer.py; off by default).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import last_json, peak_rss_mib, print_table, write_rows

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_PYTHON = REPO / ".venv-recbole" / "bin" / "python"
DEFAULTS = ["encoder.dim=64", "train.epochs=1", "train.progress=false"]


def session_files(dataset: str) -> tuple[Path, Path]:
    """The train/test session files pocketrec finds for ``dataset`` (a registered name or a folder)."""
    from pocketrec.data.registry import available_datasets

    folder = Path(dataset)
    if not folder.is_dir():
        info = {d.name: d for d in available_datasets()}.get(dataset)
        if info is None or info.location is None:
            sys.exit(f"dataset {dataset!r} not found" + (f": {info.reason}" if info else ""))
        folder = Path(info.location)
    found = []
    for stem in ("train_sessions.txt", "test_sessions.txt"):
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            sys.exit(f"{folder} has no {stem}[.gz]: the speed benchmark needs a session dataset")
        found.append(path)
    return found[0], found[1]


def slice_sessions(train: Path, test: Path, n: int, out: Path) -> Path:
    """The first ``n`` sessions of each file, in a folder pocketrec loads as a session dataset."""
    out.mkdir(parents=True, exist_ok=True)
    for src, name in ((train, "train_sessions.txt"), (test, "test_sessions.txt")):
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rt") as f, open(out / name, "w") as g:
            kept = 0
            for line in f:
                if kept >= n:
                    break
                if len(line.split()) >= 2:  # the peer drops 1-item sessions too
                    g.write(line)
                    kept += 1
    return out


def run_pocketrec(args: argparse.Namespace) -> dict:
    """Child process: one teacher training run; returns its row."""
    import torch

    torch.set_num_threads(args.threads)
    from pocketrec.config import to_dict
    from pocketrec.data.batching import num_batches
    from pocketrec.data.registry import load_dataset
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    cfg = load_teacher_config(None, [*DEFAULTS, *args.pocketrec_overrides, f"dataset={args.dataset}"])
    data = load_dataset(Path(args.data_path) if args.data_path else args.dataset)
    _, result = train_teacher(data, cfg)
    return {
        "epoch_seconds": result.history[0]["seconds"], "peak_rss_mib": peak_rss_mib(),
        "batch": cfg.train.batch_size, "layers": cfg.encoder.layers, "dim": cfg.encoder.dim,
        "heads": cfg.encoder.heads, "threads": torch.get_num_threads(),
        "train_examples": data.train.num_examples, "train_sequences": len(data.train),
        "batches_per_epoch": num_batches(data.train, cfg.train.batch_size, cfg.encoder.max_len),
        "num_items": data.num_items, "valid": result.history[0]["valid"], "test": result.history[-1]["test"],
        "torch": torch.__version__, "config": to_dict(cfg),
    }


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_side(label: str, cmd: list[str], tag: str, threads: int) -> dict:
    """Run one side of the comparison in its own process; its last ``TAG {json}`` line is the result."""
    print(f"{label}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=child_env(threads))
    row = last_json(proc.stdout, tag)
    if proc.returncode or row is None:
        sys.exit(f"{label} run failed (exit {proc.returncode})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="tmall", help="a registered session dataset, or a folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sessions", type=int, help="only the first N train and test sessions (a quick check)")
    parser.add_argument("--pocketrec-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--peer-layers", type=int, default=2)
    parser.add_argument("--peer-batch", type=int, default=2048)
    parser.add_argument("--peer-dim", type=int, default=64)
    parser.add_argument("--peer-epochs", type=int, default=1)
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--peer-args", default="", help="more options for recbole_peer.py, one string")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    parser.add_argument("--one-pocketrec", action="store_true", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--data-path", help=argparse.SUPPRESS)  # internal: a sliced copy
    args = parser.parse_args()
    if args.one_pocketrec:
        print("ROW " + json.dumps(run_pocketrec(args)), flush=True)
        return

    train_file, test_file = session_files(args.dataset)
    name = Path(args.dataset).name
    setting = {"threads": args.threads, "max_sessions": args.max_sessions, "train_file": str(train_file),
               "test_file": str(test_file)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="teacher-speed-") as tmp:
        cmd = [sys.executable, __file__, "--one-pocketrec", "--dataset", args.dataset,
               "--threads", str(args.threads), "--pocketrec-overrides", *args.pocketrec_overrides]
        if args.max_sessions:
            cmd += ["--data-path", str(slice_sessions(train_file, test_file, args.max_sessions, Path(tmp) / name))]
        row = run_side("pocketrec teacher", cmd, "ROW", args.threads)
        rows.append({"dataset": name, "method": "teacher", "system": "pocketrec teacher", **row,
                     "setting": {**setting, "overrides": [*DEFAULTS, *args.pocketrec_overrides]}})

    if not args.skip_peer:
        if not Path(args.peer_python).exists():
            sys.exit(f"{args.peer_python} not found: run `make recbole-venv` first (or pass --skip-peer)")
        peer_args = ["--name", name, "--train-file", str(train_file), "--test-file", str(test_file),
                     "--epochs", str(args.peer_epochs), "--batch", str(args.peer_batch),
                     "--layers", str(args.peer_layers), "--dim", str(args.peer_dim),
                     "--threads", str(args.threads), *shlex.split(args.peer_args)]
        if args.max_sessions:
            peer_args += ["--max-sessions", str(args.max_sessions)]
        cmd = [args.peer_python, str(HERE / "recbole_peer.py"), *peer_args]
        row = run_side("RecBole SASRec peer", cmd, "PEER", args.threads)
        rows.append({"dataset": name, "method": "recbole-sasrec", "system": "RecBole 1.2.1 SASRec", **row,
                     "setting": {**setting, "peer_args": peer_args}})

    if not args.no_write:
        path = write_rows("teacher_speed", rows)
        print(f"wrote {path}", file=sys.stderr)
    table = [{"system": r["system"], "epoch s": r["epoch_seconds"], "peak RSS MiB": r["peak_rss_mib"],
              "batch": r["batch"], "layers": r["layers"], "dim": r["dim"],
              "batches / epoch": r["batches_per_epoch"], "train examples": r["train_examples"]} for r in rows]
    print(f"{name}, {args.threads} threads" + (f", first {args.max_sessions} sessions" if args.max_sessions else ""))
    print_table(table, list(table[0]))
    if len(rows) == 2:
        ours, peer = rows
        print(f"\npocketrec is {peer['epoch_seconds'] / ours['epoch_seconds']:.1f}x faster per epoch and uses "
              f"{peer['peak_rss_mib'] / ours['peak_rss_mib']:.1f}x less peak memory than RecBole's SASRec "
              f"(batch {peer['batch']}, {peer['layers']} layers).")


if __name__ == "__main__":
    main()
