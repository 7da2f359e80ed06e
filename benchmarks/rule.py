"""RULE: one elastic model trained once, customised to every budget, against the alternatives at the same bytes.

For each dataset (LightGCN teacher as in ``benchmarks/cf_tables.py``, reused from ``--teacher-root``):

1. the RULE variants are trained once each (``pocketrec compress --method rule`` with the options of
   :data:`VARIANTS`: the default, and the ablations of the subset sampling, the diversity regulariser and the
   scoring);
2. at each budget (default 2%, 5%, 10%, 25% of the dense fp32 table of propagated item vectors), the default
   RULE model is customised by RULE's search (``evolution``) and, inside the same harness, by ``uniform``
   allocation (the same blocks for every group: a plain narrower model), ``popularity`` allocation and
   ``random`` search with as many estimator calls; every choice is made on validation and tested once;
3. the baselines are built at the same budgets through the method registry: ``cf-codebook``, ``cf-tt``,
   ``cf-dense-small`` (a LightGCN of smaller d trained from scratch: the retraining RULE avoids), and
   ``cf-int8`` / ``cf-int4`` where they fit;
4. cost: training and estimator seconds once, then the seconds from checkpoint to artifact per budget, and
   a ``--curve``-budget sweep (default 50) with every artifact written.

Prints Markdown tables and writes ``benchmarks/results/rule.json``::

    python benchmarks/rule.py                                  # ml-100k, the stored results
    python benchmarks/rule.py --datasets ml-100k,beauty
    python benchmarks/rule.py --quick                          # 2 epochs everywhere; writes nothing
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from cf_tables import build, finished, teacher_run

from common import print_table, write_rows

#: variant -> ``pocketrec compress --method rule`` options; the first is the default model
VARIANTS = {
    "rule": [],
    "rule (full arch only)": ["subsets=full"],
    "rule (+diversity)": ["diversity=0.1"],
    "rule (no rotation, any subset)": ["rotation=none", "space=subset"],
    "rule (shared scoring, any subset, sampled)": ["scoring=shared", "rotation=none", "space=subset"],
    "rule (authors': shared scoring, any subset, full arch only, +diversity)":
        ["scoring=shared", "rotation=none", "space=subset", "subsets=full", "diversity=0.1"],
}
STRATEGIES = ("evolution", "uniform", "popularity", "random")
BASELINES = ("cf-codebook", "cf-tt", "cf-dense-small", "cf-int8", "cf-int4")
COLUMNS = ["dataset", "method", "budget", "table_bytes", "artifact_bytes", "Recall@20 %", "NDCG@20 %",
           "valid R@20 %", "seconds"]


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in variant).strip("-").replace("--", "-")


def variant_run(variant: str, options: list[str], teacher: Path, data: Any, root: Path, args, log
                ) -> tuple[Path, dict[str, Any], float]:
    run = root / slug(variant)
    meta, seconds = finished(run), 0.0
    if meta is None or not (run / "estimator.safetensors").exists():
        log(f"{variant}: training")
        extra = ["train.epochs=2", "label_archs=20", "estimator_epochs=20"] if args.quick else (
            [f"train.epochs={args.student_epochs}"] if args.student_epochs else [])
        seconds = build("rule", "1x", teacher, data, run, [*options, *extra])
        meta = finished(run)
    else:
        log(f"{variant}: reusing {run}")
    return run, meta, seconds


def teacher_command(dataset: str, meta: dict[str, Any], out: Path) -> str:
    """The ``pocketrec train`` command of a LightGCN teacher, from its checkpoint (shape and schedule)."""
    encoder, schedule = meta.get("encoder") or {}, meta.get("train_config") or {}
    options = [f"--encoder.{k}={encoder[k]}" for k in ("dim", "layers") if k in encoder]
    options += [f"--train.{k}={schedule[k]}" for k in ("lr", "epochs", "patience") if k in schedule]
    return f"pocketrec train --dataset {dataset} --backbone lightgcn {' '.join(options)} --out {out}"


def as_run(options: list[str], meta: dict[str, Any]) -> list[str]:
    """``options`` with the schedule the run actually trained with (its checkpoint's ``train_config``): a run
    reused from an earlier invocation keeps the command that made it."""
    schedule = meta.get("train_config") or {}
    kept = [o for o in options if not o.startswith(("train.epochs=", "train.patience="))]
    return kept + [f"train.{key}={schedule[key]}" for key in ("epochs", "patience") if key in schedule]


def training_seconds(run: Path) -> float:
    """The training time of a finished run: its epochs (``last/``'s history) times their mean seconds, plus
    the estimator's labelling and fitting (what a reused run no longer measures)."""
    from pocketrec.methods.rule import ESTIMATOR_FILE, load_estimator
    from pocketrec.train.checkpoint import read_meta

    best, last = read_meta(run / "best"), read_meta(run / "last")
    report = load_estimator(run / ESTIMATOR_FILE)[1]
    return len(last.get("history", [])) * float(best.get("epoch_seconds") or 0.0) + report["label_seconds"] + \
        report["fit_seconds"]


def choice_row(data: Any, method: str, choice: Any, test: dict[str, float], dense: int, command: str,
               script: str) -> dict[str, Any]:
    return {"dataset": data.name, "method": method, "budget": choice.budget, "table_bytes": choice.table_bytes,
            "dense_table_bytes": dense, "ratio": dense / choice.table_bytes, "artifact_bytes": choice.artifact_bytes,
            "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"], "valid_recall@20": choice.verified,
            "seconds": round(choice.seconds, 3), "dtype": choice.dtype, "blocks": int(choice.mask.sum()),
            "mask": choice.mask.astype(int).tolist(), "command": command, "script": script}


def customise(customizer: Any, data: Any, method: str, strategy: str, budget: str, artifact: Path, dense: int,
              command: str, script: str) -> dict[str, Any]:
    started = time.perf_counter()
    choice = customizer.choose(budget, strategy=strategy)
    customizer.write(choice, artifact, users=[data.users.raw_ids[0]])
    choice.seconds = time.perf_counter() - started
    return choice_row(data, method, choice, customizer.evaluate(choice, "test"), dense, command, script)


def run_dataset(name: str, args: argparse.Namespace, script: str, log) -> tuple[list[dict], list[dict], dict]:
    from cf_tables import artifact_bytes, row_of

    from pocketrec.backbones.lightgcn import LightGCNConfig
    from pocketrec.data import load_interactions
    from pocketrec.methods.customize import Customizer
    from pocketrec.tables.dense import DenseTable

    data = load_interactions(name)
    suffix = "-quick" if args.quick else ""
    root = Path(args.out) / f"{data.name}{suffix}"
    teacher, tmeta, _ = teacher_run(data, Path(args.teacher_root) / f"{data.name}{suffix}" / "teacher",
                                    2 if args.quick else args.teacher_epochs, log)
    dense = DenseTable.bytes_for(data.num_items, LightGCNConfig(**tmeta["encoder"]).out_dim)
    budgets = args.budgets.split(",")
    rows = [row_of(data, "lightgcn (teacher)", "1x", {**tmeta, "dense_table_bytes": dense, "table_bytes": dense},
                   0.0, teacher_command(data.name, tmeta, teacher.parent), script)]
    rows[0]["artifact_bytes"] = artifact_bytes(teacher, data, root / "artifacts" / "teacher.safetensors")
    ablation, cost = [], {"dataset": data.name}
    for index, (variant, options) in enumerate(VARIANTS.items()):
        if index and not args.ablation:
            break
        run, meta, seconds = variant_run(variant, options, teacher, data, root, args, log)
        command = (f"pocketrec compress --method rule --teacher {teacher} --out {run}"
                   + "".join(f" --{o}" for o in as_run(options, meta)))
        customizer = Customizer(run, dataset=data)
        full = {"dataset": data.name, "variant": variant, "options": " ".join(options) or "(defaults)",
                "full_test_recall@20": meta["test"]["recall@20"], "full_test_ndcg@20": meta["test"]["ndcg@20"],
                "estimator_tau": customizer.estimator_report["kendall_tau"], "command": command}
        strategies = STRATEGIES if index == 0 else ("evolution",)
        for budget in budgets:
            for strategy in strategies:
                label = "rule" if strategy == "evolution" else f"rule-{strategy}"
                artifact = root / "artifacts" / f"{slug(variant)}-{strategy}-{budget.replace('%', 'pct')}.safetensors"
                try:
                    row = customise(customizer, data, label if index == 0 else variant, strategy, budget, artifact,
                                    dense, f"pocketrec customize {run} --budget {budget} --strategy {strategy}",
                                    script)
                except ValueError as err:
                    log(f"{variant} {strategy} @ {budget}: {err}")
                    continue
                if strategy == "evolution":  # the variant's own search; the others are the harness's baselines
                    full[f"test_recall@20 @ {budget}"] = row["recall@20"]
                if index == 0:
                    rows.append(row)
                log(f"{variant} {strategy} @ {budget}: {row['table_bytes']:,} B ({row['dtype']}, {row['blocks']} "
                    f"blocks), test R@20 {100 * row['recall@20']:.2f}, {row['seconds']:.2f} s")
        ablation.append(full)
        if index == 0:
            cost.update({"train_seconds": round(seconds or training_seconds(run), 1),
                         "best_epoch": meta.get("epoch", -1) + 1, **customizer.estimator_report})
            cost.update(curve(customizer, data, root / "curve", dense, args.curve, log))
    for budget in budgets:
        for method in args.baselines.split(","):
            run = root / f"{method}-{budget.replace('%', 'pct')}"
            meta, seconds = finished(run), 0.0
            options = ["train.epochs=2"] if args.quick and method not in ("cf-int8", "cf-int4") else []
            if not args.quick and method == "cf-dense-small":
                options += [f"train.patience={args.scratch_patience}",
                            *([f"train.epochs={args.scratch_epochs}"] if args.scratch_epochs else [])]
            if not args.quick and method in ("cf-codebook", "cf-tt") and args.student_epochs:
                options.append(f"train.epochs={args.student_epochs}")
            if method == "cf-codebook" and args.quick:
                options.append("code_epochs=1")
            if meta is None:
                try:
                    seconds = build(method, budget, teacher, data, run, options)
                except ValueError as err:
                    log(f"{method} @ {budget}: {err}")
                    continue
                meta = finished(run)
            command = (f"pocketrec compress --teacher {teacher} --method {method} --budget {budget} --out {run}"
                       + "".join(f" --{o}" for o in as_run(options, meta)))
            row = row_of(data, method, budget, meta, seconds, command, script)
            row["artifact_bytes"] = artifact_bytes(run / "best", data, root / "artifacts" / f"{run.name}.safetensors")
            row["valid_recall@20"] = (meta.get("valid") or {}).get("recall@20")
            rows.append(row)
            log(f"{method} @ {budget}: {row['table_bytes']:,} B, test R@20 {100 * row['recall@20']:.2f}")
    return rows, ablation, cost


def curve(customizer: Any, data: Any, folder: Path, dense: int, count: int, log) -> dict[str, Any]:
    """``count`` budgets from the smallest int8 table to the dense one, each searched and written."""
    space = customizer.space("int8")
    budgets = np.unique(np.linspace(space.min_cost(), dense, count).astype(int))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds = []
    for budget in budgets:
        one = time.perf_counter()
        choice = customizer.choose(int(budget))
        customizer.write(choice, folder / f"rule-{budget}.safetensors")
        seconds.append(time.perf_counter() - one)
    total = time.perf_counter() - started
    log(f"curve: {len(budgets)} budgets written in {total:.1f} s (max {max(seconds):.2f} s per budget)")
    return {"curve_budgets": len(budgets), "curve_seconds": round(total, 2),
            "per_budget_mean_seconds": round(float(np.mean(seconds)), 3),
            "per_budget_max_seconds": round(float(np.max(seconds)), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k")
    parser.add_argument("--budgets", default="2%,5%,10%,25%")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--out", default="runs/rule-bench", help="run folders (reused)")
    parser.add_argument("--teacher-root", default="runs/cf-tables-full",
                        help="where benchmarks/cf_tables.py keeps its teachers (reused, else trained there)")
    parser.add_argument("--teacher-epochs", type=int, default=None,
                        help="cap the teacher's epochs when it is trained here (default 400)")
    parser.add_argument("--student-epochs", type=int, default=None, help="cap RULE's training epochs (default 100)")
    parser.add_argument("--scratch-epochs", type=int, default=None,
                        help="cap cf-dense-small's epochs (default the teacher's 400)")
    parser.add_argument("--scratch-patience", type=int, default=50,
                        help="cf-dense-small's patience: from scratch, LightGCN sits on a popularity plateau "
                             "(Recall@20 ~19.5 on ml-100k) for tens of epochs, and patience 10 stopped d = 3 and "
                             "d = 16 there")
    parser.add_argument("--curve", type=int, default=50, help="budgets of the cost sweep")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere (a smoke run); writes nothing")
    args = parser.parse_args(argv)
    script = shlex.join(["python", "benchmarks/rule.py", *(sys.argv[1:] if argv is None else argv)])

    def log(line: str) -> None:
        print(f"[rule] {line}", file=sys.stderr, flush=True)

    rows, ablation, costs = [], [], []
    for name in args.datasets.split(","):
        r, a, c = run_dataset(name.strip(), args, script, log)
        rows, ablation, costs = rows + r, ablation + a, costs + [c]
    print_table([{**r, "Recall@20 %": 100 * r["recall@20"], "NDCG@20 %": 100 * r["ndcg@20"],
                  "valid R@20 %": 100 * r["valid_recall@20"] if r.get("valid_recall@20") is not None else None}
                 for r in rows], COLUMNS)
    budgets = args.budgets.split(",")
    print()
    print_table([{**a, **{b: 100 * a[f"test_recall@20 @ {b}"] for b in budgets if f"test_recall@20 @ {b}" in a},
                  "full": 100 * a["full_test_recall@20"]} for a in ablation],
                ["dataset", "variant", "full", *budgets, "estimator_tau"])
    print()
    print_table(costs, list(costs[0]))
    if not args.quick:
        path = write_rows("rule", [*rows, *({**a, "method": a["variant"], "budget": "ablation"} for a in ablation),
                                   *({**c, "method": "cost", "budget": "-", "script": script} for c in costs)],
                          merge_key=("dataset", "method", "budget"))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
