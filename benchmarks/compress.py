"""Compression benchmark: OD-Rec or EODRec students distilled from one teacher, with their ablations.

For each dataset, with the teacher checkpoint ``--teacher`` (``{dataset}`` is filled in), at a budget of
the dense fp32 item table divided by ``--ratio`` (default: 30x for OD-Rec, 40x for EODRec, the papers'
headline ratios), it trains and reports test Recall@20 / MRR@20 / NDCG@20 at the best-validation epoch
and the item-table bytes of:

* ``teacher``: the checkpoint as is (its stored test metrics);
* ``--method odrec``: ``odrec`` (t = 2, all four loss terms), ``odrec-t1`` (plain TT, same budget),
  ``odrec-no-rec`` / ``-no-kd`` / ``-no-cl`` / ``-no-pred`` (one distillation term off);
* ``--method eodrec``: ``eodrec`` (the configured codes, KL, bidirectional InfoNCE; the recipes of the recorded
  rows pin ``--codes=learned``, the default until 2026-12), ``eodrec-no-kd`` (no
  teacher -> student KL), ``eodrec-uni-cl`` (InfoNCE one direction only), ``eodrec-no-cl``,
  ``eodrec-mutual`` (the teacher also learns from the student, ``teacher_lr=1e-4``), ``eodrec-rq``
  (codes from residual k-means alone), ``eodrec-gumbel`` (the autoencoder's final codes, no selection);
* ``dense-small`` (both): a dense table of the same bytes (smaller d) trained from scratch with the
  teacher's recipe (cross-entropy only, no teacher).

Rows go to ``benchmarks/results/METHOD.json`` (one per dataset and variant, replacing earlier ones) after
every variant, so a long run keeps what it finished.

    python benchmarks/compress.py --method odrec --datasets tmall --teacher runs/bench/teacher-{dataset}/best
    python benchmarks/compress.py --method eodrec --quick      # tiny synthetic smoke run, writes nothing
    python benchmarks/compress.py --recipe eodrec-tmall-d128   # a named command: benchmarks/recipes/NAME.yaml

Overrides: ``--train.KEY=V``, ``--distill.KEY=V`` and the method's own keys (``--num_cores=3``, ``--M=4``...);
``--variants a,b`` runs a subset. Methods, their configs and runners come from :mod:`pocketrec.methods.registry`
(``dense-small`` is its baseline of that name, with the method's budget and ``train`` schedule).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from common import command_line, parse_with_recipe, peak_rss_mib, print_table, write_rows

VARIANTS = {
    "odrec": ("odrec", "odrec-t1", "odrec-no-rec", "odrec-no-kd", "odrec-no-cl", "odrec-no-pred", "dense-small"),
    "eodrec": ("eodrec", "eodrec-no-kd", "eodrec-uni-cl", "eodrec-no-cl", "eodrec-mutual", "eodrec-rq",
               "eodrec-gumbel", "dense-small"),
}
DEFAULT_RATIO = {"odrec": 30.0, "eodrec": 40.0}
QUICK = {"odrec": ["num_cores=3"], "eodrec": ["code_epochs=2"]}
QUICK_TRAIN = ["train.epochs=2", "train.batch_size=32", "train.lr=0.005", "train.patience=10", "train.progress=false"]


def quick_setup(out: Path):
    """A synthetic 60-item walk and a tiny teacher trained on it (the smoke-test setting)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import synthetic_dataset, tiny_teacher_config
    from pocketrec.train.teacher import train_teacher

    data = synthetic_dataset()
    train_teacher(data, tiny_teacher_config(out / "teacher-synthetic", epochs=3))
    return data, out / "teacher-synthetic" / "best"


def variant_config(method: str, name: str, cfg):
    """The method config of variant ``name`` (a copy of ``cfg`` with the variant's change)."""
    distill = cfg.distill
    if name.endswith("-t1"):
        return dataclasses.replace(cfg, t=1)
    if "-no-" in name:
        term = name.split("-no-")[1]
        return dataclasses.replace(cfg, distill=dataclasses.replace(distill, **{f"use_{term}": False}))
    if name.endswith("-uni-cl"):
        return dataclasses.replace(cfg, distill=dataclasses.replace(distill, bidirectional=False))
    if name.endswith("-mutual"):
        return dataclasses.replace(cfg, distill=dataclasses.replace(distill, teacher_lr=1e-4))
    if name.endswith("-rq") or name.endswith("-gumbel"):
        return dataclasses.replace(cfg, codes=name.rsplit("-", 1)[1])
    assert name == method, name
    return cfg


