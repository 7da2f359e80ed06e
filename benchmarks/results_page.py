"""Render the results pages from ``benchmarks/results/*.json``: nothing in them is typed by hand.

Writes ``docs/results.md`` (every results file, one section each) and the generated blocks of README.md and
``docs/**/*.md``: the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` is replaced
by the block ``NAME`` of :data:`BLOCKS` (``headline``: the best method per budget on each dataset).

    python benchmarks/results_page.py            # rewrite the pages
    python benchmarks/results_page.py --check    # exit 1 if a committed page differs (tests/test_docs.py)
    python benchmarks/results_page.py --plot     # also redraw docs/img/accuracy-vs-bytes.png (matplotlib)

Every row names the command that made it: the row's own ``command`` field (compress.py, teacher.py and
cf_tables.py store it), else the recipe in ``benchmarks/recipes/`` that produces it, else the command that
:data:`FILE_COMMANDS` gives for its file (the rows made before the scripts stored theirs). A row of a known
file without a command is an error. A new ``benchmarks/results/NAME.json`` is shown as a generic table
(its ``command`` field, or "not recorded") until it gets an entry in :data:`RENDERERS`: a function
``rows, page -> markdown``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
RECIPES = HERE / "recipes"
PAGE = ROOT / "docs" / "results.md"
PLOT = ROOT / "docs" / "img" / "accuracy-vs-bytes.png"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
Row = dict[str, Any]

# ------------------------------------------------------------------------------------------------ formatting


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def num(x: float | int | None) -> str:
    return "-" if x is None else f"{int(x):,}"


def ratio(x: float | None) -> str:
    return "-" if not x else f"{x:.1f}x"


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def share(part: float | None, whole: float | None) -> str:
    return "-" if part is None or not whole else f"{100 * part / whole:.1f}%"


class Table:
    """A Markdown table whose rows each carry a command: one command for all is said above the table, several
    get a ``cmd`` column of ``[n]`` and a numbered list below it."""

    def __init__(self, columns: list[str]):
        self.columns, self.rows, self.commands = columns, [], []

    def add(self, cells: list[str], command: str | None) -> None:
        """A row and its command (None: a row that states no figure, e.g. "not measured")."""
        self.rows.append(cells)
        self.commands.append(command)

    def render(self) -> str:
        if not self.rows:
            return "_No rows._\n"
        distinct = list(dict.fromkeys(c for c in self.commands if c))
        cols, rows, out = self.columns, self.rows, []
        listed = bool(distinct) and not (len(distinct) == 1 and all(self.commands))
        if not distinct:
            out.append("Command not recorded.\n")
        elif not listed:
            out.append(f"Made by `{distinct[0]}`.\n")
        else:
            cols = [*cols, "cmd"]
            rows = [[*cells, f"[{distinct.index(c) + 1}]" if c else "-"]
                    for cells, c in zip(rows, self.commands, strict=True)]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in rows]
        if listed:
            out.append("")
            out += [f"{i}. `{c}`" for i, c in enumerate(distinct, 1)]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ commands

#: the bench run of docs/tmall-bench (its report states this command)
BENCH_TMALL = ("pocketrec bench --dataset tmall --budgets 30x --teacher runs/bench-norm/teacher-tmall/best "
               "--out runs/bench-tmall --student.epochs=2 --student.patience=1 --teacher.train.epochs=3 "
               "--teacher.train.patience=1")
_D = "python benchmarks/device.py"
#: device.json rows, by (dataset, method, table bytes): the commands the work log recorded for them
DEVICE_COMMANDS = {
    ("tmall", "teacher"): f"{_D} runs/bench-norm/teacher-tmall/best --repeats 50",
    ("tmall", "eodrec"): f"{_D} runs/bench-tmall/eodrec-30x/best --repeats 50",
    ("tmall", "odrec"): f"{_D} runs/bench-tmall/odrec-30x/best --repeats 50",
    ("diginetica", "eodrec-d512-int8"): f"{_D} runs/bench/eodrec-d512-int8-diginetica/best --label eodrec-d512-int8 "
                                        "--no-onnx --repeats 100",
    ("diginetica", "teacher-d512"): f"{_D} runs/bench-d512/teacher-d512-lr3e4-diginetica/best --label teacher-d512 "
                                    "--no-onnx --repeats 100",
}


def device_command(row: Row) -> str:
    key = (row["dataset"], row["method"])
    if key in DEVICE_COMMANDS:
        return DEVICE_COMMANDS[key]
    if row["dataset"] == "synthetic-1000000-d256":
        return (f"{_D} --synthetic-items 1000000 --dim 256 --kind {row['table_kind']}"
                f"{' --table-ratio 64' if row['table_kind'] != 'dense' else ''} --no-onnx --repeats 20")
    if row["dataset"] == "synthetic-20000":  # the script's first version: its table sizes were not today's
        return f"{_D} --synthetic-items 20000 --dim 32 --kind {row['table_kind']} --repeats 50"
    raise KeyError(key)


def peer_command(row: Row) -> str:
    if row["dataset"] == "beauty":
        return 'python benchmarks/lightgcn_peer.py --datasets beauty --epochs 10 --peer-args="--time-limit 480"'
    return f"python benchmarks/lightgcn_peer.py --datasets {row['dataset']}"


#: commands of the rows that do not store theirs, by results file
FILE_COMMANDS: dict[str, Callable[[Row], str]] = {
    "bench-tmall": lambda r: BENCH_TMALL,
    "device": device_command,
    "lightgcn_peer": peer_command,
    "teacher_speed": lambda r: "make recbole-venv && python benchmarks/teacher_speed.py",
    "scoring_speed": lambda r: "python benchmarks/scoring_speed.py --dim 128",
    "scale": lambda r: "python benchmarks/scoring_speed.py --items 10000,40727,100000,1000000,10000000 --name scale",
    "codebook_rows": lambda r: "python benchmarks/codebook_rows.py",
    "codebook_precision": lambda r: f"python benchmarks/codebook_precision.py --teacher {r['teacher']} "
                                    f"--ratio {r['ratio_target']:g}",
    "tt_order": lambda r: f"python benchmarks/tt_order.py --teachers {r['teacher']} --ratio 30",
    "rule": lambda r: r.get("script") or f"python benchmarks/rule.py --datasets {r['dataset']}",
    "peel": lambda r: r.get("script") or f"python benchmarks/peel.py --datasets {r['dataset']}",
}


def load_recipes() -> tuple[dict[tuple, str], dict[str, list[str]]]:
    """(results file, dataset, row method, teacher or None) -> ``python benchmarks/SCRIPT --recipe NAME``, and
    each such command's overrides."""
    import yaml

    sys.path.insert(0, str(HERE))
    from compress import VARIANTS

    made: dict[tuple, str] = {}
    overrides: dict[str, list[str]] = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        args, script = recipe.get("args") or {}, recipe["script"]
        command = f"python benchmarks/{script} --recipe {path.stem}"
        overrides[command] = [str(o) for o in recipe.get("overrides") or []]
        datasets = str(args.get("datasets", "tmall,diginetica")).split(",")
        if script == "compress.py":
            method = args.get("method", "odrec")
            variants = str(args.get("variants") or ",".join(VARIANTS[method])).split(",")
            teacher = args.get("teacher", "runs/bench/teacher-{dataset}/best")
            for ds in datasets:
                for v in variants:
                    made[(method, ds, v + args.get("tag", ""), teacher.format(dataset=ds))] = command
        elif script == "teacher.py":
            for ds in datasets:
                made[("teacher", ds, args.get("label", "teacher"), None)] = command
    return made, overrides


