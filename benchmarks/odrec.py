"""OD-Rec benchmark: a TT student distilled from an existing teacher, with its ablations, side by side.

For each dataset, with the teacher checkpoint ``--teacher`` (``{dataset}`` is filled in), at a budget of
the dense fp32 item table divided by ``--ratio`` (default 30x, the paper's headline), it trains and
reports test Recall@20 / MRR@20 / NDCG@20 at the best-validation epoch and the item-table bytes of:

* ``teacher``: the checkpoint as is (its stored test metrics);
* ``odrec``: the full recipe (t = 2, all four loss terms);
* ``odrec-t1``: a plain tensor train (t = 1) at the same budget;
* ``odrec-no-rec`` / ``-no-kd`` / ``-no-cl`` / ``-no-pred``: one distillation term switched off;
* ``dense-small``: a dense table of the same bytes (smaller d, ``DenseTable.for_budget``) trained from
  scratch with the teacher's recipe (cross-entropy only, no teacher).

Rows go to ``benchmarks/results/odrec.json`` (one per dataset and method, replacing earlier ones).

    python benchmarks/odrec.py --datasets tmall --teacher runs/bench/teacher-{dataset}/best --train.epochs=10
    python benchmarks/odrec.py --quick          # tiny synthetic smoke run (seconds), writes nothing

Overrides: ``--train.KEY=V`` and ``--distill.KEY=V`` (see ``pocketrec.methods.odrec.ODRecConfig``), e.g.
``--num_cores=3`` or ``--warm_start=false``. ``--variants odrec,odrec-t1`` runs a subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from common import peak_rss_mib, print_table, write_rows

VARIANTS = ("odrec", "odrec-t1", "odrec-no-rec", "odrec-no-kd", "odrec-no-cl", "odrec-no-pred", "dense-small")
QUICK = ["train.epochs=2", "train.batch_size=32", "train.lr=0.005", "train.patience=10", "num_cores=3"]


def quick_setup(out: Path):
    """A synthetic 60-item walk and a tiny teacher trained on it (the smoke-test setting)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import synthetic_dataset
    from pocketrec.models import EncoderConfig
    from pocketrec.train.teacher import TeacherConfig, train_teacher
    from pocketrec.train.trainer import TrainConfig

    data = synthetic_dataset()
    cfg = TeacherConfig(dataset="synthetic", out=str(out / "teacher-synthetic"),
                        encoder=EncoderConfig(dim=16, max_len=10, dropout=0.1, attn_dropout=0.1),
                        train=TrainConfig(epochs=3, batch_size=32, lr=5e-3, seed=7, progress=False, patience=10))
    train_teacher(data, cfg)
    return data, out / "teacher-synthetic" / "best"


def dense_small(teacher_dir: Path, data, budget_bytes: int, train_cfg, out_dir: Path):
    """A dense table of the budget's bytes (smaller d), trained from scratch with cross-entropy."""
    from pocketrec.models import SessionRecommender
    from pocketrec.tables.dense import DenseTable
    from pocketrec.train.checkpoint import load_checkpoint
    from pocketrec.train.teacher import ce_loss, dataset_meta, run_training
    from pocketrec.train.trainer import seed_everything

    teacher, _ = load_checkpoint(teacher_dir)
    seed_everything(train_cfg.seed)
    table = DenseTable.for_budget(data.num_items, teacher.config.dim, budget_bytes)
    enc = dataclasses.replace(teacher.config, dim=table.dim, heads=1 if table.dim % teacher.config.heads else
                              teacher.config.heads)
    model = SessionRecommender(enc, table)
    meta = {**dataset_meta(data), "method": "dense-small", "table_bytes": table.nbytes()}
    fit = run_training(model, data, train_cfg, out_dir, ce_loss(model), meta)
    return model, fit