def run_variant(method: str, name: str, teacher_dir: Path, data, cfg, out: Path, tag: str = "") -> dict:
    from pocketrec.methods.registry import get_method
    from pocketrec.tables.dense import DenseTable
    from pocketrec.train.checkpoint import read_meta

    meta = read_meta(teacher_dir)
    dense_bytes = DenseTable.bytes_for(meta["num_items"], meta["encoder"]["dim"])
    started = time.perf_counter()
    run_dir = out / f"{name}{tag}-{data.name}"
    if name == "dense-small":  # the baseline at the method's budget, trained with the method's schedule
        recipe = get_method("dense-small")
        vcfg = recipe.load_config()
        vcfg.teacher, vcfg.budget, vcfg.out, vcfg.train = cfg.teacher, cfg.budget, str(run_dir), cfg.train
    else:
        recipe = get_method(method)
        vcfg = dataclasses.replace(variant_config(method, name, cfg), out=str(run_dir))
    model, result = recipe.compress(vcfg, data)
    fit, test, table_bytes = result.fit, result.test, result.table_bytes
    keys = ("tt_rank", "t", "num_cores", "order", "warm_start_error", "M", "K", "dtype", "codes", "code_mse",
            "code_learning", "dim")
    extra = {k: result.meta[k] for k in keys if k in result.meta}
    return {"dataset": data.name, "method": name + tag, "table_bytes": table_bytes, "dense_table_bytes": dense_bytes,
            "ratio": dense_bytes / table_bytes, "recall@20": test["recall@20"], "mrr@20": test["mrr@20"],
            "ndcg@20": test["ndcg@20"], "best_epoch": fit.best_epoch + 1, "epoch_seconds": fit.epoch_seconds,
            "total_seconds": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib(),
            "budget": cfg.budget, "teacher": str(teacher_dir), **extra}


def teacher_row(teacher_dir: Path, dataset: str) -> dict:
    from pocketrec.train.checkpoint import read_meta

    meta = read_meta(teacher_dir)
    test = meta.get("test") or {}
    return {"dataset": dataset, "method": "teacher", "table_bytes": meta["table_bytes"],
            "dense_table_bytes": meta["table_bytes"], "ratio": 1.0, "recall@20": test.get("recall@20"),
            "mrr@20": test.get("mrr@20"), "ndcg@20": test.get("ndcg@20"), "teacher": str(teacher_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(VARIANTS), default="odrec")
    parser.add_argument("--datasets", default="tmall,diginetica")
    parser.add_argument("--teacher", default="runs/bench/teacher-{dataset}/best")
    parser.add_argument("--ratio", type=float, default=0.0, help="budget = dense fp32 item table / RATIO")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all of the method's)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--tag", default="", help="suffix for row names and run folders, e.g. -T3 for a run "
                        "with --distill.kd_temperature=3 (its overrides are stored in the row)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny synthetic smoke run; writes no results")
    args, overrides = parse_with_recipe(parser, "compress.py")

    import torch

    from pocketrec.data.registry import load_dataset
    from pocketrec.methods.registry import get_method

    if args.threads:
        torch.set_num_threads(args.threads)
    method = args.method
    variants = [v for v in (args.variants or ",".join(VARIANTS[method])).split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS[method]))
    if unknown:
        sys.exit(f"unknown variants {unknown} for {method} (known: {', '.join(VARIANTS[method])})")
    recipe = get_method(method)
    out = Path(args.out)
    ratio = args.ratio or DEFAULT_RATIO[method]
    rows = []
    if args.quick:
        out = out / f"{method}-quick"
        data, teacher_dir = quick_setup(out)
        jobs = [(data, teacher_dir)]
        ratio, overrides = 4.0, [*QUICK_TRAIN, *QUICK[method], *overrides]
    else:
        jobs = [(name, Path(args.teacher.format(dataset=name))) for name in args.datasets.split(",") if name]
    for data, teacher_dir in jobs:
        if not (Path(teacher_dir) / "checkpoint.json").is_file():
            sys.exit(f"no teacher checkpoint at {teacher_dir} (train one with benchmarks/teacher.py or "
                     "`pocketrec train`, or pass --teacher)")
        if isinstance(data, str):
            data = load_dataset(data)
        cfg = recipe.load_config(None, [*overrides, f"budget={ratio}x", f"teacher={teacher_dir}"])
        done = [teacher_row(teacher_dir, data.name)]
        for name in variants:
            print(f"== {data.name}: {name}", file=sys.stderr, flush=True)
            row = run_variant(method, name, teacher_dir, data, cfg, out, args.tag)
            done.append(row | ({"overrides": overrides} if args.tag else {}) | {"command": command_line("compress.py")})
            if not args.quick:  # keyed by teacher too: runs from another teacher keep their own rows
                write_rows(method, done, merge_key=("dataset", "method", "teacher"))
        rows += done
    teachers = {(r["dataset"], r["teacher"]): r for r in rows if r["method"] == "teacher"}

    def of_teacher(r: dict, key: str) -> str:
        base = teachers[(r["dataset"], r["teacher"])][key]
        return f"{100 * r[key] / base:.1f}%" if base and r[key] is not None else ""

    table = [{"dataset": r["dataset"], "method": r["method"], "table bytes": r["table_bytes"],
              "ratio": f"{r['ratio']:.1f}x", "Recall@20 %": 100 * (r["recall@20"] or 0.0),
              "MRR@20 %": 100 * (r["mrr@20"] or 0.0), "NDCG@20 %": 100 * (r["ndcg@20"] or 0.0),
              "of teacher R / MRR": f"{of_teacher(r, 'recall@20')} / {of_teacher(r, 'mrr@20')}",
              "epoch s": r.get("epoch_seconds", "")} for r in rows]
    print_table(table, list(table[0]))


if __name__ == "__main__":
    main()
