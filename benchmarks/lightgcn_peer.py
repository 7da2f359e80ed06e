"""LightGCN, pocketrec next to RecBole 1.2.1, on the same split: accuracy, best epoch, epoch time, peak RSS.

For each dataset, pocketrec's :func:`~pocketrec.data.load_interactions` (``seed=0``: a per-user random
80/10/10 split) is exported as RecBole atomic files (``NAME-split/NAME-split.{train,valid,test}.inter``,
``user_id:token item_id:token``, pocketrec's internal ids as tokens), so both systems train, validate and
test on exactly the same pairs and rank the same catalogue (the items of the training split). Both
exclude each user's train items when ranking for valid and train + valid items when ranking for test
(RecBole 1.2.1: ``FullSortEvalDataLoader`` masks the accumulated ``Sampler.used_ids`` of the earlier
splits; see ``recbole_lightgcn_peer.py``).

Each side runs in its own subprocess, one after the other (never both at once), with ``--threads``
threads (default 2: ``torch.set_num_threads`` and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), so each peak
RSS (``ru_maxrss``) is that system's own, data loading and evaluation included:

* pocketrec: ``train_teacher`` with ``backbone=lightgcn encoder.dim=64 encoder.layers=3 train.lr=0.001
  train.batch_size=2048 train.epochs=400 train.patience=10`` (L2 ``encoder.l2``, default 1e-4), selecting
  on valid ndcg@20, tested once at the best epoch;
* RecBole: ``benchmarks/recbole_lightgcn_peer.py`` in ``.venv-recbole`` (``make recbole-venv``), LightGCN
  with ``embedding_size 64, n_layers 3, learning_rate 1e-3, train_batch_size 2048, reg_weight 1e-4``,
  one uniform negative, ``valid_metric NDCG@20``, ``eval_step 1``, ``stopping_step 9`` (RecBole stops
  after ``stopping_step + 1`` evaluations without improvement: 10, as pocketrec's patience 10), the best
  checkpoint reloaded and tested.

Epoch time is training only (the batches of one epoch, negative sampling included; no evaluation): the
mean over all epochs trained, and the median (robust to other work on the machine; each row also records
the load average before and after its run). Best epoch counts from 1; ``stop`` says why training ended:
``early`` (patience), ``cap`` (``--epochs`` reached: not converged) or ``time`` (the peer's
``--time-limit``). Prints a Markdown table and the ratios, and writes ``benchmarks/results/lightgcn_peer.json``
(one row per dataset and system; rows of other datasets are kept)::

    make recbole-venv
    python benchmarks/lightgcn_peer.py                       # ml-100k and beauty, up to 400 epochs each
    python benchmarks/lightgcn_peer.py --datasets ml-100k --sports
    python benchmarks/lightgcn_peer.py --datasets beauty --epochs 10 --peer-args="--time-limit 480"
    python benchmarks/lightgcn_peer.py --quick               # 3 epochs, 300 users of ml-100k; writes nothing
    python benchmarks/lightgcn_peer.py --show --datasets ml-100k beauty   # the table of results/ only

``--side pocketrec`` (internal) is one pocketrec run, printing ``ROW {json}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS, last_json, peak_rss_mib, print_table, write_rows

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEER_PYTHON = REPO / ".venv-recbole" / "bin" / "python"
SPLITS = ("train", "valid", "test")
KS = (10, 20, 50)
EPOCHS, PATIENCE = 400, 10
QUICK = {"users": 300, "epochs": 3}
HEADER = "user_id:token\titem_id:token\n"


def settings(quick: bool, epochs: int | None = None) -> dict[str, Any]:
    return {"dim": 64, "layers": 3, "lr": 1e-3, "batch": 2048, "l2": 1e-4,
            "epochs": epochs or (QUICK["epochs"] if quick else EPOCHS), "patience": PATIENCE}


# ------------------------------------------------------------------------------------------- the split


def load_split(name: str, quick: bool = False) -> Any:
    """pocketrec's split of ``name`` (seed 0); with ``quick``, its first ``QUICK["users"]`` users only."""
    from pocketrec.data import load_interactions

    data = load_interactions(name, seed=0)
    return subset_users(data, QUICK["users"]) if quick else data