class Page:
    """What the renderers share: every results file, the recipes, and each row's command."""

    def __init__(self, results: dict[str, list[Row]]):
        self.results = results
        self.recipes, self.recipe_overrides = load_recipes()

    def rows(self, name: str) -> list[Row]:
        return self.results.get(name, [])

    def command(self, name: str, row: Row) -> str:
        if row.get("command"):
            return row["command"]
        for teacher in (row.get("teacher"), None):
            key = (name, row.get("dataset"), row.get("method"), teacher)
            if key in self.recipes:
                return self.recipes[key]
        if name in FILE_COMMANDS:
            return FILE_COMMANDS[name](row)
        raise ValueError(f"results/{name}.json: no command for row {row.get('dataset')} / {row.get('method')} "
                         "(store `command` in the row, add a recipe, or an entry in FILE_COMMANDS)")

    def overrides(self, name: str, row: Row) -> list[str]:
        """The config overrides a row was made with: its recipe's, then those stored in the row (later wins)."""
        return [*self.recipe_overrides.get(self.command(name, row), []), *(row.get("overrides") or [])]

    # ---- the dense yardstick and the candidates of the headline

    def teachers(self) -> list[Row]:
        """Every dense teacher, as ``{dataset, name, table_bytes, recall@20, ..., file, row}``."""
        out = [dict(r, name=r["method"], file="teacher") for r in self.rows("teacher")]
        out += [dict(r, name=r["method"], file=name) for name in ("cf_tables", "rule") for r in self.rows(name)
                if r["method"].endswith("(teacher)")]
        return out

    def best_dense(self) -> dict[str, Row]:
        """Per dataset, the most accurate dense teacher (Recall@20): what every byte count is measured against."""
        best: dict[str, Row] = {}
        for r in self.teachers():
            if r.get("recall@20") is not None and (r["dataset"] not in best
                                                   or r["recall@20"] > best[r["dataset"]]["recall@20"]):
                best[r["dataset"]] = r
        return best

    def artifact_bytes(self, dataset: str, method: str, table_bytes: int, own: int | None) -> int | None:
        if own:
            return own
        for r in self.rows("device"):
            if (r["dataset"], r["method"], r["table_bytes"]) == (dataset, method, table_bytes):
                return r["artifact_bytes"]
        return None

    def candidates(self) -> list[Row]:
        """Every compressed model with test accuracy, tagged ``role``: method, baseline or ablation."""
        out = []
        for name in ("odrec", "eodrec", "bench-tmall", "cf_tables", "rule", "peel"):
            for r in self.rows(name):
                if r["method"] == "teacher" or r["method"].endswith("(teacher)") or r.get("recall@20") is None \
                        or r.get("table_bytes") is None:
                    continue
                role = RULE_ROLES.get(r["method"]) or role_of(r["method"])
                out.append(dict(r, file=name, role=role, command=self.command(name, r),
                                artifact_bytes=self.artifact_bytes(r["dataset"], r["method"], r["table_bytes"],
                                                                   r.get("artifact_bytes"))))
        return out


def base_name(method: str) -> str:
    """The registered method or benchmark variant a row name starts with (``eodrec-d128-m46h`` -> ``eodrec``)."""
    sys.path.insert(0, str(HERE))
    from compress import VARIANTS

    from pocketrec.methods.registry import METHODS

    known = sorted({*METHODS, *(v for vs in VARIANTS.values() for v in vs)}, key=len, reverse=True)
    return next((k for k in known if method == k or method.startswith(k + "-")), method)


def role_of(method: str) -> str:
    """``method`` (a registered student), ``baseline`` (trained from scratch or post hoc) or ``ablation``."""
    from pocketrec.methods.registry import METHODS

    base = base_name(method)
    if base not in METHODS:
        return "ablation"
    return "method" if METHODS[base].kind == "student" else "baseline"


# ------------------------------------------------------------------------------------------------ headline

#: the budgets of the headline: at most this share of the best dense model's item table
BUDGETS = (0.10, 0.03)


def headline_rows(page: Page) -> list[tuple[str, str, Row | None]]:
    """(budget label, role, row) per dataset: the dense model, then per budget the best method and baseline."""
    dense = page.best_dense()
    cands = page.candidates()
    out = []
    for dataset in sorted({c["dataset"] for c in cands} & set(dense), key=lambda d: (d == "ml-100k", d)):
        base = dense[dataset]
        out.append((dataset, "100%", "dense", base))
        for budget in BUDGETS:
            fits = [c for c in cands if c["dataset"] == dataset and c["table_bytes"] <= budget * base["table_bytes"]]
            for role in ("method", "baseline"):
                pool = [c for c in fits if c["role"] == role]
                best = max(pool, key=lambda c: (c["recall@20"], c.get("ndcg@20") or 0), default=None)
                out.append((dataset, f"≤ {100 * budget:g}%", role, best))
    return out


