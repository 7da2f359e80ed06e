"""The ``pocketrec`` command line.

Every training command reads a config dataclass: defaults, then ``--config FILE.yaml``, then any
``--section.key=value`` overrides (e.g. ``--encoder.dim=128 --train.epochs=30``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pocketrec: train a recommender, compress it to a device's memory budget, ship it.")
console = Console(stderr=True)
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(message: str) -> None:
    """Print a one-line error and exit 2 (no stack trace for user errors)."""
    # soft_wrap: one line whatever the terminal width (paths stay unbroken); escape: "[...]" is not markup
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def user_errors():
    """The exception types that mean 'bad input', shown as one line instead of a traceback."""
    from pocketrec.config import ConfigError
    from pocketrec.data.errors import DataError
    from pocketrec.train.checkpoint import CheckpointError

    return (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError)


@app.command(context_settings=OVERRIDES)
def train(ctx: typer.Context,
          dataset: str = typer.Option("ml-100k", help="dataset name (see `pocketrec datasets`) or a path"),
          backbone: str | None = typer.Option(None, help="session (default: a session encoder) or lightgcn "
                                                         "(collaborative filtering on user-item interactions)"),
          out: Path = typer.Option(None, help="run folder; default runs/teacher-DATASET"),
          config: Path | None = typer.Option(None, help="YAML file with encoder:/train: sections"),
          resume: bool = typer.Option(False, help="continue the run in OUT (from OUT/last)"),
          overwrite: bool = typer.Option(False, help="replace the run in OUT (kept until the new run's first "
                                                     "checkpoint)"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train a teacher (a backbone + dense item table) and keep its best-on-validation checkpoint.

    Example: pocketrec train --dataset tmall --encoder.dim=128 --train.epochs=30;
    pocketrec train --backbone lightgcn --dataset ml-100k --encoder.layers=3. `--encoder.KEY=V` sets the
    backbone's own config.
    """
    from pocketrec.backbones.base import backbone_class
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.train.teacher import final_test_metrics, load_teacher_config, train_teacher
    from pocketrec.train.trainer import check_run_folder

    try:
        given = [f"dataset={dataset}", *([f"backbone={backbone}"] if backbone else [])]
        cfg = load_teacher_config(config, [*ctx.args, *given])
        cfg.out = str(out or Path("runs") / f"teacher-{Path(dataset).stem}")
        check_run_folder(cfg.out, resume=resume, overwrite=overwrite)
        if quiet:
            cfg.train.progress = False
        data = backbone_class(cfg.backbone).load_dataset(cfg.dataset)
        console.print(f"{data.name}: {data.num_items:,} items ({data.protocol} protocol)")
        _, result = train_teacher(data, cfg, resume=resume)
    except user_errors() as err:
        fail(str(err))
    console.print(f"best epoch {result.best_epoch + 1}; test {format_metrics(final_test_metrics(result))}")
    console.print(f"checkpoint: {Path(cfg.out) / 'best'}")


@app.command()
def evaluate(checkpoint: Path = typer.Argument(..., help="checkpoint folder (e.g. runs/teacher-tmall/best)"),
             dataset: str | None = typer.Option(None, help="dataset; default: the one it was trained on"),
             split: str = typer.Option("test", help="valid or test"),
             as_json: bool = typer.Option(False, "--json", help="print metrics as JSON")) -> None:
    """Evaluate a checkpoint with full ranking: Recall/MRR/NDCG at 5, 10, 20 for session models;
    Recall/NDCG/Precision at 10, 20, 50 for LightGCN (each user's earlier items excluded)."""
    from pocketrec.train.checkpoint import load_checkpoint
    from pocketrec.train.compat import check_compatible, load_dataset_of

    try:
        model, meta = load_checkpoint(checkpoint)
        data = load_dataset_of(meta, dataset, what=str(checkpoint))
        check_compatible(meta, data, what=str(checkpoint))
        if split not in ("valid", "test"):
            raise ValueError(f"--split must be 'valid' or 'test', got {split!r}")
        metrics = model.evaluate(data, split, progress=True)
    except user_errors() as err:
        fail(str(err))
    if as_json:
        print(json.dumps(metrics))
        return
    Console().print(metrics_table(metrics, f"{checkpoint} on {data.name} ({split})"))


