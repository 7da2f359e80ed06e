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
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pocketrec: train a recommender, compress it to a device's memory budget, ship it.")
console = Console(stderr=True)
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


def fail(message: str) -> None:
    """Print a one-line error and exit 2 (no stack trace for user errors)."""
    console.print(f"[red]error:[/red] {message}")
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
          out: Path = typer.Option(None, help="run folder; default runs/teacher-DATASET"),
          config: Path | None = typer.Option(None, help="YAML file with encoder:/train: sections"),
          resume: bool = typer.Option(False, help="continue from OUT/last if it exists"),
          quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train a teacher (session encoder + dense item table) and keep its best-on-validation checkpoint.

    Example: pocketrec train --dataset tmall --encoder.dim=128 --train.epochs=30
    """
    from pocketrec.config import load_config
    from pocketrec.data.registry import load_dataset
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.train.teacher import TeacherConfig, final_test_metrics, train_teacher

    try:
        cfg = load_config(TeacherConfig, config, [*ctx.args, f"dataset={dataset}"])
        cfg.out = str(out or Path("runs") / f"teacher-{Path(dataset).stem}")
        if quiet:
            cfg.train.progress = False
        data = load_dataset(cfg.dataset)
        console.print(f"{data.name}: {data.num_items:,} items, {data.train.num_examples:,} training examples")
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
    """Evaluate a checkpoint with full ranking (Recall/MRR/NDCG at 5, 10, 20)."""
    from pocketrec.data.registry import load_dataset
    from pocketrec.eval.evaluate import evaluate as run_eval
    from pocketrec.train.checkpoint import load_checkpoint
    from pocketrec.train.compat import check_compatible

    try:
        model, meta = load_checkpoint(checkpoint)
        data = load_dataset(dataset or meta["dataset"])
        check_compatible(meta, data, what=str(checkpoint))
        if split not in ("valid", "test"):
            raise ValueError(f"--split must be 'valid' or 'test', got {split!r}")
        metrics = run_eval(model, getattr(data, split), progress=True)
    except user_errors() as err:
        fail(str(err))
    if as_json:
        print(json.dumps(metrics))
        return
    table = Table(title=f"{checkpoint} on {data.name} ({split}, {int(metrics['examples']):,} examples)")
    table.add_column("K", justify="right")
    for name in ("Recall", "MRR", "NDCG"):
        table.add_column(f"{name}@K (%)", justify="right")
    for k in (5, 10, 20):
        table.add_row(str(k), *(f"{100 * metrics[f'{m}@{k}']:.2f}" for m in ("recall", "mrr", "ndcg")))
    Console().print(table)


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


@app.command(context_settings=OVERRIDES)
def demo(ctx: typer.Context,
         dataset: str = typer.Option("ml-100k", help="dataset name or path"),
         out: Path = typer.Option(Path("runs/demo"), help="run folder"),
         quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Train and evaluate a teacher on the built-in ml-100k, then recommend for one user.

    Runs on a fresh machine in a few minutes on 2 CPU cores; `--dataset tmall` runs the same elsewhere.
    """
    import torch

    from pocketrec.config import load_config
    from pocketrec.data.registry import load_dataset
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.train.teacher import TeacherConfig, final_test_metrics, train_teacher

    try:
        cfg = load_config(TeacherConfig, None, ["train.epochs=40", "train.patience=8", "train.lr=0.002", *ctx.args,
                                                f"dataset={dataset}", f"out={out / 'teacher'}"])
        if quiet:
            cfg.train.progress = False
        data = load_dataset(cfg.dataset)
        console.print(f"[bold]{data.name}[/bold]: {data.num_items:,} items, "
                      f"{data.train.num_examples:,} training examples ({data.protocol} protocol)")
        model, result = train_teacher(data, cfg)
    except user_errors() as err:
        fail(str(err))
    test = final_test_metrics(result)
    console.print(f"teacher: best epoch {result.best_epoch + 1}, test {format_metrics(test)} "
                  f"({result.epoch_seconds:.1f} s/epoch), item table {model.table.nbytes():,} bytes")
    history = data.test.sequences[0][:-1][-model.config.max_len:]
    with torch.no_grad():
        scores = model.score(torch.as_tensor(history).view(1, -1))[0]
    top = torch.topk(scores, 10).indices.tolist()
    titles = data.item_titles or {}
    console.print("recent history of the first test user: "
                  + "; ".join(titles.get(int(i), data.vocab.decode([i])[0]) for i in history[-5:]))
    for rank, item in enumerate(top, 1):
        console.print(f"  {rank:2d}. {titles.get(item, data.vocab.decode([item])[0])}")