def render_headline(page: Page) -> str:
    table = Table(["dataset", "budget", "", "model", "table bytes", "% of dense", "artifact bytes", "Recall@20 %",
                   "NDCG@20 %", "MRR@20 %"])
    dense = page.best_dense()
    for dataset, budget, role, r in headline_rows(page):
        if r is None:
            table.add([dataset, budget, role, "not measured", "", "", "", "", "", ""], None)
            continue
        base = dense[dataset]
        name = r["name"] if role == "dense" else f"**{r['method']}**" if role == "method" else r["method"]
        command = page.command(r["file"], r) if role == "dense" else r["command"]
        table.add([dataset, budget, role, name, num(r["table_bytes"]), share(r["table_bytes"], base["table_bytes"]),
                   num(r.get("artifact_bytes")), pct(r["recall@20"]), pct(r.get("ndcg@20")), pct(r.get("mrr@20"))],
                  command)
    return table.render()


# ------------------------------------------------------------------------------------------------ sections


def teacher_of(page: Page, name: str, row: Row) -> Row | None:
    return next((t for t in page.rows(name) if t["method"] == "teacher" and t["dataset"] == row["dataset"]
                 and t.get("teacher") == row.get("teacher")), None)


def student_table(page: Page, name: str, rows: list[Row], layout: Callable[[Row, list[str]], str]) -> str:
    dense = page.best_dense()
    table = Table(["dataset", "teacher", "row", "layout", "table bytes", "ratio", "% of best dense", "Recall@20 %",
                   "MRR@20 %", "NDCG@20 %", "% of teacher R / MRR", "best epoch", "epoch s"])
    for r in rows:
        t = teacher_of(page, name, r) or {}
        label = r.get("teacher", "").split("/")[-2] if r.get("teacher") else "-"
        base = dense.get(r["dataset"], {}).get("table_bytes")
        table.add([r["dataset"], label, r["method"], layout(r, page.overrides(name, r)), num(r["table_bytes"]),
                   ratio(r.get("ratio")),
                   share(r["table_bytes"], base), pct(r["recall@20"]), pct(r["mrr@20"]), pct(r["ndcg@20"]),
                   f"{share(r['recall@20'], t.get('recall@20'))} / {share(r['mrr@20'], t.get('mrr@20'))}",
                   r.get("best_epoch", "-"), secs(r.get("epoch_seconds"))], page.command(name, r))
    return table.render()


def students(page: Page, name: str, keep: Callable[[Row], bool] = lambda r: True) -> list[Row]:
    return [r for r in page.rows(name) if r["method"] != "teacher" and keep(r)]


def stored_dtype(r: Row, overrides: list[str]) -> str:
    """The table's stored precision where the row or its command records it ("" otherwise)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("--dtype=")]
    return r.get("dtype") or (given[-1] if given else "")


def odrec_layout(r: Row, overrides: list[str]) -> str:
    if "tt_rank" in r:
        dtype = stored_dtype(r, overrides)
        return f"TT t={r.get('t')}, rank {r['tt_rank']}" + (f", {dtype}" if dtype else "")
    return f"dense d={r['dim']}" if "dim" in r else "-"


def eodrec_layout(r: Row, overrides: list[str]) -> str:
    if "M" in r:
        dtype = stored_dtype(r, overrides)
        return f"{r['M']} x {r['K']}" + (f", {dtype}" if dtype else "") + f", codes {r.get('codes', '-')}"
    return f"dense d={r['dim']}" if "dim" in r else "-"


def render_teacher(page: Page, rows: list[Row]) -> str:
    sys.path.insert(0, str(HERE))
    from teacher import REFERENCE

    table = Table(["dataset", "row", "d", "table bytes", "Recall@20 %", "MRR@20 %", "NDCG@20 %", "best epoch / run",
                   "epoch s", "peak RSS MiB"])
    for r in sorted(rows, key=lambda r: (r["dataset"], -r["recall@20"])):
        dim = (r.get("config") or {}).get("encoder", {}).get("dim", "-")
        table.add([r["dataset"], r["method"], dim, num(r["table_bytes"]), pct(r["recall@20"]), pct(r["mrr@20"]),
                   pct(r["ndcg@20"]), f"{r['best_epoch']} / {r['epochs_run']}", secs(r["epoch_seconds"]),
                   num(r["peak_rss_mib"])], page.command("teacher", r))
    refs = "; ".join(f"{ds}: " + ", ".join(f"{k} {p} / {m}" for k, (p, m) in sys_.items())
                     for ds, sys_ in REFERENCE.items())
    return (table.render() + f"\nPublished figures on the same splits (Recall@20 / MRR@20 %, quoted from the papers, "
            f"not run here; `REFERENCE` in benchmarks/teacher.py): {refs}.\n")


def render_odrec(page: Page, rows: list[Row]) -> str:
    return student_table(page, "odrec", students(page, "odrec"), odrec_layout)


def render_eodrec(page: Page, rows: list[Row]) -> str:
    return student_table(page, "eodrec", students(page, "eodrec"), eodrec_layout)


def render_bench(page: Page, rows: list[Row]) -> str:
    dense = page.best_dense()
    table = Table(["dataset", "method", "budget", "table bytes", "artifact bytes", "ratio", "% of best dense",
                   "Recall@20 %", "MRR@20 %", "NDCG@20 %", "latency ms", "epoch s"])
    for r in rows:
        base = dense.get(r["dataset"], {}).get("table_bytes")
        table.add([r["dataset"], r["method"], r["budget"], num(r["table_bytes"]), num(r["artifact_bytes"]),
                   ratio(r["ratio"]), share(r["table_bytes"], base), pct(r["recall@20"]), pct(r["mrr@20"]),
                   pct(r["ndcg@20"]), f"{r['latency_ms']:.2f}", secs(r.get("epoch_seconds"))],
                  page.command("bench-tmall", r))
    return table.render()


def render_cf(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "method", "budget", "table bytes", "artifact bytes", "ratio", "Recall@20 %",
                   "NDCG@20 %", "% of teacher R / NDCG", "best epoch"])
    teacher = {r["dataset"]: r for r in rows if r["method"].endswith("(teacher)")}
    for r in rows:
        t = teacher.get(r["dataset"], {})
        table.add([r["dataset"], r["method"], r["budget"], num(r["table_bytes"]), num(r.get("artifact_bytes")),
                   ratio(r["ratio"]), pct(r["recall@20"]), pct(r["ndcg@20"]),
                   f"{share(r['recall@20'], t.get('recall@20'))} / {share(r['ndcg@20'], t.get('ndcg@20'))}",
                   r.get("best_epoch") or "-"], page.command("cf_tables", r))
    return table.render()


#: RULE's search against the allocations of the same harness (``benchmarks/rule.py``): those are baselines
RULE_ROLES = {"rule-uniform": "baseline", "rule-popularity": "baseline", "rule-random": "baseline"}


def rule_command(rows: list[Row]) -> str | None:
    return next((r["script"] for r in rows if r.get("script")), None)


def render_rule(page: Page, rows: list[Row]) -> str:
    """RULE at each budget against its harness's allocations and the other tables at the same bytes."""
    models = [r for r in rows if r.get("recall@20") is not None]
    dense = page.best_dense()
    table = Table(["dataset", "budget", "method", "table bytes", "% of dense", "artifact bytes", "Recall@20 %",
                   "NDCG@20 %", "valid R@20 %", "dtype / blocks", "seconds"])
    order = {b: i for i, b in enumerate(["1x", "2%", "5%", "10%", "25%"])}
    for r in sorted(models, key=lambda r: (r["dataset"], order.get(r["budget"], 99))):
        base = dense.get(r["dataset"], {}).get("table_bytes")
        layout = f"{r['dtype']} / {r['blocks']}" if r.get("blocks") else "-"
        table.add([r["dataset"], r["budget"], f"**{r['method']}**" if r["method"] == "rule" else r["method"],
                   num(r["table_bytes"]), share(r["table_bytes"], base), num(r.get("artifact_bytes")),
                   pct(r["recall@20"]), pct(r["ndcg@20"]), pct(r.get("valid_recall@20")), layout,
                   secs(r.get("seconds"))], r.get("script") or page.command("rule", r))
    return table.render()


