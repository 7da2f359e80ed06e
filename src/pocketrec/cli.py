"""The ``pocketrec`` command line.

Every training command reads a config dataclass: defaults, then ``--config FILE.yaml``, then any
``--section.key=value`` overrides (e.g. ``--encoder.dim=128 --train.epochs=30``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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


NPROC_HELP = ("worker processes on this machine: data-parallel training on torch.distributed, launched through "
              "torch's launcher (several machines: torchrun ... -m pocketrec; see docs/distributed.md)")
TIMEOUT_HELP = "seconds a worker waits for its peers before failing the job (default 600)"


def _worker_argv(command: str) -> list[str]:
    """This command line without ``--nproc``: what each launched worker runs."""
    argv = sys.argv[1:]
    if command not in argv:
        raise ValueError(f"--nproc needs the command line of `pocketrec {command}` (sys.argv holds {argv})")
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _launch(command: str, nproc: int, timeout: float | None) -> None:
    """Run this command in ``nproc`` local workers; a worker's failure is this command's error."""
    from pocketrec.train.distributed import LaunchError, launch_local

    try:
        launch_local(nproc, _worker_argv(command), timeout)
    except LaunchError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
        raise typer.Exit(1) from None


#: this process's rank in a launched job (0 outside one): only rank 0 prints
_RANK = {"rank": 0}


def _join_workers(timeout: float | None) -> bool:
    """Inside a launched worker (``WORLD_SIZE`` > 1): start the process group; returns whether it did."""
    from pocketrec.train import distributed

    if not distributed.launched():
        return False
    started = distributed.init(timeout_s=timeout)
    _RANK["rank"] = distributed.rank()
    return started


def _say(message: str) -> None:
    """Print on rank 0 only (every rank of a distributed run executes the command)."""
    if _RANK["rank"] == 0:
        console.print(message)


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
          quiet: bool = typer.Option(False, help="no progress bars"),
          nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
          dist_timeout: float | None = typer.Option(None, "--dist-timeout", help=TIMEOUT_HELP)) -> None:
    """Train a teacher (a backbone + dense item table) and keep its best-on-validation checkpoint.

    Example: pocketrec train --dataset tmall --encoder.dim=128 --train.epochs=30;
    pocketrec train --backbone lightgcn --dataset ml-100k --encoder.layers=3. `--encoder.KEY=V` sets the
    backbone's own config. --nproc 2: two data-parallel workers, the same global batch and results.
    """
    from pocketrec.backbones.base import backbone_class
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.train import distributed
    from pocketrec.train.teacher import final_test_metrics, load_teacher_config, train_teacher
    from pocketrec.train.trainer import check_run_folder

    worker = False
    try:
        given = [f"dataset={dataset}", *([f"backbone={backbone}"] if backbone else [])]
        cfg = load_teacher_config(config, [*ctx.args, *given])
        cfg.out = str(out or Path("runs") / f"teacher-{Path(dataset).stem}")
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1 and not distributed.launched():
            check_run_folder(cfg.out, resume=resume, overwrite=overwrite)
            _launch("train", nproc, dist_timeout)
            return
        worker = _join_workers(dist_timeout)
        distributed.on_main(lambda: check_run_folder(cfg.out, resume=resume, overwrite=overwrite))
        if quiet:
            cfg.train.progress = False
        data = backbone_class(cfg.backbone).load_dataset(cfg.dataset)
        _say(f"{data.name}: {data.num_items:,} items ({data.protocol} protocol)"
             + (f"; {distributed.world_size()} workers" if worker else ""))
        _, result = train_teacher(data, cfg, resume=resume)
    except user_errors() as err:
        fail(str(err))
    finally:
        if worker:
            distributed.shutdown()
    _say(f"best epoch {result.best_epoch + 1}; test {format_metrics(final_test_metrics(result))}")
    _say(f"checkpoint: {Path(cfg.out) / 'best'}")


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
                                                        f"{', '.join(_method_names())} (default: every method of "
                                                        "--family)"),
          teacher: Path | None = typer.Option(None, help="use this teacher checkpoint instead of training one"),
          out: Path | None = typer.Option(None, help="bench folder (default runs/bench-DATASET); finished "
                                                     "models in it are reused"),
          config: Path | None = typer.Option(None, help="YAML with BenchConfig keys (teacher:, student:, ...)"),
          family: str | None = typer.Option(None, help="session (default: a session teacher and its methods) or "
                                                       "cf (a LightGCN teacher, the collaborative-filtering methods "
                                                       "and RULE, on user-item data)"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Build every method at every budget, evaluate, time on device, and write a report with plots.

    Example: pocketrec bench --dataset tmall --budgets 3%,10% --teacher runs/teacher-tmall/best
    --student.epochs=3. Overrides as --key=value (see pocketrec.bench.runner.BenchConfig).

    --family cf runs the collaborative-filtering family on user-item data (pocketrec.bench.cf_runner): a LightGCN
    teacher, cf-tt, cf-codebook, the cf baselines and RULE (trained once, customised per budget), each exported
    as one user's device file, e.g. pocketrec bench --dataset ml-100k --family cf --budgets 2%,5%,10%
    (default folder runs/bench-DATASET-cf).

    A method's own options (those of `pocketrec compress --method M`) go as METHOD.KEY=VALUE entries of
    --method_options, e.g. --method_options=eodrec.dtype=int8,eodrec.max_codebooks=64,tt.train.epochs=5
    (or a method_options: list in the YAML); a method run with options gets its own folder in OUT.
    """
    from pocketrec.bench.cf_runner import bench_cf, cf_markdown, load_bench_config

    try:
        given = [f"dataset={dataset}", f"budgets={budgets}"]
        if methods:
            given.append(f"methods={methods}")
        if teacher:
            given.append(f"teacher_checkpoint={teacher}")
        if out:
            given.append(f"out={out}")
        if family:
            given.append(f"family={family}")
        cfg = load_bench_config(config, [*ctx.args, *given])
        if cfg.family == "cf":
            rows, md, page = bench_cf(cfg, _command_line(), quiet,
                                      log=lambda line: console.print(f"[dim]bench[/dim] {escape(line)}"))
            print(cf_markdown(rows))
            console.print(f"report: {md} and {page}")
        else:
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
    _demo_rule(dataset, out, quiet, titles)
    _demo_peel(dataset, out, quiet, titles)
    _demo_fleet(dataset, out, titles)


