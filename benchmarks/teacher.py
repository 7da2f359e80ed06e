"""Teacher benchmark: train the session teacher with the protocol of docs/data.md and print its figures.

For each dataset (one subprocess each, so peak memory is per dataset): train on the first 90% of the
training sessions, select the epoch on the last 10%, report test Recall@20 / MRR@20 / NDCG@20 at that
epoch, mean epoch time and the process's peak RSS. Rows go to ``benchmarks/results/teacher.json``.

    python benchmarks/teacher.py --datasets tmall,diginetica [--resume] [encoder.dim=128 train.lr_decay=0.1 ...]
    python benchmarks/teacher.py --recipe teacher-d128    # a named command: benchmarks/recipes/NAME.yaml

Reference points on these splits (P@20 / MRR@20, %): SR-GNN 27.57 / 13.72 (Tmall), 50.73 / 17.59
(Diginetica); RecBole SASRec 19.8 / 10.7 and 48.5 / 16.7.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import command_line, last_json, parse_with_recipe, peak_rss_mib, print_table, write_rows

REFERENCE = {"tmall": {"SR-GNN": (27.57, 13.72), "GCE-GNN": (33.42, 15.42), "RecBole SASRec": (19.8, 10.7)},
             "diginetica": {"SR-GNN": (50.73, 17.59), "GCE-GNN": (54.22, 19.04), "RecBole SASRec": (48.5, 16.7)}}
# The settings of the README's teacher rows: d = 128 (OD-Rec's default), SR-GNN's step decay (lr x 0.1 after
# every 3 epochs). Tmall peaks at epoch 1 and stops at 3, before the first decay.
DEFAULTS = ["encoder.dim=128", "train.epochs=6", "train.patience=2", "train.lr_decay=0.1", "train.lr_decay_every=3"]


def run_one(dataset: str, overrides: list[str], out: str, label: str, resume: bool = False) -> dict:
    import torch

    from pocketrec.config import to_dict
    from pocketrec.data.registry import load_dataset
    from pocketrec.train.teacher import final_test_metrics, load_teacher_config, train_teacher

    torch.set_num_threads(int(torch.get_num_threads()))
    cfg = load_teacher_config(None, [*DEFAULTS, *overrides, f"dataset={dataset}", f"out={out}/{label}-{dataset}"])
    data = load_dataset(dataset)
    started = time.perf_counter()
    model, result = train_teacher(data, cfg, resume=resume)
    test = final_test_metrics(result)
    metric = cfg.train.metric or model.selection_metric
    return {
        "dataset": dataset, "method": label, "table_bytes": model.table.nbytes(),
        "dense_table_bytes": model.table.nbytes(),
        "recall@20": test["recall@20"], "mrr@20": test["mrr@20"], "ndcg@20": test["ndcg@20"],
        "valid_" + metric: result.best_valid[metric],
        "best_epoch": result.best_epoch + 1, "epochs_run": len(result.history) - 1,
        "epoch_seconds": result.epoch_seconds, "total_seconds": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(), "config": to_dict(cfg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="tmall,diginetica")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--label", default="teacher",
                        help="row name in results/teacher.json and checkpoint folder prefix (e.g. teacher-d128)")
    parser.add_argument("--resume", action="store_true",
                        help="continue each run from its last/ checkpoint (e.g. with a new lr schedule); "
                             "the epochs already run count in the row")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one dataset and print JSON
    args, overrides = parse_with_recipe(parser, "teacher.py")
    if args.one:
        print("ROW " + json.dumps(run_one(args.one, overrides, args.out, args.label, args.resume)), flush=True)
        return
    rows = []
    for dataset in args.datasets.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", dataset, "--out", args.out,
                               "--label", args.label, *(["--resume"] if args.resume else []), *overrides],
                              stdout=subprocess.PIPE, text=True)
        row = last_json(proc.stdout, "ROW")
        if proc.returncode or row is None:
            sys.exit(f"teacher benchmark failed on {dataset} (exit {proc.returncode})")
        rows.append(row | {"command": command_line("teacher.py")})
    write_rows("teacher", rows)
    table = [{"dataset": r["dataset"], "run": r["method"], "Recall@20 %": 100 * r["recall@20"],
              "MRR@20 %": 100 * r["mrr@20"],
              "NDCG@20 %": 100 * r["ndcg@20"], "best epoch": r["best_epoch"], "epoch s": r["epoch_seconds"],
              "peak RSS MiB": r["peak_rss_mib"]} for r in rows]
    print_table(table, list(table[0]))
    for r in rows:
        refs = ", ".join(f"{k} {p} / {m}" for k, (p, m) in REFERENCE.get(r["dataset"], {}).items())
        print(f"{r['dataset']}: reference P@20 / MRR@20: {refs}")


if __name__ == "__main__":
    main()
