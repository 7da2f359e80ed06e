"""Helpers shared by the benchmark scripts: result rows, peak memory, printing."""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_rows(name: str, rows: list[dict[str, Any]], merge_key: tuple[str, ...] = ("dataset", "method")) -> Path:
    """Write ``results/NAME.json``, replacing earlier rows with the same ``merge_key`` values."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else []
    keys = {tuple(r.get(k) for k in merge_key) for r in rows}
    kept = [r for r in old if tuple(r.get(k) for k in merge_key) not in keys]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(kept + rows, indent=1))
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str], file=sys.stdout) -> None:
    """A plain Markdown table of ``rows``."""
    def fmt(v: Any) -> str:
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    print("| " + " | ".join(columns) + " |", file=file)
    print("|" + "---|" * len(columns), file=file)
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |", file=file)


def last_json(stdout: str, tag: str) -> dict[str, Any] | None:
    """The JSON of the last ``TAG {json}`` line a benchmark subprocess printed, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    return json.loads(lines[-1][len(tag) + 1:]) if lines else None


RECIPES = Path(__file__).resolve().parent / "recipes"


def load_recipe(name: str, script: str) -> dict[str, Any]:
    """The recipe ``benchmarks/recipes/NAME.yaml`` (or a path to a YAML file) for ``script``.

    A recipe is a named command: ``script`` (the benchmark it is for), ``args`` (the script's own options,
    ``--key`` without dashes) and ``overrides`` (the ``key=value`` / ``--key=value`` list passed through to
    pocketrec's config). See docs/benchmarks.md.
    """
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        sys.exit(f"no recipe {name!r} (known: {known})")
    recipe = yaml.safe_load(path.read_text()) or {}
    if recipe.get("script") != script:
        sys.exit(f"recipe {name!r} is for {recipe.get('script')!r}, not {script!r}")
    unknown = set(recipe) - {"script", "args", "overrides", "about"}
    if unknown:
        sys.exit(f"recipe {name!r}: unknown keys {sorted(unknown)}")
    return recipe


def parse_with_recipe(parser, script: str):
    """``parser.parse_known_args()`` with ``--recipe NAME``: the recipe's ``args`` become the parser's
    defaults (flags on the command line still win) and its ``overrides`` come before those on the command line."""
    parser.add_argument("--recipe", help="a named recipe in benchmarks/recipes/ (flags given here win over it)")
    first, _ = parser.parse_known_args()
    overrides: list[str] = []
    if first.recipe:
        recipe = load_recipe(first.recipe, script)
        args = {k.replace("-", "_"): v for k, v in (recipe.get("args") or {}).items()}
        known = {a.dest for a in parser._actions}
        if set(args) - known:
            sys.exit(f"recipe {first.recipe!r}: {script} has no options {sorted(set(args) - known)}")
        parser.set_defaults(**{k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in args.items()})
        overrides = [str(o) for o in recipe.get("overrides") or []]
    args, extra = parser.parse_known_args()
    return args, [*overrides, *extra]


def command_line(script: str) -> str:
    """The command that is running, as a reader would type it (stored in result rows)."""
    import shlex

    return shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])