def _demo_rule(dataset: str, out: Path, quiet: bool, titles: dict[str, str]) -> None:
    """RULE in the demo: trained once, one device file per budget (:func:`pocketrec.bench.cf_demo.run_rule_demo`)."""
    from pocketrec.bench.cf_demo import run_rule_demo
    from pocketrec.device.runtime import load

    console.print("\n[bold]RULE[/bold]: one elastic model, a device file for any budget without retraining")
    try:
        result = run_rule_demo(dataset, out, log=lambda line: console.print(f"[dim]rule[/dim] {line}"), quiet=quiet)
    except user_errors() as err:
        fail(str(err))
    table = Table(title=f"RULE on {dataset}: one training ({result['train_seconds']:.0f} s), then per budget")
    for column in ("budget", "table bytes", "file bytes", "blocks", "dtype", "test R@20", "test NDCG@20", "seconds"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(row["budget"], f"{row['table_bytes']:,}", f"{row['artifact_bytes']:,}", str(row["blocks"]),
                      row["dtype"], f"{100 * row['test']['recall@20']:.2f}", f"{100 * row['test']['ndcg@20']:.2f}",
                      f"{row['seconds']:.2f}")
    console.print(table)
    smallest = result["rows"][0]
    items, _ = load(smallest["artifact"]).recommend_user(result["user"], k=5)
    console.print(f"user {result['user']} on the {smallest['budget']} file ({smallest['artifact_bytes']:,} B): "
                  + "; ".join(titles.get(i, i) for i in items))


def _demo_peel(dataset: str, out: Path, quiet: bool, titles: dict[str, str]) -> None:
    """PEEL in the demo: the RULE model refined per user group, a user's files, a shrink on the device
    (:func:`pocketrec.bench.cf_demo.run_peel_demo`)."""
    from pocketrec.bench.cf_demo import run_peel_demo

    console.print("\n[bold]PEEL[/bold]: the RULE model refined per user group; each group's devices get its blocks")
    try:
        result = run_peel_demo(dataset, out, log=lambda line: console.print(f"[dim]peel[/dim] {line}"), quiet=quiet)
    except user_errors() as err:
        fail(str(err))
    table = Table(title=f"PEEL on {dataset}: one refinement ({result['train_seconds']:.0f} s, {result['groups']} "
                        f"user groups); user {result['user']} is in group {result['group']}")
    for column in ("budget", "table bytes", "file bytes", "blocks", "dtype", "test R@20 (all users)", "seconds"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(row["budget"], f"{row['table_bytes']:,}", f"{row['artifact_bytes']:,}", str(row["blocks"]),
                      row["dtype"], f"{100 * row['test']['recall@20']:.2f}", f"{row['seconds']:.2f}")
    console.print(table)
    console.print(f"on the device: the {result['rows'][-1]['budget']} file shrunk to {result['rows'][0]['budget']} "
                  f"({result['shrunk_table_bytes']:,} B of table) in {result['shrink_ms']:.1f} ms, no server; "
                  f"{'the same file as' if result['shrunk_equals_direct'] else '**not** the same file as'} the one "
                  f"built for that budget. User {result['user']}: "
                  + "; ".join(titles.get(i, i) for i in result["items"]))


def _demo_fleet(dataset: str, out: Path, titles: dict[str, str]) -> None:
    """The fleet service in the demo: served for a few seconds, two budgets fetched by the client
    (:func:`pocketrec.bench.cf_demo.run_fleet_demo`)."""
    from pocketrec.extras import MissingExtraError, require
    from pocketrec.fleet import SERVE_HINT

    console.print("\n[bold]Fleet service[/bold]: devices ask a server for their own file (pocketrec serve / fetch)")
    try:
        require(("fastapi", "uvicorn", "httpx", "prometheus_client"), SERVE_HINT)
    except MissingExtraError as err:
        console.print(f"skipped: {err}")
        return
    from pocketrec.bench.cf_demo import run_fleet_demo

    try:
        result = run_fleet_demo(dataset, out)
    except user_errors() as err:
        fail(str(err))
    console.print(f"served {', '.join(result['models'])} at {result['url']} (signed files); user {result['user']} "
                  f"is in PEEL group {result['group']}")
    for row in result["rows"]:
        console.print(f"  fetched {row['budget']}: {row['path']} ({row['file_bytes']:,} B, table "
                      f"{row['table_bytes']:,} B; signature verified; {row['ms']:.0f} ms, server cache {row['cache']})"
                      f": " + "; ".join(titles.get(i, i) for i in row["items"]))
    first, last = result["rows"][0], result["rows"][-1]
    console.print(f"  grew the {first['budget']} file to {last['budget']} with a {result['delta_bytes']:,} B delta "
                  f"(the {last['budget']} file is {last['file_bytes']:,} B); server stopped")


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
    from pocketrec.device.signing import ENV_KEY, key_of

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

            key = key_of(sign_key)
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
                                                                                "$POCKETREC_SIGNING_KEY when set)"),
              fast_scan: bool = typer.Option(False, "--fast-scan", help="rank a 4-bit codebook table (K = 16, "
                                                                        "inner product) on FAISS fast-scan, "
                                                                        "same ranks (needs the faiss extra)")
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
    from pocketrec.device.signing import key_of

    items = [h.strip() for h in (history or "").split(",") if h.strip()]
    try:
        if k < 1:
            raise ValueError(f"-k must be at least 1, got {k}")
        key = key_of(verify_key)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load(artifact, key=key, fast_scan=fast_scan)
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
             quiet: bool = typer.Option(False, help="no progress bars"),
             nproc: int = typer.Option(1, "--nproc", help=NPROC_HELP),
             dist_timeout: float | None = typer.Option(None, "--dist-timeout", help=TIMEOUT_HELP)) -> None:
    """Compress a teacher into a small student that fits a byte budget for its item table.

    Example: pocketrec compress --method odrec --teacher runs/teacher-tmall/best --budget 3% --train.epochs=10

    Method options go as --key=value: odrec: --t=2 --num_cores=2 --warm_start=true
    --order=identity|clustered; eodrec: --M=0 --K=0 (0: the budget solver picks) --max_codebooks=48
    --codes=rq (default) | rq-icm | pq | faiss-rq | faiss-lsq | faiss-prq | faiss-pq | ranked | learned | gumbel
    (--code_candidates=rq,faiss-lsq,... for ranked) --bitpack=true; both:
    --dtype=float32|float16, eodrec also int8 (stored precision of the table's weights; eodrec's default float16),
    --distill.KEY=V (kd_weight, cl_weight, pred_weight, bidirectional, teacher_lr, ...) and --train.KEY=V.
    tt is odrec with t=1; the baselines dense-small, kmeans, int8 and int4 run too (see
    pocketrec.methods.registry for each method's config class). Collaborative filtering: cf-tt, cf-codebook
    and rule take a LightGCN teacher; peel takes a RULE run as --teacher (--user_groups=8
    --rotation=users|none --controller=true|false), then `pocketrec customize --group/--user`.
    """
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.methods.registry import METHODS
    from pocketrec.search.budget import format_bytes
    from pocketrec.train import distributed
    from pocketrec.train.checkpoint import read_meta
    from pocketrec.train.compat import dataset_of, load_dataset_of
    from pocketrec.train.trainer import check_run_folder

    worker = False
    try:
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        recipe = METHODS[method]
        if (Path(teacher) / "best" / "checkpoint.json").is_file():  # a run folder: its best checkpoint
            teacher = Path(teacher) / "best"
        recipe.check_teacher(teacher)  # before the data is loaded: a teacher of the other family is one line
        teacher_meta = read_meta(teacher)
        name = dataset_of(teacher_meta, dataset, what=f"teacher {teacher}")
        given = [f"teacher={teacher}", f"dataset={name}", *([f"budget={budget}"] if budget else [])]
        cfg = recipe.load_config(config, [*ctx.args, *given])
        cfg.out = str(out or cfg.out or Path("runs") / f"{method}-{Path(str(name)).stem}-"
                                                       f"{cfg.budget.replace('%', 'pct')}")
        if nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1 and not distributed.launched():
            check_run_folder(cfg.out, overwrite=overwrite)
            _launch("compress", nproc, dist_timeout)
            return
        worker = _join_workers(dist_timeout)
        distributed.on_main(lambda: check_run_folder(cfg.out, overwrite=overwrite))
        if quiet and hasattr(cfg, "train"):
            cfg.train.progress = False
        data = load_dataset_of(teacher_meta, dataset, what=f"teacher {teacher}")
        _say(f"{data.name}: {data.num_items:,} items; teacher {teacher}; "
             f"budget {'fixed' if recipe.fixed_size else cfg.budget}"
             + (f"; {distributed.world_size()} workers" if worker else ""))
        student, result = recipe.compress(cfg, data)
    except user_errors() as err:
        fail(str(err))
    finally:
        if worker:
            distributed.shutdown()
    _say(f"student table {student.table.describe()}")
    _say(f"{format_bytes(result.table_bytes)} vs dense {format_bytes(result.dense_table_bytes)} "
         f"({result.ratio:.1f}x smaller)")
    peel = result.meta.get("peel")
    trained = f"best epoch {result.fit.best_epoch + 1}" if result.fit is not None else \
        (f"{len(peel['groups'])} user groups refined in {peel['refine_seconds']:.0f} s "
         f"({sum(g['refined'] for g in peel['groups'])} kept their refinement)" if peel else "no training (post-hoc)")
    _say(f"{trained}; test {format_metrics(result.test)}")
    _say(f"checkpoint: {Path(cfg.out) / 'best'}")