def render_rule_ablation(page: Page, rows: list[Row]) -> str:
    ablation = [r for r in rows if r.get("budget") == "ablation"]
    budgets = sorted({k.split(" @ ")[1] for r in ablation for k in r if k.startswith("test_recall@20 @ ")},
                     key=lambda b: float(b.rstrip("%")))
    table = Table(["dataset", "variant", "options", "full model R@20 %", *(f"{b} R@20 %" for b in budgets),
                   "estimator tau"])
    for r in ablation:
        table.add([r["dataset"], r["variant"], f"`{r['options']}`", pct(r["full_test_recall@20"]),
                   *(pct(r.get(f"test_recall@20 @ {b}")) for b in budgets), f"{r['estimator_tau']:.2f}"],
                  rule_command(rows))
    return table.render()


def render_rule_cost(page: Page, rows: list[Row]) -> str:
    cost = [r for r in rows if r.get("method") == "cost"]
    table = Table(["dataset", "training (s)", "labelled archs", "label users", "labelling (s)", "estimator fit (s)",
                   "tau (ridge / NFM)", "tau same size (ridge / NFM)", "budgets in sweep", "sweep (s)",
                   "per budget mean / max (s)"])
    for r in cost:
        table.add([r["dataset"], secs(r.get("train_seconds")), r["archs"], r["label_users"], secs(r["label_seconds"]),
                   secs(r["fit_seconds"]), f"{r['tau_ridge_all']:.2f} / {r['tau_nfm_all']:.2f}",
                   f"{r['tau_ridge_same_size']:.2f} / {r['tau_nfm_same_size']:.2f}", r["curve_budgets"],
                   secs(r["curve_seconds"]), f"{r['per_budget_mean_seconds']:.2f} / {r['per_budget_max_seconds']:.2f}"],
                  rule_command(rows))
    return table.render()


def render_rule_all(page: Page, rows: list[Row]) -> str:
    return "\n".join([render_rule(page, rows), "Ablations (test Recall@20 of each variant's search at each budget):",
                      "", render_rule_ablation(page, rows), "Cost:", "", render_rule_cost(page, rows)])


def peel_command(rows: list[Row], dataset: str | None = None) -> str | None:
    return next((r["script"] for r in rows if r.get("script") and dataset in (None, r["dataset"])), None)


def render_peel(page: Page, rows: list[Row]) -> str:
    """PEEL (one file per user group) against RULE's search, uniform allocation and the full model at each budget,
    over all users and within each user group."""
    dense = page.best_dense()
    table = Table(["dataset", "budget", "method", "table bytes", "% of dense", "Recall@20 %", "NDCG@20 %",
                   "Recall@20 % per user group", "dtype(s)"])
    order = {b: i for i, b in enumerate(["1x", "2%", "5%", "10%", "25%"])}
    models = [r for r in rows if r.get("table_bytes") is not None and r.get("recall@20") is not None]
    for r in sorted(models, key=lambda r: (r["dataset"], order.get(r["budget"], 99), r["method"] != "peel")):
        base = dense.get(r["dataset"], {}).get("table_bytes")
        groups = sorted((k for k in r if k.startswith("g") and k.endswith("_recall@20")),
                        key=lambda k: int(k[1:].split("_")[0]))
        table.add([r["dataset"], r["budget"], f"**{r['method']}**" if r["method"] == "peel" else r["method"],
                   num(r["table_bytes"]), share(r["table_bytes"], base), pct(r["recall@20"]), pct(r["ndcg@20"]),
                   " / ".join(pct(r[k]) for k in groups), ", ".join(dict.fromkeys(r.get("dtypes") or [])) or "-"],
                  r.get("script"))
    return table.render()