def run_variant(name: str, teacher_dir: Path, data, cfg, out: Path) -> dict:
    from pocketrec.methods.odrec import compress_odrec
    from pocketrec.search.budget import parse_budget
    from pocketrec.tables.dense import DenseTable
    from pocketrec.train.checkpoint import read_meta

    meta = read_meta(teacher_dir)
    dense_bytes = DenseTable.bytes_for(meta["num_items"], meta["encoder"]["dim"])
    started = time.perf_counter()
    run_dir = out / f"{name}-{data.name}"
    if name == "dense-small":
        model, fit = dense_small(teacher_dir, data, parse_budget(cfg.budget, dense_bytes), cfg.train, run_dir)
        test, table_bytes, extra = fit.history[-1]["test"], model.table.nbytes(), {"dim": model.table.dim}
    else:
        distill, t = cfg.distill, cfg.t
        if name == "odrec-t1":
            t = 1
        elif name.startswith("odrec-no-"):
            distill = dataclasses.replace(distill, **{f"use_{name.removeprefix('odrec-no-')}": False})
        model, result = compress_odrec(teacher_dir, data, cfg.budget, num_cores=cfg.num_cores, t=t, out_dir=run_dir,
                                       distill=distill, train=cfg.train, warm_start=cfg.warm_start,
                                       warm_start_steps=cfg.warm_start_steps)
        fit, test, table_bytes = result.fit, result.test, result.table_bytes
        extra = {"tt_rank": model.table.rank, "t": t, "num_cores": cfg.num_cores}
    return {"dataset": data.name, "method": name, "table_bytes": table_bytes, "dense_table_bytes": dense_bytes,
            "ratio": dense_bytes / table_bytes, "recall@20": test["recall@20"], "mrr@20": test["mrr@20"],
            "ndcg@20": test["ndcg@20"], "best_epoch": fit.best_epoch + 1, "epoch_seconds": fit.epoch_seconds,
            "total_seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(),
            "budget": cfg.budget, "teacher": str(teacher_dir), **extra}


def teacher_row(teacher_dir: Path, dataset: str) -> dict:
    from pocketrec.train.checkpoint import read_meta

    meta = read_meta(teacher_dir)
    test = meta.get("test") or {}
    return {"dataset": dataset, "method": "teacher", "table_bytes": meta["table_nbytes"],
            "dense_table_bytes": meta["table_nbytes"], "ratio": 1.0, "recall@20": test.get("recall@20"),
            "mrr@20": test.get("mrr@20"), "ndcg@20": test.get("ndcg@20"), "teacher": str(teacher_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="tmall,diginetica")
    parser.add_argument("--teacher", default="runs/bench/teacher-{dataset}/best")
    parser.add_argument("--ratio", type=float, default=30.0, help="budget = dense fp32 item table / RATIO")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic smoke run; writes no results")
    args, overrides = parser.parse_known_args()

    import torch

    from pocketrec.config import load_config
    from pocketrec.data.registry import load_dataset
    from pocketrec.methods.odrec import ODRecConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    out = Path(args.out)
    rows = []
    if args.quick:
        out = out / "odrec-quick"
        data, teacher_dir = quick_setup(out)
        jobs = [(data, teacher_dir)]
        ratio, overrides = 9.0, [*QUICK, "train.progress=false", *overrides]
    else:
        jobs = [(name, Path(args.teacher.format(dataset=name))) for name in args.datasets.split(",") if name]
        ratio = args.ratio
    for data, teacher_dir in jobs:
        if not (Path(teacher_dir) / "checkpoint.json").is_file():
            sys.exit(f"no teacher checkpoint at {teacher_dir} (train one with benchmarks/teacher.py or "
                     "`pocketrec train`, or pass --teacher)")
        if isinstance(data, str):
            data = load_dataset(data)
        cfg = load_config(ODRecConfig, None, [*overrides, f"budget={ratio}x"])
        done = [teacher_row(teacher_dir, data.name)]
        for name in variants:
            print(f"== {data.name}: {name}", file=sys.stderr, flush=True)
            done.append(run_variant(name, teacher_dir, data, cfg, out))
            if not args.quick:
                write_rows("odrec", done)  # after every variant, so a long run keeps what it finished
        rows += done
    table = [{"dataset": r["dataset"], "method": r["method"], "table bytes": r["table_bytes"],
              "ratio": f"{r['ratio']:.1f}x", "Recall@20 %": 100 * (r["recall@20"] or 0.0),
              "MRR@20 %": 100 * (r["mrr@20"] or 0.0), "NDCG@20 %": 100 * (r["ndcg@20"] or 0.0),
              "epoch s": r.get("epoch_seconds", "")} for r in rows]
    print_table(table, list(table[0]))


if __name__ == "__main__":
    main()