@app.command()
def customize(checkpoint: Path = typer.Argument(..., help="a RULE or PEEL run (runs/rule-ml-100k or its best/ "
                                                            "folder)"),
              budget: str | None = typer.Option(None, help="item-table budget of the device: '5%' or '20x' of the "
                                                           "dense table, '40KB', or bytes"),
              budgets: str | None = typer.Option(None, help="several budgets, comma-separated (one artifact each, "
                                                            "OUT is then a folder)"),
              out: Path = typer.Option(..., "-o", "--out", help="device file (.safetensors); a folder with --budgets"),
              dtype: str = typer.Option("auto", help="stored precision of the blocks: float32, float16, int8, or "
                                                     "auto (the best on validation)"),
              strategy: str = typer.Option("evolution", help="evolution (RULE's search), or the baselines random, "
                                                             "uniform, popularity"),
              arch: Path | None = typer.Option(None, help="use this architecture (JSON groups x blocks of 0/1) "
                                                          "instead of searching"),
              user: str | None = typer.Option(None, "--user", help="add these users' vectors and items to the file "
                                                                   "(raw ids, comma-separated, or 'all'); default: "
                                                                   "the item table alone. PEEL: one user, whose "
                                                                   "group's blocks the file gets"),
              group: int | None = typer.Option(None, "--group", help="PEEL: the user group whose blocks the file "
                                                                     "gets (the item table alone)"),
              report: Path | None = typer.Option(None, help="write the chosen architectures and their figures "
                                                            "as JSON (default with --budgets: OUT/report.json)"),
              resizable: bool | None = typer.Option(None, "--resizable/--no-resizable",
                                                    help="store the block priority (2 bytes per group and block, "
                                                         "counted in the budget) so that the device can shrink "
                                                         "the file itself (pocketrec resize); default: no for "
                                                         "RULE, yes for PEEL"),
              sign_key: Path | None = typer.Option(None, "--sign-key", help="sign the artifacts with the key in "
                                                                            "this file (default: "
                                                                            "$POCKETREC_SIGNING_KEY when set)"),
              ) -> None:
    """Fit a trained RULE or PEEL model to device budgets without retraining, then write the device file.

    RULE: an architecture search per budget. PEEL (needs --group g or --user U): the blocks of largest alpha
    of that user group that fit; its files are resizable on the device unless --no-resizable.

    Example: pocketrec customize runs/rule-ml-100k --budget 5% -o device.safetensors;
    pocketrec customize runs/rule-ml-100k --budgets 1%,2%,5%,10%,25% -o devices/ (one file per budget, a
    report.json and a curve.png of validation Recall@20 against bytes);
    pocketrec customize runs/peel-ml-100k --budget 5% --user 196 -o device.safetensors.
    """
    import time

    from pocketrec.device.artifact import check_target
    from pocketrec.device.signing import key_of
    from pocketrec.methods.customize import Customizer, read_architecture
    from pocketrec.search.budget import format_bytes

    start = time.perf_counter()
    try:
        if (budget is None) == (budgets is None):
            raise ValueError("give --budget B (one file) or --budgets B1,B2,... (a folder of files)")
        peel_run = is_peel_run(checkpoint)
        wanted = [budget] if budget is not None else [b.strip() for b in str(budgets).split(",") if b.strip()]
        if not wanted:
            raise ValueError("--budgets is empty")
        if budgets is not None:
            if out.exists() and not out.is_dir():
                raise ValueError(f"{out} is a file; with --budgets OUT is a folder")
            prefix = "peel" if peel_run else "rule"
            targets = [out / f"{prefix}-{b.replace('%', 'pct')}.safetensors" for b in wanted]
            report = report or out / "report.json"
        else:
            targets = [out]
        for target in targets:
            check_target(target)
        mask = read_architecture(arch) if arch is not None else None
        key = key_of(sign_key)
        users = [u.strip() for u in user.split(",") if u.strip()] if user else None
        if peel_run:
            customizer, group = _peel_customizer(checkpoint, users, group, strategy, mask,
                                                 resizable=True if resizable is None else resizable)
        elif group is not None:
            raise ValueError("--group takes a PEEL run (`pocketrec compress --method peel`); this is a RULE run")
        else:
            customizer = Customizer(checkpoint, resizable=bool(resizable))
        loaded = time.perf_counter() - start
        choices = [customizer.choose(b, group=group, dtype=dtype) if group is not None else
                   customizer.choose(b, strategy=strategy, dtype=dtype, mask=mask) for b in wanted]
        if budgets is not None:
            out.mkdir(parents=True, exist_ok=True)
        for choice, target in zip(choices, targets, strict=True):
            written_start = time.perf_counter()
            customizer.write(choice, target, users=users, key=key)
            choice.seconds += time.perf_counter() - written_start
    except user_errors() as err:
        fail(str(err))
    if group is not None:
        console.print(f"loaded {customizer.checkpoint} in {loaded:.2f} s (PEEL: user group {group} of "
                      f"{customizer.num_groups}, blocks by alpha{', resizable' if customizer.resizable else ''})")
    else:
        estimator = customizer.estimator_report
        console.print(f"loaded {customizer.checkpoint} in {loaded:.2f} s (estimator: {estimator['archs']} labelled "
                      f"architectures, Kendall tau {estimator['kendall_tau']})")
    table = Table(title="customized device files")
    for column in ("budget", "table bytes", "file bytes", "blocks", "dtype", "valid R@20", "seconds", "file"):
        table.add_column(column)
    for c in choices:
        table.add_row(c.budget, f"{c.table_bytes:,}", f"{c.artifact_bytes:,}", str(int(c.mask.sum())), c.dtype,
                      f"{c.verified:.4f}" if c.verified is not None else "-", f"{c.seconds:.2f}", str(c.artifact))
    console.print(table)
    console.print(f"dense table: {format_bytes(customizer.dense_bytes)}; {len(choices)} file(s) in "
                  f"{time.perf_counter() - start:.2f} s")
    if report is not None:
        from pocketrec.methods.customize import write_report

        write_report(report, customizer, choices)
        console.print(f"report: {report}")