def render_peel_variants(page: Page, rows: list[Row]) -> str:
    variants = [r for r in rows if r.get("budget") == "variant"]
    budgets = sorted({k.split(" @ ")[1] for r in variants for k in r if k.startswith("test_recall@20 @ ")},
                     key=lambda b: float(b.rstrip("%")))
    table = Table(["dataset", "variant", "options", "valid R@20 % (mean over budgets)",
                   *(f"{b} R@20 %" for b in budgets), "full model R@20 %", "refinement (s)", "peak RSS MiB"])
    for r in variants:
        table.add([r["dataset"], r["method"], f"`{r['options']}`", pct(r.get("valid_mean_over_budgets")),
                   *(pct(r.get(f"test_recall@20 @ {b}")) for b in budgets), pct(r["full_test_recall@20"]),
                   secs(r["refine_seconds"]), num(round(r["peak_rss_bytes"] / 2**20))], r.get("script"))
    return table.render()


def render_peel_groups(page: Page, rows: list[Row]) -> str:
    """The default run's refinement, group by group: who, what it cost, what it changed on validation."""
    table = Table(["dataset", "user group", "users", "interactions", "valid before %", "valid after %", "refined",
                   "epochs", "seconds"])
    for r in rows:
        if r.get("budget") != "variant" or r["method"] != "peel":
            continue
        for g in r["groups"]:
            table.add([r["dataset"], g["group"], num(g["users"]), num(g["interactions"]), pct(g["valid_before"]),
                       pct(g["valid_after"]), "yes" if g["refined"] else "no (RULE's kept)", g["epochs"],
                       secs(g["seconds"])], r.get("script"))
    return table.render()


def render_peel_fleet(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "method", "mean Recall@20 %", "test users", "below the smallest file", "levels",
                   "seed"])
    for r in rows:
        if r.get("budget") == "fleet":
            table.add([r["dataset"], r["method"].removeprefix("fleet "), pct(r["recall@20"]), num(r["users"]),
                       num(r["unserved"]), r["levels"], r["seed"]], r.get("script"))
    return table.render()


def render_peel_dynamic(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "resize", "dtype", "table bytes big / small", "file bytes big / small",
                   "shrink (ms, median)", "shrunk = built directly", "same top-50 scores", "delta bytes",
                   "delta / full download", "grown = big", "torch vs numpy max |diff|"])
    yes = {True: "yes", False: "**no**"}
    for r in rows:
        if r.get("method") == "dynamic":
            table.add([r["dataset"], r["budget"], r["dtype"], f"{num(r['big_table_bytes'])} / "
                       f"{num(r['small_table_bytes'])}", f"{num(r['big_file_bytes'])} / {num(r['small_file_bytes'])}",
                       f"{r['shrink_ms_median']:.2f}", yes[r["shrunk_equals_direct"]], yes[r["scores_identical"]],
                       num(r["delta_bytes"]), f"{100 * r['delta_vs_download']:.0f}%", yes[r["grown_equals_big"]],
                       r["serving_max_abs_diff"]], r.get("script"))
    return table.render()


def render_peel_all(page: Page, rows: list[Row]) -> str:
    return "\n".join([render_peel(page, rows), "Variants (test Recall@20 over all users at each budget):", "",
                      render_peel_variants(page, rows), "Refinement of the default run, per user group:", "",
                      render_peel_groups(page, rows), "A simulated fleet:", "", render_peel_fleet(page, rows),
                      "Dynamic budgets on the device:", "", render_peel_dynamic(page, rows)])


def render_quantizers(page: Page, rows: list[Row]) -> str:
    """Each quantizer in EODRec's layout for a budget: code error, zero-shot validation, distilled test."""
    table = Table(["dataset", "budget", "codes", "table bytes", "% of dense", "code error", "fit s",
                   "zero-shot valid R@20 / MRR@20 %", "distilled test R@20 / MRR@20 %"])
    order = {"zero-shot": 0, "distilled": 1}
    for r in sorted(rows, key=lambda r: (r["dataset"], r["budget"] != "1x", r["budget"], order[r["phase"]])):
        zero = f"{pct(r['valid_recall@20'])} / {pct(r['valid_mrr@20'])}" if "valid_recall@20" in r else ""
        test = f"{pct(r['recall@20'])} / {pct(r['mrr@20'])}" if "recall@20" in r else ""
        table.add([r["dataset"], r["budget"], f"{r['layout']} ({r['quantizer']})", num(r["table_bytes"]),
                   share(r["table_bytes"], r["dense_table_bytes"]), f"{r['code_error']:.4f}",
                   secs(r.get("fit_seconds")) if r.get("fit_seconds") is not None else "", zero, test],
                  r.get("command"))
    return table.render()


def render_fast_scan(page: Page, rows: list[Row]) -> str:
    """Top-k of the whole catalogue per runtime against the bandwidth floor, from benchmarks/fast_scan.py."""
    runtimes = [r for r in ("dense", "numpy (32k LUTs)", "numpy", "fast-scan", "onnxruntime")
                if any(f"{r} p50 ms" in row for row in rows)]
    table = Table(["items", "d", "codes", "table bytes", "floor ms", *[f"{r} ms" for r in runtimes],
                   "fast-scan / floor", "same top-k"])
    for r in sorted(rows, key=lambda r: (r["dim"], r["items"])):
        same = all(v for k, v in r.items() if k.endswith("same top-k"))
        table.add([num(r["items"]), r["dim"], r["layout"], num(r["table_bytes"]), f"{r['floor_ms']:.3f}",
                   *[f"{r[f'{x} p50 ms']:.2f}" if f"{x} p50 ms" in r else "-" for x in runtimes],
                   f"{r['fast-scan / floor']:.1f}x" if "fast-scan / floor" in r else "-", "yes" if same else "NO"],
                  r.get("command"))
    return table.render()


