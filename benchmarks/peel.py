"""PEEL: a RULE model refined per user group, against RULE, uniform allocation and the full model, at the same bytes.

For each dataset (LightGCN teacher and default RULE model as in ``benchmarks/rule.py``, reused from its
folders):

1. PEEL is trained from the RULE run (``pocketrec compress --method peel``) with the options of
   :data:`VARIANTS`: the default, other user-group counts (the default, 8, is the best on validation here:
   ``valid`` in the variants' table), without the per-group rotation, without the controller, without the
   controller's order prior;
2. at each budget (default 2%, 5%, 10%, 25% of the dense fp32 table of propagated item vectors) every method's
   files are chosen on validation and tested once: PEEL one file per user group (the pairs of largest alpha,
   ``pocketrec customize --group g``), RULE one file for everyone (its evolution search), ``uniform`` (every item
   group the same blocks: a narrower model), and the full model. Test Recall@20 / NDCG@20 over all users and
   within each of the default run's user groups. Table bytes are like for like: no file here stores its block
   priority (a resizable PEEL file adds ``2 G N`` bytes; the dynamic-budget rows say how many);
3. a simulated heterogeneous fleet: every test user gets a device budget drawn log-uniformly between 1% and 25%
   of the dense table (``--fleet-seed``), rounded down to the nearest of ``--fleet-levels`` log-spaced levels
   (one search per level, not per user); mean test Recall@20 over users, each at their own level. A user whose
   budget is below one block per item group gets no model and counts as 0 (the same users for every method);
4. dynamic budgets on the real checkpoint: a resizable PEEL file at ``--big`` shrunk on the device (numpy) to
   ``--small``, checked bit-identical (tensors, checksum, scores) against the file built directly, grown back with
   a delta checked identical to the big one; the shrink time (median of 20) and the delta's bytes against a
   full download;
5. training and serving: the device file's numpy scores against the torch model's for users of the group;
6. cost: refinement seconds per group and in all, and the process's peak memory.

Prints Markdown tables and writes ``benchmarks/results/peel.json``::

    python benchmarks/peel.py                                  # ml-100k, the stored results
    python benchmarks/peel.py --datasets ml-100k,beauty
    python benchmarks/peel.py --quick                          # 2 epochs everywhere; writes nothing
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from cf_tables import finished, teacher_run
from rule import as_run, slug, variant_run

from common import print_table, write_rows
from pocketrec.eval.cf_metrics import keep_rows

#: variant -> ``pocketrec compress --method peel`` options; the first is the default model
VARIANTS = {
    "peel": [],
    "peel (1 group)": ["user_groups=1"],
    "peel (2 groups)": ["user_groups=2"],
    "peel (4 groups)": ["user_groups=4"],
    "peel (16 groups)": ["user_groups=16"],
    "peel (no group rotation)": ["rotation=none"],
    "peel (no controller)": ["controller=false"],
    "peel (no order prior)": ["order_prior=0"],
}
COLUMNS = ["dataset", "budget", "method", "table_bytes", "Recall@20 %", "NDCG@20 %"]


def rule_metrics(customizer: Any, choice: Any, data: Any, truth: Any) -> dict[str, float]:
    """Every CF metric of a RULE choice on the test interactions ``truth`` (a subset of users)."""
    from pocketrec.eval.cf_metrics import evaluate_cf

    with customizer.stored_as(choice.dtype), customizer.table.using(choice.mask):
        return evaluate_cf(customizer.model.score_users, truth, data.seen("test"))


def peel_choices(peel: Any, budget: Any) -> dict[int, Any]:
    return {g: peel.choose(budget, g) for g in range(peel.num_groups)}


def peel_metrics(peel: Any, choices: dict[int, Any], data: Any, truth: Any, split: str = "test") -> dict[str, float]:
    """Every CF metric on ``split`` (``truth``: a subset of its users; ``None``: all), each user with the file of
    its group in ``choices`` (``None``: the full model)."""
    arch = None if choices is None else {g: (c.mask, c.dtype) for g, c in choices.items()}
    return peel.state.evaluate(peel.base, data, split, arch, truth=truth)


def by_group(evaluate, groups: list[np.ndarray], truth: Any) -> dict[str, Any]:
    """Overall and per-group Recall@20 / NDCG@20 of ``evaluate(truth_subset)``."""
    overall = evaluate(truth)
    out = {"recall@20": overall["recall@20"], "ndcg@20": overall["ndcg@20"]}
    for g, users in enumerate(groups):
        part = keep_rows(truth, users)
        if part.nnz:
            m = evaluate(part)
            out[f"g{g}_recall@20"], out[f"g{g}_users"] = m["recall@20"], int(m["users"])
    return out


def peel_variant(variant: str, options: list[str], rule: Path, data: Any, root: Path, args, log
                 ) -> tuple[Path, dict[str, Any]]:
    run = root / slug(variant)
    meta = finished(run)
    if meta is None or not (run / "peel.safetensors").exists():
        log(f"{variant}: training")
        extra = ["train.epochs=2"] if args.quick else []
        # its own process, so that the peak memory it records is the refinement's alone
        command = [sys.executable, "-m", "pocketrec", "compress", "--method", "peel", "--dataset", data.name,
                   "--teacher", str(rule), "--out", str(run), *(f"--{o}" for o in [*options, *extra]),
                   "--train.progress=false"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        meta = finished(run)
    else:
        log(f"{variant}: reusing {run}")
    return run, meta


def fleet(data: Any, rule: Any, peel: Any, dense: int, args, log) -> list[dict[str, Any]]:
    """Mean test Recall@20 of a simulated fleet (module docstring, point 3)."""
    truth = data.matrix("test").tocsr()
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    rng = np.random.default_rng(args.fleet_seed)
    budgets = np.exp(rng.uniform(np.log(0.01 * dense), np.log(0.25 * dense), size=len(users)))
    levels = np.geomspace(0.01 * dense, 0.25 * dense, args.fleet_levels).astype(int)
    level_of = np.searchsorted(levels, budgets, side="right") - 1  # the largest level <= the budget
    totals = {"peel": 0.0, "rule": 0.0, "uniform": 0.0}
    unserved = 0
    started = time.perf_counter()
    for index, level in enumerate(levels):
        members = users[level_of == index]
        if not len(members):
            continue
        part = keep_rows(truth, members)
        try:
            choices = {"rule": rule.choose(int(level)), "uniform": rule.choose(int(level), strategy="uniform")}
            peel_chosen = peel_choices(peel, int(level))
        except ValueError:
            unserved += len(members)
            continue
        for method, choice in choices.items():
            totals[method] += rule_metrics(rule, choice, data, part)["recall@20"] * len(members)
        totals["peel"] += peel_metrics(peel, peel_chosen, data, part)["recall@20"] * len(members)
    log(f"fleet: {len(users)} users, {args.fleet_levels} levels, {unserved} below the smallest file, "
        f"{time.perf_counter() - started:.1f} s")
    return [{"dataset": data.name, "method": f"fleet {m}", "budget": "fleet", "recall@20": total / len(users),
             "users": int(len(users)), "unserved": unserved, "levels": args.fleet_levels, "seed": args.fleet_seed}
            for m, total in totals.items()]


def dynamic(data: Any, run: Path, dense: int, args, folder: Path, log) -> dict[str, Any]:
    """Shrink / grow round trips on the real checkpoint (module docstring, point 4) and training vs serving."""
    import torch

    from pocketrec.device.np_resize import make_delta
    from pocketrec.device.runtime import load
    from pocketrec.methods.peel_customize import PeelCustomizer
    from pocketrec.search.budget import parse_budget

    peel = PeelCustomizer(run, dataset=data, resizable=True)
    group = 0
    user = data.users.raw_ids[int(peel.members(group)[0]) - 1]
    big = peel.choose(args.big, group, dtype=args.dynamic_dtype)
    small = peel.choose(args.small, group, dtype=big.dtype)
    folder.mkdir(parents=True, exist_ok=True)
    big_path, small_path = folder / "big.safetensors", folder / "small.safetensors"
    peel.write(big, big_path, users=[user])
    peel.write(small, small_path, users=[user])
    direct = load(small_path)
    target = parse_budget(args.small, dense)
    seconds = []
    for _ in range(20):
        device = load(big_path)
        start = time.perf_counter()
        device.shrink(target)
        seconds.append(time.perf_counter() - start)
    same_tensors = set(device.tensors) == set(direct.tensors) and all(
        np.array_equal(device.tensors[k], direct.tensors[k]) for k in direct.tensors)
    same_checksum = device.manifest.get("checksum") == direct.manifest.get("checksum")
    ids_a, scores_a = device.recommend_user(user, k=50)
    ids_b, scores_b = direct.recommend_user(user, k=50)
    delta = make_delta(big_path, small_path)
    delta_path = delta.save(folder / "grow.delta")
    device.grow(delta)
    grown = load(big_path)
    grown_same = device.manifest.get("checksum") == grown.manifest.get("checksum") and all(
        np.array_equal(device.tensors[k], grown.tensors[k]) for k in grown.tensors)
    # training vs serving: the torch model of the group at the small file's architecture, for this user
    score = peel.state.score_users(peel.base, {g: (small.mask, small.dtype) for g in range(peel.num_groups)})
    with torch.no_grad():
        torch_scores = score(torch.tensor([data.users.encode(user)]))[0].numpy()
    served = [data.vocab.encode(i) for i in ids_b]
    row = {"dataset": data.name, "method": "dynamic", "budget": f"{args.big} -> {args.small}", "group": group,
           "dtype": big.dtype, "big_table_bytes": big.table_bytes, "small_table_bytes": small.table_bytes,
           "big_file_bytes": big.artifact_bytes, "small_file_bytes": small.artifact_bytes,
           "priority_bytes": 2 * peel.table.num_groups * peel.table.num_blocks,
           "shrink_ms_median": round(1000 * float(np.median(seconds)), 3),
           "shrunk_equals_direct": bool(same_tensors and same_checksum),
           "scores_identical": bool(ids_a == ids_b and np.array_equal(scores_a, scores_b)),
           "delta_bytes": int(delta_path.stat().st_size), "grown_equals_big": bool(grown_same),
           "delta_vs_download": round(delta_path.stat().st_size / big.artifact_bytes, 4),
           "serving_max_abs_diff": f"{float(np.abs(torch_scores[served] - scores_b).max()):.2e}"}
    log(f"dynamic: shrink {row['shrink_ms_median']} ms, delta {row['delta_bytes']:,} B vs "
        f"{row['big_file_bytes']:,} B, identical {row['shrunk_equals_direct']}, grown {row['grown_equals_big']}")
    return row


def run_dataset(name: str, args: argparse.Namespace, script: str, log) -> list[dict[str, Any]]:
    from pocketrec.data import load_interactions
    from pocketrec.methods.customize import Customizer
    from pocketrec.methods.peel_customize import PeelCustomizer

    data = load_interactions(name)
    suffix = "-quick" if args.quick else ""
    teacher, _, _ = teacher_run(data, Path(args.teacher_root) / f"{data.name}{suffix}" / "teacher",
                                2 if args.quick else None, log)
    rule_root = Path(args.rule_root) / f"{data.name}{suffix}"
    args.student_epochs = None
    rule_run, rule_meta, _ = variant_run("rule", [], teacher, data, rule_root, args, log)
    root = Path(args.out) / f"{data.name}{suffix}"
    rule = Customizer(rule_run, dataset=data)
    dense = rule.dense_bytes
    truth = data.matrix("test").tocsr()
    rows: list[dict[str, Any]] = []
    default = None
    wanted = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown or wanted[0] != "peel":
        raise SystemExit(f"--variants: names of VARIANTS, the default 'peel' first (unknown: {unknown})")
    for index, (variant, options) in enumerate((v, VARIANTS[v]) for v in wanted):
        if index and not args.ablation:
            break
        run, meta = peel_variant(variant, options, rule_run, data, root, args, log)
        peel = PeelCustomizer(run, dataset=data, resizable=False)
        groups = [peel.members(g) for g in range(peel.num_groups)]
        if index == 0:
            default = (run, peel, groups)
        command = f"pocketrec compress --method peel --teacher {rule_run} --out {run}" + "".join(
            f" --{o}" for o in as_run(options, meta))
        report = meta["peel"]
        row = {"dataset": data.name, "method": variant, "budget": "variant", "options": " ".join(options) or
               "(defaults)", "full_test_recall@20": meta["test"]["recall@20"],
               "refine_seconds": report["refine_seconds"], "peak_rss_bytes": report["peak_rss_bytes"],
               "groups": report["groups"], "command": command, "script": script}
        for budget in args.budgets.split(","):
            try:
                choices = peel_choices(peel, budget)
            except ValueError as err:
                log(f"{variant} @ {budget}: {err}")
                continue
            result = by_group(lambda t, c=choices, p=peel: peel_metrics(p, c, data, t), default[2], truth)
            row[f"test_recall@20 @ {budget}"] = result["recall@20"]
            row[f"valid_recall@20 @ {budget}"] = peel_metrics(peel, choices, data, None, "valid")["recall@20"]
            if index == 0:
                rows.append({"dataset": data.name, "method": "peel", "budget": budget,
                             "table_bytes": max(c.table_bytes for c in choices.values()), "dense_table_bytes": dense,
                             "dtypes": [c.dtype for c in choices.values()],
                             "blocks": [int(c.mask.sum()) for c in choices.values()],
                             "valid_recall@20": [c.verified for c in choices.values()], **result,
                             "command": f"for g in $(seq 0 {peel.num_groups - 1}); do pocketrec customize {run} "
                                        f"--budget {budget} --group $g --no-resizable -o g$g.safetensors; done",
                             "script": script})
            log(f"{variant} @ {budget}: test R@20 {100 * result['recall@20']:.2f}")
        valid = [v for k, v in row.items() if k.startswith("valid_recall@20 @ ")]
        row["valid_mean_over_budgets"] = float(np.mean(valid)) if valid else None
        rows.append(row)
    run, peel, groups = default
    full_rule = by_group(lambda t: rule_metrics(rule, _full_choice(rule), data, t), groups, truth)
    rows.append({"dataset": data.name, "method": "rule (full model)", "budget": "1x",
                 "table_bytes": rule.table.architecture_bytes(np.ones_like(rule.table.architecture())),
                 "dense_table_bytes": dense, **full_rule, "script": script})
    rows.append({"dataset": data.name, "method": "peel (full model)", "budget": "1x",
                 "table_bytes": rule.table.architecture_bytes(np.ones_like(rule.table.architecture())),
                 "dense_table_bytes": dense, **by_group(lambda t: peel_metrics(peel, None, data, t), groups, truth),
                 "script": script})
    for budget in args.budgets.split(","):
        for strategy in ("evolution", "uniform"):
            try:
                choice = rule.choose(budget, strategy=strategy)
            except ValueError as err:
                log(f"rule {strategy} @ {budget}: {err}")
                continue
            result = by_group(lambda t, c=choice: rule_metrics(rule, c, data, t), groups, truth)
            rows.append({"dataset": data.name, "method": "rule" if strategy == "evolution" else "uniform",
                         "budget": budget, "table_bytes": choice.table_bytes, "dense_table_bytes": dense,
                         "dtypes": [choice.dtype], "blocks": [int(choice.mask.sum())],
                         "valid_recall@20": [choice.verified], **result,
                         "command": f"pocketrec customize {rule_run} --budget {budget} --strategy {strategy} "
                                    f"-o {strategy}-{budget}.safetensors",
                         "script": script})
            log(f"{strategy} @ {budget}: test R@20 {100 * result['recall@20']:.2f}")
    rows += fleet(data, rule, peel, dense, args, log)
    rows.append({**dynamic(data, run, dense, args, root / "dynamic", log), "script": script})
    return rows


def _full_choice(rule: Any) -> Any:
    from pocketrec.methods.customize import Choice

    mask = np.ones_like(rule.table.architecture())
    return Choice("1x", rule.dense_bytes, "full", "float32", mask, rule.table.architecture_bytes(mask), None, None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="ml-100k")
    parser.add_argument("--budgets", default="2%,5%,10%,25%")
    parser.add_argument("--out", default="runs/peel-bench", help="PEEL run folders (reused)")
    parser.add_argument("--rule-root", default="runs/rule-bench", help="benchmarks/rule.py's runs (reused)")
    parser.add_argument("--teacher-root", default="runs/cf-tables-full", help="the LightGCN teachers (reused)")
    parser.add_argument("--fleet-levels", type=int, default=24)
    parser.add_argument("--fleet-seed", type=int, default=0)
    parser.add_argument("--big", default="25%", help="the resizable file's budget (dynamic budgets)")
    parser.add_argument("--small", default="5%", help="the budget it shrinks to")
    parser.add_argument("--dynamic-dtype", default="int8",
                        help="the resizable file's precision (a shrink keeps it: int8 reaches the smallest budgets)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false")
    parser.add_argument("--variants", default="", help="comma-separated names of VARIANTS to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="2 epochs everywhere (a smoke run); writes nothing")
    args = parser.parse_args(argv)
    script = shlex.join(["python", "benchmarks/peel.py", *(sys.argv[1:] if argv is None else argv)])

    def log(line: str) -> None:
        print(f"[peel] {line}", file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    for name in args.datasets.split(","):
        rows += run_dataset(name.strip(), args, script, log)
    budgets = args.budgets.split(",")
    main_rows = [r for r in rows if r["budget"] in (*budgets, "1x")]
    group_columns = sorted({k for r in main_rows for k in r if k.startswith("g") and k.endswith("_recall@20")})
    print_table([{**r, "Recall@20 %": 100 * r["recall@20"], "NDCG@20 %": 100 * r["ndcg@20"],
                  **{k: 100 * r[k] for k in group_columns if k in r}} for r in main_rows], COLUMNS + group_columns)
    print()
    variants = [r for r in rows if r["budget"] == "variant"]
    print_table([{**v, "valid (mean over budgets) %": 100 * (v["valid_mean_over_budgets"] or 0.0),
                  **{b: 100 * v[f"test_recall@20 @ {b}"] for b in budgets if f"test_recall@20 @ {b}" in v}}
                 for v in variants],
                ["dataset", "method", "valid (mean over budgets) %", *budgets, "full_test_recall@20",
                 "refine_seconds", "peak_rss_bytes"])
    print()
    print_table([{**r, "Recall@20 %": 100 * r["recall@20"]} for r in rows if r["budget"] == "fleet"],
                ["dataset", "method", "Recall@20 %", "users", "unserved", "levels"])
    print()
    dyn = [r for r in rows if r["method"] == "dynamic"]
    print_table(dyn, [k for k in dyn[0] if k not in ("script",)])
    if not args.quick:
        path = write_rows("peel", rows, merge_key=("dataset", "method", "budget"))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