def is_peel_run(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` (a run folder or its ``best/``) is a PEEL run (unreadable ones are not)."""
    from pocketrec.methods.customize import run_folder_of
    from pocketrec.train.checkpoint import read_meta

    try:
        return read_meta(run_folder_of(checkpoint)[0]).get("method") == "peel"
    except ValueError:
        return False


def _peel_customizer(checkpoint: Path, users: list[str] | None, group: int | None, strategy: str,
                     mask: Any, resizable: bool = True) -> tuple[Any, int]:
    """The PEEL customizer and the group its files are for (``--group``, or the group of the one ``--user``)."""
    from pocketrec.methods.peel_customize import PeelCustomizer

    if mask is not None or strategy != "evolution":
        raise ValueError("a PEEL run picks its blocks by alpha: --arch and --strategy are RULE's")
    if (group is None) == (not users):
        raise ValueError("a PEEL run serves one user group: give --group g (the table alone) or --user U")
    if users and len(users) != 1:
        raise ValueError("a PEEL file is for one user group: give one --user")
    customizer = PeelCustomizer(checkpoint, resizable=resizable)
    return customizer, customizer.check_group(group) if group is not None else customizer.group_of(users[0])


# ------------------------------------------------------------------ dynamic budgets (elastic artifacts)


def _absolute_budget(text: str) -> int:
    """Bytes of an absolute budget ('40KB', '1.5MB', '48000'); '%' and 'x' need the dense table's size, which
    an artifact does not record."""
    from pocketrec.search.budget import parse_budget

    if str(text).strip().lower().endswith(("%", "x")):
        raise ValueError(f"--budget {text!r}: resize takes an item-table size in bytes, KB or MB ('40KB', "
                         "'1.5MB', '48000'); a percentage or ratio needs the dense table's size, which an "
                         "artifact does not record")
    return parse_budget(text)


@app.command()
def resize(artifact: Path = typer.Argument(..., help="elastic device artifact (.safetensors) with a block priority"),
           out: Path = typer.Option(..., "-o", "--out", help="the resized artifact (written atomically)"),
           budget: str | None = typer.Option(None, help="new item-table budget: bytes, '40KB', '1.5MB' (not % or "
                                                        "x); with --delta it must be the delta's target bytes"),
           delta: Path | None = typer.Option(None, "--delta", help="grow with this delta (`pocketrec delta`) "
                                                                   "instead of shrinking"),
           in_place: bool = typer.Option(False, "--in-place", help="allow OUT to be ARTIFACT (replaced "
                                                                   "atomically)"),
           sign_key: Path | None = typer.Option(None, "--sign-key", help="sign the result with the key in this "
                                                                         "file (a resized artifact is otherwise "
                                                                         "unsigned, unless the delta carries the "
                                                                         "target's signature)")) -> None:
    """Change an elastic (RULE/PEEL) artifact's budget on the device, numpy only, no server.

    Shrink: pocketrec resize big.safetensors --budget 40KB -o small.safetensors drops the lowest-priority
    blocks (the file is then the one built directly for 40KB). Grow: pocketrec resize small.safetensors
    --delta d.safetensors -o big.safetensors adds the blocks of a delta made by `pocketrec delta BIG SMALL`
    (refused unless it was made for this artifact). Budgets are item-table bytes.
    """
    from pocketrec.device.runtime import ArtifactError, load
    from pocketrec.device.signing import read_key

    try:
        if delta is None and budget is None:
            raise ValueError("give --budget B to shrink, or --delta FILE to grow")
        if out.resolve() == artifact.resolve() and not in_place:
            raise ValueError(f"OUT is ARTIFACT ({out}): write elsewhere, or pass --in-place to replace it")
        if out.is_dir():
            raise ValueError(f"{out} is a directory; give the output file's name")
        wanted = _absolute_budget(budget) if budget is not None else None
        key = read_key(sign_key) if sign_key is not None else None
        model = load(artifact)
        before = model.table_bytes
        if delta is None:
            after = model.shrink(wanted)
        else:
            from pocketrec.device.np_resize import Delta

            changes = Delta.load(delta)
            if wanted is not None and wanted != changes.target_table_bytes:
                raise ValueError(f"--budget {budget} ({wanted:,} B) is not the delta's target "
                                 f"({changes.target_table_bytes:,} B of table); drop --budget to just apply it")
            after = model.grow(changes)
        written = model.save(out, key=key)
    except (*user_errors(), ArtifactError, OSError) as err:
        fail(str(err))
    signed = "signed" if "signature" in model.manifest or key is not None else "unsigned"
    console.print(f"{'shrank' if delta is None else 'grew'} the item table {before:,} -> {after:,} B; wrote "
                  f"{written} ({written.nbytes:,} bytes, {signed})")


@app.command("delta")
def delta_command(big: Path = typer.Argument(..., help="the larger elastic artifact"),
                  small: Path = typer.Argument(..., help="the smaller one (BIG with blocks dropped, e.g. by "
                                                         "`pocketrec resize`)"),
                  out: Path = typer.Option(..., "-o", "--out", help="the delta file (.safetensors)")) -> None:
    """Make the delta that grows SMALL into BIG: only the blocks SMALL lacks, checksummed (server side).

    Example: pocketrec delta big.safetensors small.safetensors -o grow.safetensors; on the device:
    pocketrec resize small.safetensors --delta grow.safetensors -o big.safetensors.
    """
    from pocketrec.device.np_resize import make_delta
    from pocketrec.device.runtime import ArtifactError

    try:
        if out.resolve() in (big.resolve(), small.resolve()):
            raise ValueError(f"OUT ({out}) would overwrite an input artifact")
        if out.is_dir():
            raise ValueError(f"{out} is a directory; give the delta file's name")
        made = make_delta(big, small)
        written = made.save(out)
    except (*user_errors(), ArtifactError, OSError) as err:
        fail(str(err))
    console.print(f"wrote {written} ({written.nbytes:,} bytes: {made.nbytes:,} B of blocks, target table "
                  f"{made.target_table_bytes:,} B)")


# ------------------------------------------------------------------ the fleet service


def _served(entries: list[str]) -> dict[str, Path]:
    """``NAME=RUN`` or ``RUN`` (named after its folder) -> {name: run}; a name twice is an error."""
    from pocketrec.methods.customize import run_folder_of

    named: dict[str, Path] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        run = Path(path if sep else entry)
        name = name if sep else run_folder_of(run)[1].name
        if not name:
            raise ValueError(f"{entry!r}: an empty model name")
        if name in named:
            raise ValueError(f"two models are called {name!r}: name them NAME=RUN")
        named[name] = run
    return named


@app.command()
def serve(checkpoints: list[str] = typer.Argument(..., help="RULE or PEEL runs to serve: RUN (named after its "
                                                             "folder) or NAME=RUN"),
          host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: every interface)"),
          port: int = typer.Option(8080, help="port to listen on"),
          cache_dir: Path = typer.Option(Path("runs/fleet-cache"), help="disk cache of built files (kept across "
                                                                         "restarts)"),
          cache_size: str = typer.Option("1GB", help="the cache's size cap; least recently used files go first"),
          dtype: str = typer.Option("auto", help="stored precision of the files: float32, float16, int8, or auto "
                                                 "(the best on validation per budget)"),
          verify_users: int = typer.Option(1000, help="validation users that check a candidate architecture "
                                                      "(fewer: faster first builds)"),
          build_threads: int = typer.Option(2, help="threads that build files (one build at a time per model)"),
          sign_key: Path | None = typer.Option(None, "--sign-key", help="sign every file with the key in this file "
                                                                        "(default: $POCKETREC_SIGNING_KEY when "
                                                                        "set)")) -> None:
    """Serve device files for every budget from trained RULE / PEEL runs over HTTP (FastAPI + uvicorn).

    Devices ask POST /v1/artifacts for a model, a budget and a user (or a PEEL user group), and get the file,
    signed; POST /v1/deltas grows a file they have; GET /v1/models, /healthz, /metrics. Files are built on the
    first request and cached on disk; concurrent requests for one file cause one build. See docs/fleet.md.

    Example: pocketrec serve runs/rule-ml-100k runs/peel-ml-100k --port 8080 --sign-key key.txt;
    then: pocketrec fetch --server http://127.0.0.1:8080 --model rule-ml-100k --budget 5% -o device.safetensors
    """
    import time

    from pocketrec.device.signing import key_of
    from pocketrec.extras import require
    from pocketrec.fleet import SERVE_HINT
    from pocketrec.search.budget import parse_budget

    try:
        require(("fastapi", "uvicorn", "prometheus_client"), SERVE_HINT)
        from pocketrec.fleet.app import Fleet, create_app
        from pocketrec.fleet.cache import ArtifactCache
        from pocketrec.fleet.models import ServedModel

        key = key_of(sign_key)
        cap = parse_budget(cache_size)
        models = {}
        for name, run in _served(checkpoints).items():
            start = time.perf_counter()
            models[name] = ServedModel(name, run, dtype=dtype, verify_users=verify_users)
            info = models[name].info()
            console.print(f"model {name}: {info['method']} on {info['dataset']}, table budgets "
                          f"{info['budgets']['min_table_bytes']:,}-{info['budgets']['max_table_bytes']:,} B "
                          f"(loaded in {time.perf_counter() - start:.1f} s)")
        cache = ArtifactCache(cache_dir, cap)
        fleet = Fleet(models, cache, key, build_threads)
    except user_errors() as err:
        fail(str(err))
    import uvicorn

    console.print(f"cache: {cache_dir} ({len(cache)} files, cap {cache_size}); files are "
                  f"{'signed' if key is not None else '[yellow]unsigned[/yellow] (no --sign-key)'}")
    uvicorn.run(create_app(fleet), host=host, port=port, log_level="info")


SERVER_HELP = "the server's URL (pocketrec serve), e.g. http://127.0.0.1:8080"
VERIFY_HELP = "require the signature of this key (default: $POCKETREC_SIGNING_KEY when set; else the checksum only)"


@app.command()
def fetch(server: str = typer.Option(..., help=SERVER_HELP),
          model: str = typer.Option(..., help="the model's name on the server (GET /v1/models)"),
          budget: str = typer.Option(..., help="item-table budget: bytes, '40KB', '3MB', or '5%' / '20x' of the "
                                               "dense table"),
          out: Path = typer.Option(..., "-o", "--out", help="the device file to write"),
          user: str | None = typer.Option(None, "--user", help="the user the file is for (its vector and items are "
                                                               "in the file)"),
          group: int | None = typer.Option(None, "--group", help="PEEL: the user group (the item table alone)"),
          fmt: str = typer.Option("safetensors", "--format", help="safetensors (numpy runtime) or onnx"),
          verify_key: Path | None = typer.Option(None, "--verify-key", help=VERIFY_HELP),
          timeout: float = typer.Option(120.0, help="seconds to wait for the server (a first build included)")) -> None:
    """Fetch a device file fitted to a budget from a pocketrec server; verified before it is written.

    Example: pocketrec fetch --server http://127.0.0.1:8080 --model peel-ml-100k --budget 3% --user 196
    -o device.safetensors --verify-key key.txt
    """
    from pocketrec.device.client import fetch as fetch_file
    from pocketrec.device.signing import key_of

    try:
        if fmt not in ("safetensors", "onnx"):
            raise ValueError(f"--format must be safetensors or onnx, got {fmt!r}")
        if out.is_dir():
            raise ValueError(f"{out} is a directory; give the device file's name")
        got = fetch_file(server, model, budget, out, user=user, group=group, fmt=fmt, key=key_of(verify_key),
                         timeout=timeout)
    except (*user_errors(), OSError) as err:
        fail(str(err))
    console.print(f"wrote {got.path} ({got.nbytes:,} bytes, item table {got.table_bytes:,} B, "
                  f"{got.headers.get('Dtype', '')}; {_checked(got)}; server cache {got.cache}, "
                  f"{got.seconds * 1000:.0f} ms)")


def _checked(got: Any) -> str:
    return "signature verified" if got.signature_checked else "checksum verified, signature not checked (no key)"


@app.command()
def grow(artifact: Path = typer.Argument(..., help="the device file to grow (fetched from SERVER)"),
         server: str = typer.Option(..., help=SERVER_HELP),
         budget: str = typer.Option(..., help="the larger item-table budget: bytes, '40KB', or '5%' / '20x'"),
         out: Path = typer.Option(..., "-o", "--out", help="the grown file (may be ARTIFACT itself)"),
         verify_key: Path | None = typer.Option(None, "--verify-key", help=VERIFY_HELP),
         timeout: float = typer.Option(120.0, help="seconds to wait for the server")) -> None:
    """Grow a device file to a larger budget with a delta from the server: only the missing blocks travel.

    Example: pocketrec grow device.safetensors --server http://127.0.0.1:8080 --budget 10% -o device.safetensors
    """
    from pocketrec.device.client import grow as grow_file
    from pocketrec.device.signing import key_of

    try:
        if out.is_dir():
            raise ValueError(f"{out} is a directory; give the grown file's name")
        before = artifact.stat().st_size if artifact.is_file() else 0
        got = grow_file(server, artifact, budget, out, key=key_of(verify_key), timeout=timeout)
    except (*user_errors(), OSError) as err:
        fail(str(err))
    console.print(f"grew {artifact} ({before:,} bytes) with a {got.received:,}-byte delta to {got.path} "
                  f"({got.nbytes:,} bytes, item table {got.table_bytes:,} B; {_checked(got)}; "
                  f"{got.seconds * 1000:.0f} ms)")