def render_fleet(page: Page, rows: list[Row]) -> str:
    """The fleet service: first builds alone, then the load (cached and new files), from benchmarks/fleet_load.py."""
    table = Table(["dataset", "measure", "requests", "p50 ms", "p99 / max ms", "requests/s", "cache hit rate",
                   "builds", "errors", "server peak MiB"])
    for r in sorted(rows, key=lambda r: (r["dataset"], r["method"])):
        if r["method"] == "fleet-load":
            table.add([r["dataset"], f"cached files, {r['clients']} clients", num(r["requests"]),
                       f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p99']:.1f}", f"{r['rps']:.0f}",
                       f"{100 * r['hit_rate']:.1f}%", num(int(r["builds"])), num(r["errors"]),
                       num(round(r["server_peak_rss_mib"]))], r.get("command"))
            table.add([r["dataset"], "new files under that load (queueing included)", "", num(r["uncached_ms_p50"]),
                       num(r["uncached_ms_p99"]), "", "", "", "", ""], r.get("command"))
        else:
            model, _, cached = r["method"].removeprefix("fleet-").partition("-")
            what = f"a cached {model.upper()} file, one client" if cached else f"a new {model.upper()} file, alone"
            table.add([r["dataset"], what,
                       num(r["requests"]), f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_max']:.1f}", "", "", "", "",
                       ""], r.get("command"))
    return table.render()


def render_peer(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "system", "Recall@20 %", "NDCG@20 %", "best epoch / run", "epoch s (mean)",
                   "peak RSS MiB"])
    for r in rows:
        table.add([r["dataset"], r["system"], pct(r["test"]["recall@20"]), pct(r["test"]["ndcg@20"]),
                   f"{r['best_epoch']} / {r['epochs_trained']}", secs(r["epoch_seconds"]), num(r["peak_rss_mib"])],
                  page.command("lightgcn_peer", r))
    return table.render()


def render_teacher_speed(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "system", "epoch s", "peak RSS MiB", "batch", "layers", "d", "threads"])
    for r in rows:
        table.add([r["dataset"], r["system"], secs(r["epoch_seconds"]), num(r["peak_rss_mib"]), r["batch"],
                   r["layers"], r["dim"], r["threads"]], page.command("teacher_speed", r))
    return table.render()


def render_device(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "model", "table", "items", "d", "table bytes", "dense table bytes", "artifact bytes",
                   "runtime", "p50 ms", "p95 ms", "peak RSS +MiB", "resident +MiB"])
    for r in rows:
        table.add([r["dataset"], r["method"], r["table_kind"], num(r["num_items"]), r["dim"], num(r["table_bytes"]),
                   num(r["dense_table_bytes"]), num(r["artifact_bytes"]), r["runtime"], f"{r['latency_ms_p50']:.2f}",
                   f"{r['latency_ms_p95']:.2f}", f"{r['peak_rss_increase_mib']:.1f}",
                   f"{r['rss_increase_mib']:.1f}" if "rss_increase_mib" in r else "-"], page.command("device", r))
    return table.render()


def render_speed(name: str) -> Callable[[Page, list[Row]], str]:
    def render(page: Page, rows: list[Row]) -> str:
        table = Table(["items", "table", "table bytes", "ratio", "torch p50 ms", "numpy p50 ms"])
        speedups = Table(["items", "runtime", "codebook vs TT", "codebook vs dense"])
        for r in rows:
            if r["kind"].startswith("speedup"):
                speedups.add([num(r["items"]), r["kind"].split("(")[1].rstrip(")"), f"{r['codebook_vs_tt']:.1f}x",
                              f"{r['codebook_vs_dense']:.2f}x"], page.command(name, r))
            else:
                table.add([num(r["items"]), r["describe"].split("(")[0] + " " + r["describe"].split(", ", 1)[1]
                           .rsplit(", bytes", 1)[0] if "," in r["describe"] else r["describe"], num(r["table_bytes"]),
                           ratio(r["ratio"]), f"{r['torch_p50_ms']:.2f}", f"{r['numpy_p50_ms']:.2f}"],
                          page.command(name, r))
        return table.render() + "\nSpeed-ups (p50, higher is faster for the codebook table):\n\n" + speedups.render()
    return render


def render_codebook_rows(page: Page, rows: list[Row]) -> str:
    table = Table(["items", "d", "layout", "lookups ms", "embedding_bag ms", "table ms", "table vs lookups"])
    for r in rows:
        table.add([num(r["items"]), r["dim"], r["layout"], f"{r['lookups ms']:.0f}", f"{r['embedding_bag ms']:.0f}",
                   f"{r['table ms']:.0f}", f"{r['table vs lookups']:.1f}x"], page.command("codebook_rows", r))
    return table.render()


def render_codebook_precision(page: Page, rows: list[Row]) -> str:
    table = Table(["codebooks", "layout", "bytes", "ratio", "row error", "valid Recall@20 %", "valid MRR@20 %"])
    for r in rows:
        table.add([r["dtype"], r.get("layout", "-"), num(r["bytes"]), ratio(r.get("ratio")),
                   r.get("code_error", "-"), f"{r['valid_R@20']:.2f}", f"{r['valid_MRR@20']:.2f}"],
                  page.command("codebook_precision", r))
    return table.render()


def render_tt_order(page: Page, rows: list[Row]) -> str:
    table = Table(["dataset", "order", "rank", "bytes", "ratio", "relative fit error", "ordering s"])
    for r in rows:
        table.add([r["dataset"], r["order"], r["rank"], num(r["bytes"]), ratio(r["ratio"]), f"{r['fit_error']:.3f}",
                   f"{r['order_s']:.1f}"], page.command("tt_order", r))
    return table.render()


def render_generic(page: Page, name: str, rows: list[Row]) -> str:
    """Any results file without a renderer: its scalar columns and its rows' ``command`` where they have one."""
    columns = [k for k in dict.fromkeys(k for r in rows for k in r)
               if k != "command" and all(not isinstance(r.get(k), (dict, list)) for r in rows)]
    table = Table(columns)
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)
                 for v in (r.get(k) for k in columns)]
        table.add(cells, r.get("command"))
    return table.render()