def metrics_table(metrics: dict[str, float], title: str) -> Table:
    """Rows K, one column per metric name (``recall@10`` ...), in percent; counts (no ``@``) in the title."""
    names = list(dict.fromkeys(key.split("@")[0] for key in metrics if "@" in key))
    ks = sorted({int(key.split("@")[1]) for key in metrics if "@" in key})
    counts = ", ".join(f"{int(v):,} {key}" for key, v in metrics.items() if "@" not in key)
    table = Table(title=f"{title}{f', {counts}' if counts else ''}")
    table.add_column("K", justify="right")
    for name in names:
        table.add_column(f"{name.upper() if name in ('mrr', 'ndcg') else name.capitalize()}@K (%)", justify="right")
    for k in ks:
        table.add_row(str(k), *(f"{100 * metrics[f'{n}@{k}']:.2f}" if f"{n}@{k}" in metrics else "-" for n in names))
    return table


@app.command()
def datasets() -> None:
    """List the named datasets and where each was found."""
    from pocketrec.data.registry import available_datasets

    table = Table(title="datasets")
    for col in ("name", "protocol", "status"):
        table.add_column(col)
    for info in available_datasets():
        table.add_row(info.name, info.protocol,
                      str(info.location) if info.available else f"[dim]missing: {info.reason}[/dim]")
    Console().print(table)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


DEMO_TEACHER = ["teacher.train.epochs=25", "teacher.train.patience=8", "teacher.train.lr=0.002"]
DEMO_STUDENT = ["student.epochs=4", "student.patience=2", "student.lr=0.002", "eodrec_code_epochs=5"]


def _run_bench(cfg, title: str, command: str, quiet: bool):
    """Run a bench config, write its report, print the table; shared by ``bench`` and ``demo``."""
    from pocketrec.bench.report import write_report
    from pocketrec.bench.runner import markdown_table, run_bench
    from pocketrec.data.registry import load_dataset

    if quiet:
        cfg.teacher.train.progress = cfg.student.progress = False
    data = load_dataset(cfg.dataset)
    cfg.out = cfg.out or f"runs/bench-{data.name}"
    console.print(f"[bold]{data.name}[/bold]: {data.num_items:,} items, {data.train.num_examples:,} training "
                  f"examples ({data.protocol} protocol); budgets {', '.join(cfg.budgets)}; out {cfg.out}")
    rows = run_bench(cfg, data, log=lambda line: console.print(f"[dim]bench[/dim] {line}"))
    md, page = write_report(rows, Path(cfg.out), title or data.name, command)
    print(markdown_table(rows))
    console.print(f"report: {md} and {page}")
    return data, rows


def _method_names() -> tuple[str, ...]:
    """The names of :mod:`pocketrec.methods.registry` (imports no method)."""
    from pocketrec.methods.registry import method_names

    return method_names()