@app.command()
def export(checkpoint: Path = typer.Argument(..., help="checkpoint folder (e.g. runs/teacher-tmall/best)"),
           out: Path = typer.Option(..., "-o", "--out", help="output file (model.safetensors or model.onnx)"),
           fp16: bool = typer.Option(False, "--fp16", help="store the encoder and float table parts as float16"),
           fmt: str = typer.Option("safetensors", "--format", help="safetensors (numpy runtime) or onnx"),
           k: int = typer.Option(100, help="ONNX only: number of ranked items the graph returns")) -> None:
    """Write a checkpoint as one device file: a .safetensors artifact for the numpy runtime, or ONNX.

    Example: pocketrec export runs/teacher-tmall/best -o tmall.safetensors --fp16
    """
    from pocketrec.device.runtime import ArtifactError

    try:
        if fmt == "safetensors":
            from pocketrec.device.artifact import export_artifact

            export_artifact(checkpoint, out, fp16=fp16)
        elif fmt == "onnx":
            if fp16:
                raise ValueError("--fp16 is only supported with --format safetensors")
            from pocketrec.device.onnx_export import export_onnx

            export_onnx(checkpoint, out, k=k)
        else:
            raise ValueError(f"--format must be 'safetensors' or 'onnx', got {fmt!r}")
    except (*user_errors(), ArtifactError) as err:
        fail(str(err))
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)")


@app.command()
def recommend(artifact: Path = typer.Argument(..., help="device artifact (.safetensors from `pocketrec export`)"),
              history: str = typer.Option(..., help="comma-separated raw item ids, oldest first"),
              k: int = typer.Option(10, "-k", help="number of items to recommend"),
              exclude_history: bool = typer.Option(False, help="do not recommend items of the history"),
              as_json: bool = typer.Option(False, "--json", help="print ids and scores as JSON")) -> None:
    """Recommend with the numpy runtime (no PyTorch): ranked raw item ids and scores.

    Example: pocketrec recommend tmall.safetensors --history 12,7,99 -k 10
    """
    import warnings

    from pocketrec.device.runtime import load

    items = [h.strip() for h in history.split(",") if h.strip()]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = load(artifact)
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
             method: str = typer.Option("odrec", help="compression method: odrec (TT tables) or eodrec (codebooks)"),
             teacher: Path = typer.Option(..., help="teacher checkpoint folder (e.g. runs/teacher-tmall/best)"),
             budget: str | None = typer.Option(None, help="item-table budget: '3%' or '30x' of the dense table, "
                                                          "'200KB', '1.5MB', or bytes (default: odrec 3%, "
                                                          "eodrec 2.5%)"),
             dataset: str | None = typer.Option(None, help="dataset; default: the one the teacher was trained on"),
             out: Path | None = typer.Option(None, help="run folder; default runs/METHOD-DATASET-BUDGET"),
             config: Path | None = typer.Option(None, help="YAML file with distill:/train: sections"),
             quiet: bool = typer.Option(False, help="no progress bars")) -> None:
    """Compress a teacher into a small student that fits a byte budget for its item table.

    Example: pocketrec compress --method odrec --teacher runs/teacher-tmall/best --budget 3% --train.epochs=10

    Method options go as --key=value: odrec: --t=2 --num_cores=2 --warm_start=true; eodrec: --M=0 --K=0
    (0: the budget solver picks) --codes=learned|gumbel|rq|pq --bitpack=true; both: --distill.KEY=V
    (kd_weight, cl_weight, pred_weight, bidirectional, teacher_lr, ...) and --train.KEY=V.
    """
    import importlib

    from pocketrec.data.registry import load_dataset
    from pocketrec.eval.metrics import format_metrics
    from pocketrec.search.budget import format_bytes
    from pocketrec.train.checkpoint import read_meta

    methods = ("odrec", "eodrec")
    try:
        if method not in methods:
            raise ValueError(f"--method must be one of {', '.join(methods)}, got {method!r}")
        from pocketrec.config import load_config

        recipe = importlib.import_module(f"pocketrec.methods.{method}")
        config_cls = {"odrec": "ODRecConfig", "eodrec": "EODRecConfig"}[method]

        teacher_meta = read_meta(teacher)
        name = dataset or teacher_meta.get("dataset")
        if not name:
            raise ValueError(f"{teacher}: the checkpoint does not name its dataset; pass --dataset")
        given = [f"teacher={teacher}", f"dataset={name}", *([f"budget={budget}"] if budget else [])]
        cfg = load_config(getattr(recipe, config_cls), config, [*ctx.args, *given])
        cfg.out = str(out or cfg.out or Path("runs") / f"{method}-{Path(str(name)).stem}-"
                                                       f"{cfg.budget.replace('%', 'pct')}")
        if quiet:
            cfg.train.progress = False
        data = load_dataset(cfg.dataset)
        console.print(f"{data.name}: {data.num_items:,} items; teacher {teacher}; budget {cfg.budget}")
        student, result = recipe.compress_from_config(cfg, data)
    except user_errors() as err:
        fail(str(err))
    console.print(f"student table {student.table.describe()}")
    console.print(f"{format_bytes(result.table_bytes)} vs dense {format_bytes(result.dense_table_bytes)} "
                  f"({result.ratio:.1f}x smaller)")
    console.print(f"best epoch {result.fit.best_epoch + 1}; test {format_metrics(result.test)}")
    console.print(f"checkpoint: {Path(cfg.out) / 'best'}")