def subset_users(data: Any, n: int) -> Any:
    """The first ``n`` users of ``data`` and the items they trained on (valid/test pairs of others dropped)."""
    from pocketrec.data.dataset import Vocabulary
    from pocketrec.data.interactions import InteractionDataset

    rows = slice(0, n + 1)
    train = data.train[rows]
    kept = np.flatnonzero(np.bincount(train.indices, minlength=data.num_items + 1) > 0)
    cols = np.concatenate([[0], kept[kept > 0]])
    mats = {s: data.matrix(s)[rows][:, cols].tocsr() for s in SPLITS}
    for m in mats.values():
        m.sort_indices()
    dropped = {s: int(data.matrix(s)[rows].nnz - mats[s].nnz) for s in ("valid", "test")}
    users = Vocabulary(list(data.users.raw_ids[:n]))
    items = Vocabulary([data.items.raw_ids[i - 1] for i in cols[1:]])
    sub = InteractionDataset(data.name, users, items, mats["train"], mats["valid"], mats["test"],
                             source=data.source, origin=data.origin, dropped=dropped)
    return sub


def split_fingerprint(data: Any) -> str:
    """sha256 (16 hex) of every (user, item) internal-id pair of the three splits, in CSR order."""
    h = hashlib.sha256()
    for s in SPLITS:
        users, items = data.pairs(s)
        h.update(s.encode())
        h.update(np.ascontiguousarray(users, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def export_split(data: Any, root: Path, name: str) -> dict[str, int]:
    """Write ``root/name/name.{train,valid,test}.inter`` (internal ids as tokens); returns rows per split."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for s in SPLITS:
        users, items = data.pairs(s)
        with open(folder / f"{name}.{s}.inter", "w") as f:
            f.write(HEADER)
            f.writelines(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist(), strict=True))
        counts[s] = len(users)
    return counts


# ------------------------------------------------------------------------------------------ pocketrec


def run_pocketrec(name: str, quick: bool, threads: int, out_dir: Path, extra: list[str] | None = None,
                  epochs: int | None = None) -> dict:
    """One pocketrec LightGCN run on ``name``'s split; returns its row (call it in its own process)."""
    import torch

    torch.set_num_threads(threads)
    from pocketrec.config import to_dict
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    s = settings(quick, epochs)
    overrides = ["backbone=lightgcn", f"dataset={name}", f"encoder.dim={s['dim']}", f"encoder.layers={s['layers']}",
                 f"encoder.l2={s['l2']}", f"train.lr={s['lr']}", f"train.batch_size={s['batch']}",
                 f"train.epochs={s['epochs']}", f"train.patience={s['patience']}", "train.progress=false",
                 f"out={out_dir}", *(extra or [])]
    started = time.perf_counter()
    data = load_split(name, quick)
    load_s = time.perf_counter() - started
    cfg = load_teacher_config(None, overrides)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    _, result = train_teacher(data, cfg)
    fit_s = time.perf_counter() - started
    epochs = [h for h in result.history if "seconds" in h]
    valid_key = cfg.train.metric or "ndcg@20"
    return {
        "epoch_seconds": result.epoch_seconds, "epoch_seconds_list": [h["seconds"] for h in epochs],
        "epochs_trained": len(epochs), "best_epoch": result.best_epoch + 1, "stopped_early": result.stopped_early,
        "peak_rss_mib": peak_rss_mib(), "fit_seconds": fit_s, "load_seconds": load_s,
        "valid": result.best_valid, "test": result.history[-1]["test"],
        "valid_ndcg@20_history": [h["valid"].get(valid_key) for h in epochs],
        "batch": cfg.train.batch_size, "layers": cfg.encoder.layers, "dim": cfg.encoder.dim, "lr": cfg.train.lr,
        "l2": cfg.encoder.l2, "threads": torch.get_num_threads(), "users": data.num_users, "items": data.num_items,
        "interactions": {sp: int(data.matrix(sp).nnz) for sp in SPLITS}, "split_fingerprint": split_fingerprint(data),
        "torch": torch.__version__, "config": to_dict(cfg), "overrides": overrides,
    }


# ------------------------------------------------------------------------------------------- the driver


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_side(label: str, cmd: list[str], tag: str, threads: int, log: Path | None) -> dict:
    """Run one side in its own process (stderr to ``log`` if given); its last ``TAG {json}`` line is the row."""
    print(f"{label}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    started, load_before = time.perf_counter(), os.getloadavg()
    with open(log, "w") if log else open(os.devnull, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err if log else None, text=True,
                              env=child_env(threads))
    row = last_json(proc.stdout, tag)
    if proc.returncode or row is None:
        sys.exit(f"{label} run failed (exit {proc.returncode})" + (f"; see {log}" if log else ""))
    # Other work on the machine slows either side; the 1-minute load average before and after says how much.
    row.update(wall_seconds=time.perf_counter() - started, loadavg_before=list(load_before),
               loadavg_after=list(os.getloadavg()))
    return row


def metric_row(system: str, dataset: str, r: dict) -> dict:
    t = r["test"]
    return {"dataset": dataset, "system": system,
            **{f"R@{k}": 100 * t[f"recall@{k}"] for k in KS}, **{f"N@{k}": 100 * t[f"ndcg@{k}"] for k in KS},
            "best epoch": r["best_epoch"], "epochs": r["epochs_trained"],
            "stop": "time" if r.get("stopped_by_time_limit") else "early"
            if r["epochs_trained"] < r["setting"].get("max_epochs", EPOCHS) else "cap",
            "epoch s": r["epoch_seconds"], "median epoch s": statistics.median(r["epoch_seconds_list"]),
            "peak RSS MiB": r["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "beauty"])
    parser.add_argument("--sports", action="store_true", help="add Amazon Sports_and_Outdoors")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['epochs']} epochs on the first {QUICK['users']} users of ml-100k; writes nothing")
    parser.add_argument("--epochs", type=int, help=f"most epochs per run (default {EPOCHS}; early stopping at "
                        f"patience {PATIENCE} either way): a cap below convergence makes a speed-only row")
    parser.add_argument("--skip-peer", action="store_true", help="pocketrec only")
    parser.add_argument("--skip-pocketrec", action="store_true", help="RecBole only")
    parser.add_argument("--peer-python", default=str(PEER_PYTHON))
    parser.add_argument("--peer-args", default="", help="more options for recbole_lightgcn_peer.py, one string")
    parser.add_argument("--pocketrec-overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--logs", help="folder for each side's stderr (default: the terminal)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    parser.add_argument("--show", action="store_true", help="run nothing: print the table of results/ for --datasets")
    parser.add_argument("--side", choices=["pocketrec"], help=argparse.SUPPRESS)  # internal: one run
    parser.add_argument("--dataset", help=argparse.SUPPRESS)  # internal, with --side
    args = parser.parse_args()
    if args.side == "pocketrec":
        with tempfile.TemporaryDirectory(prefix="lightgcn-peer-") as tmp:
            row = run_pocketrec(args.dataset, args.quick, args.threads, Path(tmp) / "run", args.pocketrec_overrides,
                                args.epochs)
        print("ROW " + json.dumps(row), flush=True)
        return

    datasets = ["ml-100k"] if args.quick else list(dict.fromkeys(args.datasets + (["sports"] if args.sports else [])))
    if not args.skip_peer and not args.show and not Path(args.peer_python).exists():
        sys.exit(f"{args.peer_python} not found: run `make recbole-venv` first (or pass --skip-peer)")
    logs = Path(args.logs) if args.logs else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    s = settings(args.quick, args.epochs)
    rows = []
    for name in [] if args.show else datasets:
        data = load_split(name, args.quick)
        fingerprint = split_fingerprint(data)
        summary = {"users": data.num_users, "items": data.num_items,
                   "interactions": {sp: int(data.matrix(sp).nnz) for sp in SPLITS}, "split_fingerprint": fingerprint,
                   "source": data.source, "split": "load_interactions(seed=0): per-user random 80/10/10",
                   "quick": args.quick, "threads": args.threads, "max_epochs": s["epochs"], "patience": s["patience"]}
        print(f"{name}: {json.dumps(summary)}", file=sys.stderr, flush=True)
        del data
        if not args.skip_pocketrec:
            cmd = [sys.executable, __file__, "--side", "pocketrec", "--dataset", name, "--threads", str(args.threads),
                   *(["--quick"] if args.quick else []), *(["--epochs", str(args.epochs)] if args.epochs else []),
                   "--pocketrec-overrides", *args.pocketrec_overrides]
            row = run_side(f"pocketrec LightGCN ({name})", cmd, "ROW", args.threads,
                           logs / f"{name}-pocketrec.log" if logs else None)
            if row["split_fingerprint"] != fingerprint:
                sys.exit(f"{name}: the pocketrec run loaded another split "
                         f"({row['split_fingerprint']} != {fingerprint})")
            rows.append({"dataset": name, "method": "pocketrec-lightgcn", "system": "pocketrec", **row,
                         "setting": summary})
        if not args.skip_peer:
            with tempfile.TemporaryDirectory(prefix="lightgcn-peer-") as tmp:
                tag = f"{name}-split"  # not RecBole's own dataset names (ml-100k.yaml would be read)
                counts = export_split(load_split(name, args.quick), Path(tmp), tag)
                peer_args = ["--data-dir", tmp, "--name", tag, "--num-items", str(summary["items"]),
                             "--epochs", str(s["epochs"]), "--stopping-step", str(s["patience"] - 1),
                             "--batch", str(s["batch"]), "--dim", str(s["dim"]), "--layers", str(s["layers"]),
                             "--lr", str(s["lr"]), "--reg-weight", str(s["l2"]), "--threads", str(args.threads),
                             *shlex.split(args.peer_args)]
                cmd = [args.peer_python, str(HERE / "recbole_lightgcn_peer.py"), *peer_args]
                row = run_side(f"RecBole LightGCN ({name})", cmd, "PEER", args.threads,
                               logs / f"{name}-recbole.log" if logs else None)
            seen = {"users": row["users"], "items": row["items"], "interactions": row["interactions"]}
            want = {k: summary[k] for k in seen}
            if seen != want or counts != summary["interactions"]:
                sys.exit(f"{name}: RecBole loaded {seen}, the split has {want}")
            rows.append({"dataset": name, "method": "recbole-lightgcn", "system": "RecBole 1.2.1", **row,
                         "setting": {**summary, "peer_args": peer_args[4:]}})

    if args.show:
        rows = [r for r in json.loads((RESULTS / "lightgcn_peer.json").read_text()) if r["dataset"] in datasets]
        rows.sort(key=lambda r: (datasets.index(r["dataset"]), r["method"] != "pocketrec-lightgcn"))
    elif rows and not args.no_write and not args.quick:
        path = write_rows("lightgcn_peer", rows)
        print(f"wrote {path}", file=sys.stderr)
        # One side may have been run alone (--skip-peer / --skip-pocketrec): show both from the results file.
        rows = [r for r in json.loads(path.read_text()) if r["dataset"] in datasets]
        rows.sort(key=lambda r: (datasets.index(r["dataset"]), r["method"] != "pocketrec-lightgcn"))
    table = [metric_row(r["system"], r["dataset"], r) for r in rows]  # stop "cap": ran out of epochs
    print(f"LightGCN d={s['dim']}, {s['layers']} layers, {args.threads} threads" + (" (quick)" if args.quick else ""))
    print_table(table, list(table[0]))
    print()
    for name in datasets:
        pair = {r["method"]: r for r in rows if r["dataset"] == name}
        if len(pair) == 2:
            ours, peer = pair["pocketrec-lightgcn"], pair["recbole-lightgcn"]
            median = statistics.median(ours["epoch_seconds_list"]) / statistics.median(peer["epoch_seconds_list"])
            print(f"{name}: pocketrec / RecBole epoch time {ours['epoch_seconds'] / peer['epoch_seconds']:.2f} "
                  f"(medians {median:.2f}), "
                  f"peak RSS {ours['peak_rss_mib'] / peer['peak_rss_mib']:.2f}; "
                  f"NDCG@20 {100 * ours['test']['ndcg@20']:.2f} vs {100 * peer['test']['ndcg@20']:.2f}")


if __name__ == "__main__":
    main()