@app.command(context_settings=OVERRIDES)
def bench(ctx: typer.Context,
          dataset: str = typer.Option("ml-100k", help="dataset name or path"),
          budgets: str = typer.Option("3%,10%", help="comma-separated item-table budgets: '3%', '30x', '200KB'"),
          methods: str | None = typer.Option(None, help="comma-separated subset of: "
                                                        f"{', '.join(_method_names())} (default: all)"),
          teacher: Path | None = typer.Option(None, help="use this teacher checkpoint instead of training one"),
          out: Path | None = typer.Option(None, help="bench folder (default runs/bench-DATASET); finished "
                                                     "models in it are reused"),
          config: Path | None = typer.Option(None, help="YAML with BenchConfig keys (teacher:, student:, ...)"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Build every method at every budget, evaluate, time on device, and write a report with plots.

    Example: pocketrec bench --dataset tmall --budgets 3%,10% --teacher runs/teacher-tmall/best
    --student.epochs=3. Overrides as --key=value (see pocketrec.bench.runner.BenchConfig).

    A method's own options (those of `pocketrec compress --method M`) go as METHOD.KEY=VALUE entries of
    --method_options, e.g. --method_options=eodrec.dtype=int8,eodrec.max_codebooks=64,tt.train.epochs=5
    (or a method_options: list in the YAML); a method run with options gets its own folder in OUT.
    """
    from pocketrec.bench.runner import BenchConfig
    from pocketrec.config import load_config

    try:
        given = [f"dataset={dataset}", f"budgets={budgets}"]
        if methods:
            given.append(f"methods={methods}")
        if teacher:
            given.append(f"teacher_checkpoint={teacher}")
        if out:
            given.append(f"out={out}")
        cfg = load_config(BenchConfig, config, [*ctx.args, *given])
        _run_bench(cfg, "", _command_line(), quiet)
    except user_errors() as err:
        fail(str(err))


def _command_line() -> str:
    """How this run was invoked, for the report."""
    import sys

    return " ".join(["pocketrec", *sys.argv[1:]])


@app.command(context_settings=OVERRIDES)
def demo(ctx: typer.Context,
         dataset: str = typer.Option("ml-100k", help="dataset name or path"),
         budgets: str = typer.Option("3%,10%", help="two (or more) item-table budgets"),
         out: Path = typer.Option(Path("runs/demo"), help="run folder (finished models in it are reused)"),
         cf: bool = typer.Option(True, help="also the collaborative-filtering family (LightGCN) on datasets "
                                            "with users"),
         quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """The tour: teacher, every method at two budgets, device files, a recommendation, a report.

    On the built-in ml-100k it runs on a fresh machine in under 10 minutes on 2 CPU cores: trains a
    session teacher, compresses it with OD-Rec, TT, EODRec and the baselines at each budget, exports every
    model as a device artifact, recommends for one test user through the numpy runtime (with titles), prints
    the table and writes OUT/report.md / report.html with plots. Then the collaborative-filtering family: a
    LightGCN teacher on the same ratings, the device file of one user, and that user's recommendations.
    `--dataset tmall` runs the session part elsewhere (session data has no users).
    """
    from pocketrec.bench.runner import BenchConfig
    from pocketrec.config import load_config

    try:
        cfg = load_config(BenchConfig, None, [*DEMO_TEACHER, *DEMO_STUDENT, *ctx.args, f"dataset={dataset}",
                                              f"budgets={budgets}", f"out={out}"])
        data, rows = _run_bench(cfg, f"{dataset} demo", _command_line(), quiet)
    except user_errors() as err:
        fail(str(err))
    titles = _demo_recommendation(data, rows)
    if cf and data.protocol != "session":
        _demo_cf(dataset, out, quiet, titles)


def _demo_cf(dataset: str, out: Path, quiet: bool, titles: dict[str, str]) -> None:
    """The collaborative-filtering section of the demo (:mod:`pocketrec.bench.cf_demo`)."""
    from pocketrec.bench.cf_demo import run_cf_demo
    from pocketrec.search.budget import format_bytes

    console.print("\n[bold]Collaborative filtering[/bold]: LightGCN on the same ratings (user-item graph)")
    try:
        row = run_cf_demo(dataset, out, log=lambda line: console.print(f"[dim]cf[/dim] {line}"), quiet=quiet)
    except user_errors() as err:
        fail(str(err))
    test = row["test"]
    console.print(f"LightGCN test Recall@20 {100 * test['recall@20']:.2f}, NDCG@20 {100 * test['ndcg@20']:.2f} "
                  f"({int(test['users']):,} users, each user's earlier items excluded)")
    console.print(f"[bold]On device[/bold]: {row['artifact']} ({format_bytes(row['artifact_bytes'])}: item table "
                  f"{format_bytes(row['table_bytes'])} + user {row['user']}'s vector and items; numpy, no torch, "
                  "no graph)")
    console.print(f"user {row['user']} rated {len(row['history'])} films, e.g. "
                  + "; ".join(titles.get(i, i) for i in row["history"][:3]))
    for rank, (item, score) in enumerate(zip(row["items"], row["scores"], strict=True), 1):
        console.print(f"  {rank:2d}. {titles.get(item, item)}  ({score:.3f})")


def _demo_recommendation(data, rows) -> dict[str, str]:
    """Recommend for the first test user with the smallest EODRec (else smallest) artifact, numpy only;
    returns the titles of the raw item ids (empty where the data has none)."""
    from pocketrec.device.runtime import load

    raw_titles = data.item_titles or {}
    titles = {data.vocab.decode([i])[0]: t for i, t in raw_titles.items()}
    built = [r for r in rows if "artifact" in r and r["method"] != "teacher"]
    if not built:
        return titles
    pick = min((r for r in built if r["method"] == "eodrec"), key=lambda r: r["table_bytes"], default=None)
    pick = pick or min(built, key=lambda r: r["table_bytes"])
    device = load(pick["artifact"])
    history = data.vocab.decode([int(i) for i in data.test.sequences[0][:-1]])
    items, scores = device.recommend(history, k=10, exclude_history=True)
    console.print(f"\n[bold]On device[/bold]: {pick['artifact']} ({pick['method']} @ {pick['budget']}, "
                  f"item table {pick['table_bytes']:,} bytes, numpy runtime, no torch)")
    console.print("recent history of the first test user: " + "; ".join(titles.get(i, i) for i in history[-5:]))
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), 1):
        console.print(f"  {rank:2d}. {titles.get(item, item)}  ({score:.3f})")
    return titles


@app.command()
def export(checkpoint: Path = typer.Argument(..., help="checkpoint folder (e.g. runs/teacher-tmall/best)"),
           out: Path = typer.Option(..., "-o", "--out", help="output file (model.safetensors or model.onnx), "
                                                            "outside the checkpoint folder"),
           fp16: bool = typer.Option(False, "--fp16", help="store the encoder and float table parts as float16"),
           fmt: str | None = typer.Option(None, "--format", help="safetensors (numpy runtime) or onnx; default: "
                                                                 "onnx for a .onnx OUT, else safetensors"),
           k: int = typer.Option(100, help="ONNX only: number of ranked items the graph returns"),
           user: str | None = typer.Option(None, "--user", help="LightGCN models: the user(s) the device file is "
                                                                "for, raw ids, comma-separated, or 'all'"),
           sign_key: Path | None = typer.Option(None, "--sign-key", help="sign the artifact with the key in this "
                                                                         "file (default: $POCKETREC_SIGNING_KEY "
                                                                         "when set)")) -> None:
    """Write a checkpoint as one device file: a .safetensors artifact for the numpy runtime, or ONNX.

    Example: pocketrec export runs/teacher-tmall/best -o tmall.safetensors --fp16

    Signing (safetensors only): --sign-key FILE, else the key in $POCKETREC_SIGNING_KEY when it is set;
    devices verify with `pocketrec recommend --verify-key FILE` (or the same variable).
    """
    import os

    from pocketrec.device.runtime import ArtifactError
    from pocketrec.device.signing import ENV_KEY, key_from_env, read_key

    try:
        by_suffix = {".onnx": "onnx", ".safetensors": "safetensors"}.get(out.suffix.lower())
        fmt = fmt or by_suffix or "safetensors"
        if fmt not in ("safetensors", "onnx"):
            raise ValueError(f"--format must be 'safetensors' or 'onnx', got {fmt!r}")
        if by_suffix and fmt != by_suffix:
            raise ValueError(f"--format {fmt} contradicts the file name {out}; drop --format or rename the file")
        users = [u.strip() for u in user.split(",") if u.strip()] if user else None
        if fmt == "safetensors":
            from pocketrec.device.artifact import export_artifact

            key = read_key(sign_key) if sign_key is not None else key_from_env()
            written = export_artifact(checkpoint, out, fp16=fp16, key=key, users=users)
        else:
            if fp16:
                raise ValueError("--fp16 is only supported with --format safetensors")
            if sign_key is not None:
                raise ValueError("--sign-key is only supported with --format safetensors (ONNX files are not signed)")
            from pocketrec.device.onnx_export import export_onnx

            written = export_onnx(checkpoint, out, k=k, users=users)
    except (*user_errors(), ArtifactError, OSError) as err:
        fail(str(err))
    if fmt == "onnx" and os.environ.get(ENV_KEY):
        console.print(f"[yellow]warning:[/yellow] {ENV_KEY} is set but ONNX files are not signed")
    console.print(f"wrote {written} ({written.nbytes:,} bytes)")


@app.command()
def recommend(artifact: Path = typer.Argument(..., help="device artifact (.safetensors from `pocketrec export`)"),
              history: str | None = typer.Option(None, help="session models: comma-separated raw item ids, "
                                                             "oldest first"),
              user: str | None = typer.Option(None, "--user", help="LightGCN models: the raw user id (default: "
                                                                   "the file's only user)"),
              k: int = typer.Option(10, "-k", help="number of items to recommend"),
              exclude_history: bool = typer.Option(False, help="do not recommend items of the history"),
              as_json: bool = typer.Option(False, "--json", help="print ids and scores as JSON"),
              verify_key: Path | None = typer.Option(None, "--verify-key", help="refuse the artifact unless it "
                                                                                "is signed with the key in this "
                                                                                "file (default: "
                                                                                "$POCKETREC_SIGNING_KEY when set)")
              ) -> None:
    """Recommend with the numpy runtime (no PyTorch): ranked raw item ids and scores.

    Example: pocketrec recommend tmall.safetensors --history 12,7,99 -k 10; for a LightGCN file
    (`pocketrec export CKPT -o u42.safetensors --user 42`): pocketrec recommend u42.safetensors (the
    user's own items are never recommended back).

    With --verify-key FILE, or else with $POCKETREC_SIGNING_KEY set, an unsigned artifact or one signed with
    another key is refused.
    """
    import warnings

    from pocketrec.device.runtime import load
    from pocketrec.device.signing import key_from_env, read_key

    items = [h.strip() for h in (history or "").split(",") if h.strip()]
    try:
        if k < 1:
            raise ValueError(f"-k must be at least 1, got {k}")
        key = read_key(verify_key) if verify_key is not None else key_from_env()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load(artifact, key=key)
            if model.users is not None:
                if history is not None:
                    raise ValueError(f"{artifact} ranks for its users (LightGCN): pass --user, not --history")
                ids, scores = model.recommend_user(user, k=k)
            else:
                if history is None or user is not None:
                    raise ValueError(f"{artifact} ranks after a history of items: pass --history (not --user)")
                ids, scores = model.recommend(items, k=k, exclude_history=exclude_history)
    except user_errors() as err:
        fail(str(err))
    for warning in caught:
        console.print(f"[yellow]warning:[/yellow] {warning.message}")
    if as_json:
        print(json.dumps({"items": ids, "scores": [float(s) for s in scores]}))
        return
    for rank, (item, score) in enumerate(zip(ids, scores, strict=True), 1):
        print(f"{rank:3d}. {item}\t{score:.4f}")


@app.command(context_settings=OVERRIDES)
def compress(ctx: typer.Context,
             method: str = typer.Option("odrec", help=f"compression method: {', '.join(_method_names())} (odrec: "
                                                      "TT tables, tt: odrec with t=1, eodrec: codebooks, the rest: "
                                                      "baselines; see pocketrec.methods.registry)"),
             teacher: Path = typer.Option(..., help="teacher checkpoint folder (e.g. runs/teacher-tmall/best)"),
             budget: str | None = typer.Option(None, help="item-table budget: '3%' or '30x' of the dense table, "
                                                          "'200KB', '1.5MB', or bytes (default: odrec 3%, "
                                                          "eodrec 2.5%)"),
             dataset: str | None = typer.Option(None, help="dataset; default: the one the teacher was trained on"),
             out: Path | None = typer.Option(None, help="run folder; default runs/METHOD-DATASET-BUDGET"),
             config: Path | None = typer.Option(None, help="YAML file with distill:/train: sections"),
             overwrite: bool = typer.Option(False, help="replace the run in OUT (kept until the new run's "
                                                        "first checkpoint)"),
             quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Compress a teacher into a small student that fits a byte budget for its item table.

    Example: pocketrec compress --method odrec --teacher runs/teacher-tmall/best --budget 3% --train.epochs=10

    Method options go as --key=value: odrec: --t=2 --num_cores=2 --warm_start=true
    --order=identity|clustered; eodrec: --M=0 --K=0 (0: the budget solver picks) --max_codebooks=48
    --codes=learned|gumbel|rq|pq --bitpack=true; both:
    --dtype=float32|float16, eodrec also int8 (stored precision of the table's weights; eodrec's default float16),
    --distill.KEY=V (kd_weight, cl_weight, pred_weight, bidirectional, teacher_lr, ...) and --train.KEY=V.
    tt is odrec with t=1; the baselines dense-small, kmeans, int8 and int4 run too (see
    pocketrec.methods.registry for each method's config class).
    """
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.methods.registry import METHODS
    from pocketrec.search.budget import format_bytes
    from pocketrec.train.checkpoint import read_meta
    from pocketrec.train.compat import dataset_of, load_dataset_of
    from pocketrec.train.trainer import check_run_folder

    try:
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        recipe = METHODS[method]
        recipe.check_teacher(teacher)  # before the data is loaded: a teacher of the other family is one line
        teacher_meta = read_meta(teacher)
        name = dataset_of(teacher_meta, dataset, what=f"teacher {teacher}")
        given = [f"teacher={teacher}", f"dataset={name}", *([f"budget={budget}"] if budget else [])]
        cfg = recipe.load_config(config, [*ctx.args, *given])
        cfg.out = str(out or cfg.out or Path("runs") / f"{method}-{Path(str(name)).stem}-"
                                                       f"{cfg.budget.replace('%', 'pct')}")
        check_run_folder(cfg.out, overwrite=overwrite)
        if quiet and hasattr(cfg, "train"):
            cfg.train.progress = False
        data = load_dataset_of(teacher_meta, dataset, what=f"teacher {teacher}")
        console.print(f"{data.name}: {data.num_items:,} items; teacher {teacher}; "
                      f"budget {'fixed' if recipe.fixed_size else cfg.budget}")
        student, result = recipe.compress(cfg, data)
    except user_errors() as err:
        fail(str(err))
    console.print(f"student table {student.table.describe()}")
    console.print(f"{format_bytes(result.table_bytes)} vs dense {format_bytes(result.dense_table_bytes)} "
                  f"({result.ratio:.1f}x smaller)")
    trained = f"best epoch {result.fit.best_epoch + 1}" if result.fit is not None else "no training (post-hoc)"
    console.print(f"{trained}; test {format_metrics(result.test)}")
    console.print(f"checkpoint: {Path(cfg.out) / 'best'}")