#: results file -> (section title, what the rows are, renderer); files not listed get render_generic
RENDERERS: dict[str, tuple[str, str, Callable[[Page, list[Row]], str]]] = {
    "teacher": ("Session teachers", "The dense session teachers (post-LN Transformer, cosine scores x 12): test "
                "figures at the best-validation epoch. The most accurate one per dataset is the yardstick of every "
                "`% of best dense` column.", render_teacher),
    "eodrec": ("EODRec students", "Compositional codes over shared codebooks, distilled from a teacher "
               "([method page](methods/eodrec.md)). `ratio` is against the row's own teacher; `layout` is "
               "codebooks x codewords, the codebooks' precision and how the codes were chosen.", render_eodrec),
    "odrec": ("OD-Rec students", "Tensor-train (semi-tensor product) tables distilled from a teacher "
              "([method page](methods/odrec.md)), with the same-bytes dense table trained from scratch.",
              render_odrec),
    "bench-tmall": ("Tmall bench at 30x (d = 64 teacher)", "`pocketrec bench`: every session method and baseline at "
                    "one budget, with the whole device file (`artifact bytes`: encoder, table, item norms, ids, "
                    "manifest) and one whole-catalogue top-20 in the numpy runtime on one thread. Made before "
                    "EODRec's current defaults; the report with plots is [tmall-bench/](tmall-bench/report.md).",
                    render_bench),
    "cf_tables": ("Collaborative filtering: item tables on LightGCN", "A LightGCN teacher's propagated item vectors "
                  "compressed at 10x and 40x ([method page](methods/cf.md)); the artifact is the device file of one "
                  "user. Test split, each user's earlier items excluded.", render_cf),
    "rule": ("RULE: one elastic model for every budget", "RULE's search (`rule`) against the allocations of the same "
             "harness (uniform: the same first blocks for every group; popularity; random search with as many "
             "estimator calls) and the other item tables at the same bytes, on the LightGCN teacher's propagated "
             "item vectors.", render_rule_all),
    "peel": ("PEEL: one RULE model refined per user group", "PEEL's files (one per user group, the blocks of "
             "largest alpha; [method page](methods/peel.md)) against RULE's search, uniform allocation and the full "
             "model, all from the same RULE run, at the same bytes (no file stores its block priority here). The "
             "RULE rows are this bench's run, not the RULE section's.", render_peel_all),
    "quantizers": ("Quantizers for the codebook table", "Every quantizer fills EODRec's default layout for the "
                   "budget (a share of the best dense model's table): the code error of the teacher's item rows "
                   "(`sum |x - x^|^2 / sum |x|^2`, at the stored precision), the teacher's own encoder over the "
                   "quantised table on a validation sample (zero-shot), and the student distilled from those codes "
                   "(test). See [methods/eodrec.md](methods/eodrec.md).", render_quantizers),
    "fast_scan": ("Fast-scan against the bandwidth floor", "Top 100 of the whole catalogue for one query, one "
                  "thread, random 4-bit codebook tables (K = 16) at 40x fewer bytes than dense fp32. The floor is the "
                  "packed codes' bytes over the read bandwidth measured in the same run. `numpy (32k LUTs)` is the "
                  "numpy scorer's grouping before this benchmark (3 codebooks of 16 a table), `numpy` today's (4); "
                  "`same top-k`: every codebook runtime returned the same items. See [device.md](device.md).",
                  render_fast_scan),
    "fleet": ("The fleet service under load", "`pocketrec serve` with the RULE and PEEL runs above, as its own process "
              "on loopback; the clients (pocketrec's own, every file verified: SHA-256, checksum, signature) in "
              "another process on the same 2 cores. Latency is the HTTP request's. See [fleet.md](fleet.md).",
              render_fleet),
    "lightgcn_peer": ("LightGCN against RecBole 1.2.1 (same split)", "Both systems train, validate and test on "
                      "pocketrec's split exported as RecBole atomic files, each in its own process on 2 threads, "
                      "patience 10.", render_peer),
    "teacher_speed": ("Teacher training cost against RecBole's SASRec", "One Tmall epoch each, side by side in one "
                      "run, 2 threads.", render_teacher_speed),
    "device": ("Device cost", "One recommendation (top 20 over the whole catalogue) per runtime, one thread, each "
               "in a fresh process; memory is the increase over the process after its imports. `untrained` rows "
               "are random tables. The synthetic-20000 rows come from the script's first version, whose TT and "
               "codebook sizes were not today's `--table-ratio`.", render_device),
    "scoring_speed": ("Scoring speed at d = 128", "One query, whole catalogue, one thread, random tables at ~40x "
                      "fewer bytes than dense (speed does not depend on training).", render_speed("scoring_speed")),
    "scale": ("Scoring speed from 10k to 10M items (d = 64)", "As above, at d = 64.", render_speed("scale")),
    "codebook_rows": ("Training cost of codebook rows", "Forward + backward of every item row, one thread: plain "
                      "per-codebook lookups, `embedding_bag`, and the table's `codeword_sum`.", render_codebook_rows),
    "codebook_precision": ("Codebook precision before training", "Post-hoc residual k-means of a teacher's rows at "
                           "40x, float16 against int8 codebooks (more codes in the same bytes); validation "
                           "figures.", render_codebook_precision),
    "tt_order": ("TT item order", "Least-squares warm start of a TT table to the teacher's rows by item order; "
                 "relative error of the fitted rows (lower is better).", render_tt_order),
}


# ------------------------------------------------------------------------------------------------ pages


