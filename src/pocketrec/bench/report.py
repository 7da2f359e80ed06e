"""The bench report: Markdown and HTML pages with the results table and two plots (PNG).

* ``accuracy.png``: Recall@20 and MRR@20 (two panels; ``metrics`` chooses others, e.g. NDCG@20 for
  collaborative filtering) against item-table bytes (log scale), one line per method, the teacher as a dashed
  horizontal line;
* ``latency.png``: one-recommendation latency of the numpy runtime against item-table bytes (log-log).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pocketrec.bench.runner import COLUMNS, markdown_table, table_rows
from pocketrec.search.budget import format_bytes

STYLE = {"odrec": ("tab:blue", "o"), "tt": ("tab:cyan", "v"), "eodrec": ("tab:red", "s"),
         "dense-small": ("tab:green", "^"), "kmeans": ("tab:purple", "D"), "int8": ("tab:orange", "P"),
         "int4": ("tab:brown", "X"), "cf-tt": ("tab:blue", "o"), "cf-codebook": ("tab:red", "s"),
         "cf-kmeans": ("tab:purple", "D"), "cf-dense-small": ("tab:green", "^"), "cf-int8": ("tab:orange", "P"),
         "cf-int4": ("tab:brown", "X"), "rule": ("tab:olive", "*"),
         "peel": ("tab:pink", "p")}
LABELS = {"odrec": "OD-Rec (STT, t=2)", "tt": "TT (t=1), distilled", "eodrec": "EODRec (codebooks)",
          "dense-small": "dense, smaller d, from scratch", "kmeans": "post-hoc k-means codebooks",
          "int8": "post-hoc int8 rows", "int4": "post-hoc int4 rows", "cf-tt": "TT (t=2), fine-tuned",
          "cf-codebook": "codebooks, fine-tuned", "cf-kmeans": "post-hoc k-means codebooks",
          "cf-dense-small": "LightGCN, smaller d, from scratch", "cf-int8": "post-hoc int8 rows",
          "cf-int4": "post-hoc int4 rows", "rule": "RULE (trained once, customised)",
          "peel": "PEEL (RULE refined per user group)"}
#: the two accuracy panels: (row key, axis name)
SESSION_METRICS = (("recall@20", "Recall@20 (%)"), ("mrr@20", "MRR@20 (%)"))
CAPTION = ("Test metrics at the best-validation epoch; bytes are the item table as a device stores it "
           "(`nbytes()`), the artifact is the whole device file (encoder, table, item norms, item ids, "
           "manifest); latency is one whole-catalogue top-20 in the numpy runtime on one thread.")


def _series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] != "teacher" and "note" not in row:
            series.setdefault(row["method"], []).append(row)
    return {m: sorted(rs, key=lambda r: r["table_bytes"]) for m, rs in series.items()}


def plot(rows: list[dict[str, Any]], out: Path, title: str,
         metrics: tuple[tuple[str, str], ...] = SESSION_METRICS) -> list[Path]:
    """Write ``accuracy.png`` (a panel per entry of ``metrics``) and ``latency.png`` into ``out``; returns their
    paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    teacher = next((r for r in rows if r["method"] == "teacher"), None)
    series = _series(rows)
    paths = []

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.8), constrained_layout=True,
                             squeeze=False)
    axes = axes[0]
    for ax, (metric, name) in zip(axes, metrics, strict=True):
        for method, rs in series.items():
            color, marker = STYLE.get(method, ("black", "o"))
            ax.plot([r["table_bytes"] for r in rs], [100 * r[metric] for r in rs], marker=marker, color=color,
                    label=LABELS.get(method, method), linewidth=1.5, markersize=7)
        if teacher is not None:
            ax.axhline(100 * teacher[metric], color="black", linestyle="--", linewidth=1,
                       label=f"teacher (dense fp32, {format_bytes(teacher['table_bytes'])})")
        ax.set_xscale("log")
        ax.set_xlabel("item-table bytes (log scale)")
        ax.set_ylabel(f"test {name}")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"{title}: accuracy vs item-table bytes")
    paths.append(out / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    everything = [*([teacher] if teacher else []), *[r for rs in series.values() for r in rs]]
    for method in ["teacher", *series]:
        rs = [r for r in everything if r["method"] == method]
        color, marker = STYLE.get(method, ("black", "*"))
        ax.plot([r["table_bytes"] for r in rs], [r["latency_ms"] for r in rs], marker=marker, color=color,
                linestyle="-" if len(rs) > 1 else "none", label=LABELS.get(method, method), markersize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # plain numbers on the log axis ("2", "0.4"), not matplotlib's "2 x 10^0"
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("item-table bytes (log scale)")
    ax.set_ylabel("ms per recommendation (numpy runtime, 1 thread, log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    ax.set_title(f"{title}: latency of one whole-catalogue ranking")
    paths.append(out / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(rows: list[dict[str, Any]], out: Path, title: str, command: str = "",
                 columns: tuple[str, ...] = COLUMNS, metrics: tuple[tuple[str, str], ...] = SESSION_METRICS,
                 caption: str = CAPTION) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (with the plots) into ``out``; returns both paths. ``columns``,
    ``metrics`` and ``caption`` default to the session bench's; a row's ``remark`` is listed under the table."""
    out = Path(out)
    images = plot(rows, out, title, metrics)
    notes = [f"- {r['method']} @ {r['budget']}: {r['note']}" for r in rows if "note" in r]
    remarks = [f"- {r['method']} @ {r['budget']}: {r['remark']}" for r in rows if r.get("remark")]
    md = [f"# pocketrec bench: {title}", ""]
    if command:
        md += [f"Made with `{command}`.", ""]
    md += [caption, "", markdown_table(rows, columns)]
    if remarks:
        md += ["", *remarks]
    if notes:
        md += ["", "Not built:", *notes]
    md += ["", *[f"![{p.stem}]({p.name})" for p in images], ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in columns) + "</tr>"
                   for r in table_rows(rows))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>pocketrec bench: {html.escape(title)}"
            "</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:"
            "collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>"
            f"</head><body><h1>pocketrec bench: {html.escape(title)}</h1>"
            + (f"<p>Made with <code>{html.escape(command)}</code>.</p>" if command else "")
            + f"<table><tr>{head}</tr>{body}</table>"
            + "".join(f"<li>{html.escape(n[2:])}</li>" for n in [*remarks, *notes])
            + "".join(f"<p><img src='{p.name}' alt='{p.stem}'></p>" for p in images) + "</body></html>")
    html_path = out / "report.html"
    html_path.write_text(page)
    return md_path, html_path