def load_results() -> dict[str, list[Row]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def render_results_page(page: Page) -> str:
    order = [*(n for n in RENDERERS if n in page.results), *(n for n in page.results if n not in RENDERERS)]
    titles = {n: RENDERERS[n][0] if n in RENDERERS else f"{n}.json" for n in order}
    out = ["# Results", "",
           "<!-- Generated by `python benchmarks/results_page.py` from benchmarks/results/*.json: do not edit. -->",
           "",
           "Every figure below is read from a file in `benchmarks/results/`; every row names the command that made "
           "it (a named recipe is `benchmarks/recipes/NAME.yaml`, see [benchmarks.md](benchmarks.md)). Accuracy is "
           "on the test split at the epoch selected on validation, with full ranking over the catalogue. "
           "Bytes are what a device stores for the item table (`nbytes()`); `% of best dense` divides them by the "
           "item table of the most accurate dense model of the dataset. Times come from different sessions on a "
           "shared 2-core machine whose speed varied about 2x between them: only times measured side by side in "
           "one run compare.", "",
           "## Best method per budget", "",
           "The dense row is the most accurate dense model of the dataset; each budget shows the most accurate "
           "registered method (a distilled student) and the most accurate baseline (trained from scratch or "
           "compressed after training) whose item table is at most that share of the dense row's table. Ablation "
           "variants are not candidates. `artifact bytes` is the whole device file where a result file has it.", "",
           render_headline(page), "",
           "Contents: " + ", ".join(f"[{titles[n]}](#{anchor(titles[n])})" for n in order) + ".", ""]
    for name in order:
        if name in RENDERERS:
            title, about, render = RENDERERS[name]
            body = render(page, page.rows(name))
        else:
            title, about, body = titles[name], "No renderer yet: all scalar columns.", render_generic(
                page, name, page.rows(name))
        out += [f"## {title}", "", f"{about} Source: `benchmarks/results/{name}.json`.", "", body]
    return "\n".join(out).rstrip() + "\n"


def render_block_odrec_ablations(page: Page) -> str:
    rows = students(page, "odrec", lambda r: r["method"].endswith("-e1"))
    return student_table(page, "odrec", rows, odrec_layout)


def render_block_eodrec_ablations(page: Page) -> str:
    rows = students(page, "eodrec", lambda r: "bench-norm" in r.get("teacher", "") and r["dataset"] == "tmall"
                    and r.get("budget") == "40.0x" and r["method"] != "eodrec-sel-recall")
    return student_table(page, "eodrec", rows, eodrec_layout)


def render_block_eodrec_40x(page: Page) -> str:
    rows = students(page, "eodrec", lambda r: r.get("budget") == "40.0x" and "bench-norm" not in r.get("teacher", ""))
    return student_table(page, "eodrec", rows, eodrec_layout)


def render_block_cf(page: Page) -> str:
    return render_cf(page, page.rows("cf_tables"))


#: the generated blocks of README.md and docs/**/*.md, by name
BLOCKS: dict[str, Callable[[Page], str]] = {
    "headline": render_headline,
    "odrec-ablations": render_block_odrec_ablations,
    "eodrec-ablations": render_block_eodrec_ablations,
    "eodrec-40x": render_block_eodrec_40x,
    "cf-tables": render_block_cf,
    "rule": lambda page: render_rule(page, page.rows("rule")),
    "rule-ablation": lambda page: render_rule_ablation(page, page.rows("rule")),
    "rule-cost": lambda page: render_rule_cost(page, page.rows("rule")),
    "peel": lambda page: render_peel(page, page.rows("peel")),
    "peel-variants": lambda page: render_peel_variants(page, page.rows("peel")),
    "peel-groups": lambda page: render_peel_groups(page, page.rows("peel")),
    "peel-fleet": lambda page: render_peel_fleet(page, page.rows("peel")),
    "peel-dynamic": lambda page: render_peel_dynamic(page, page.rows("peel")),
    "fleet": lambda page: render_fleet(page, page.rows("fleet")),
    "fast-scan": lambda page: render_fast_scan(page, page.rows("fast_scan")),
    "quantizers": lambda page: render_quantizers(page, page.rows("quantizers")),
}


def fill_blocks(text: str, page: Page, where: str) -> str:
    def sub(m: re.Match) -> str:
        if m["name"] not in BLOCKS:
            raise ValueError(f"{where}: unknown generated block {m['name']!r} (known: {', '.join(BLOCKS)})")
        return m.group(1) + BLOCKS[m["name"]](page) + m.group(4)
    return BLOCK.sub(sub, text)


def pages(page: Page) -> dict[Path, str]:
    """Every generated file and what it should contain."""
    out = {PAGE: render_results_page(page)}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if path == PAGE or not path.is_file():
            continue
        text = path.read_text()
        if "<!-- generated:" in text:
            out[path] = fill_blocks(text, page, str(path.relative_to(ROOT)))
    return out


def draw_plot(page: Page, path: Path = PLOT) -> None:
    """Accuracy against bytes, one panel per dataset: share of the best dense model's Recall@20 against the share
    of its item-table bytes, methods and baselines (the headline's candidates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dense = page.best_dense()
    cands = [c for c in page.candidates() if c["dataset"] in dense and c["role"] != "ablation"]
    datasets = sorted({c["dataset"] for c in cands}, key=lambda d: (d == "ml-100k", d))
    names = sorted({base_name(c["method"]) for c in cands})
    color = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        base = dense[ds]
        mine = [c for c in cands if c["dataset"] == ds]
        for name in sorted({base_name(c["method"]) for c in mine}):
            pts = [c for c in mine if base_name(c["method"]) == name]
            ax.scatter([100 * c["table_bytes"] / base["table_bytes"] for c in pts],
                       [100 * c["recall@20"] / base["recall@20"] for c in pts],
                       marker="o" if pts[0]["role"] == "method" else "x", label=name, s=22, color=color[name])
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}%"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{ds} (dense: {base['name']})", fontsize=9)
        ax.set_xlabel("item table bytes, % of the dense model's")
        ax.set_ylim(0, 110)
        ax.legend(fontsize=7, loc="lower right", title="o method, x baseline", title_fontsize=7)
    axes[0][0].set_ylabel("Recall@20, % of the dense model's")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is out of date")
    parser.add_argument("--plot", action="store_true", help="also redraw " + str(PLOT.relative_to(ROOT)))
    args = parser.parse_args()
    page = Page(load_results())
    stale = []
    for path, text in pages(page).items():
        if (path.read_text() if path.is_file() else None) != text:
            stale.append(str(path.relative_to(ROOT)))
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if args.plot and not args.check:
        draw_plot(page)
    if args.check and stale:
        sys.exit(f"out of date (run python benchmarks/results_page.py): {', '.join(stale)}")
    print(("up to date" if not stale else "wrote " + ", ".join(stale)) if not args.check else "up to date")


if __name__ == "__main__":
    main()
