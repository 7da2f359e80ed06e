"""The documentation stays true: generated pages equal the generator's output, the README's commands run as
written, links resolve, and nothing points at design files outside the repository.

The README's code blocks are each preceded by ``<!-- test: quick -->`` (run here, in a temporary folder, on
ml-100k) or ``<!-- test: skip (reason) -->``. The two command-line blocks (session, collaborative filtering)
run by default; the Python block repeats the session tour and runs with ``POCKETREC_DOCS_FULL=1``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: pages other work is writing; a link to them may dangle until they land
PENDING: set[Path] = set()
FULL = os.environ.get("POCKETREC_DOCS_FULL") == "1"


def results_page():
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_equal_the_generator_output():
    """docs/results.md and every generated block match `python benchmarks/results_page.py` on the committed
    results files (run that command after adding or changing a result)."""
    rp = results_page()
    pages = rp.pages(rp.Page(rp.load_results()))
    assert rp.PAGE in pages and README in pages
    stale = [str(p.relative_to(ROOT)) for p, text in pages.items() if not p.is_file() or p.read_text() != text]
    assert not stale, f"out of date, run python benchmarks/results_page.py: {stale}"


def test_every_result_row_names_its_command():
    rp = results_page()
    page = rp.Page(rp.load_results())
    for name, rows in page.results.items():
        if name not in rp.RENDERERS:
            continue
        for row in rows:
            if name in ("odrec", "eodrec") and row.get("method") == "teacher":
                continue  # the teacher's figures are shown from teacher.json, with its recipe
            assert page.command(name, row)


def test_headline_is_against_the_best_dense_model():
    rp = results_page()
    page = rp.Page(rp.load_results())
    best = page.best_dense()
    for dataset, _, role, row in rp.headline_rows(page):
        if role == "dense":
            assert row == best[dataset]
            assert all(t["recall@20"] <= row["recall@20"] for t in page.teachers() if t["dataset"] == dataset)
        elif row is not None:
            assert row["table_bytes"] <= best[dataset]["table_bytes"]


def test_recipes_parse_and_name_their_script():
    import yaml

    recipes = sorted((ROOT / "benchmarks" / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        recipe = yaml.safe_load(path.read_text())
        assert recipe["script"] in ("compress.py", "teacher.py"), path
        assert (ROOT / "benchmarks" / recipe["script"]).is_file()
        assert set(recipe) <= {"script", "args", "overrides", "about"}, path


def test_recipe_flags_reach_the_script(monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import argparse

    import common

    parser = argparse.ArgumentParser()
    for flag in ("--method", "--datasets", "--teacher", "--variants", "--tag"):
        parser.add_argument(flag)
    parser.add_argument("--ratio", type=float, default=0.0)
    monkeypatch.setattr(sys, "argv", ["compress.py", "--recipe", "eodrec-tmall-d128", "--tag=-x", "--train.lr=1"])
    args, overrides = common.parse_with_recipe(parser, "compress.py")
    assert (args.method, args.datasets, args.ratio, args.tag) == ("eodrec", "tmall", 40, "-x")
    assert overrides[0] == "--train.epochs=3" and overrides[-1] == "--train.lr=1"


# ---------------------------------------------------------------------------------------------- links


def markdown_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def anchors(path: Path) -> set[str]:
    return {re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


def test_links_resolve():
    broken = []
    for page in markdown_files():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if path in PENDING:
                continue
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_no_references_to_files_outside_the_repository():
    """Docstrings and docs point at docs/*.md, never at design notes a user of the repository does not have."""
    pattern = re.compile(r"METHODS\.md|DESIGN\.md|METHODS §|DESIGN §|NOTES\.md|shared/(METHODS|DESIGN)")
    hits = []
    for folder in ("src", "benchmarks", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml") and path != Path(__file__) and "egg-info" not in str(path):
                hits += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                         if pattern.search(line)]
    assert not hits, hits
    assert not (ROOT / "NOTES.md").exists()


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


# ---------------------------------------------------------------------------------------------- README commands


def readme_blocks() -> list[tuple[str, str, str]]:
    """(marker, language, code) of every fenced block of the README."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"(?:<!-- test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", text, re.S):
        out.append((m["marker"] or "", m["lang"], m["code"]))
    return out


def test_every_readme_block_is_marked():
    blocks = readme_blocks()
    assert blocks
    unmarked = [code.splitlines()[0] for marker, _, code in blocks if not marker]
    assert not unmarked, f"mark these README blocks <!-- test: quick --> or <!-- test: skip (why) -->: {unmarked}"
    assert sum(marker == "quick" for marker, _, _ in blocks) >= 2


def run_cli_line(line: str) -> None:
    from typer.testing import CliRunner

    from pocketrec.cli import app

    words = shlex.split(line.split("  #")[0])
    assert words[0] == "pocketrec", line
    result = CliRunner().invoke(app, [*words[1:], *(["--quiet"] if words[1] in ("train", "compress") else [])])
    assert result.exit_code == 0, f"{line}\n{result.output}\n{result.exception!r}"


QUICK = [(lang, code) for marker, lang, code in readme_blocks() if marker == "quick"]
#: the quick blocks that run by default (together ~45 s on 2 cores); the others with POCKETREC_DOCS_FULL=1
DEFAULT_BLOCKS = (0, 1)


@pytest.fixture(scope="module")
def tour_folder(tmp_path_factory) -> Path:
    """One folder for every README block, run in order: a block may use what an earlier one made (the RULE and
    PEEL blocks start from the tour's LightGCN and RULE runs), as a reader running them in turn does."""
    return tmp_path_factory.mktemp("readme-tour")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(QUICK)))
def test_readme_quick_block_runs(index, tour_folder, monkeypatch):
    """A quick README block, as written, in the tour's folder (ml-100k is built in)."""
    if index not in DEFAULT_BLOCKS and not FULL:
        pytest.skip("set POCKETREC_DOCS_FULL=1 to run every README block")
    tmp_path = tour_folder
    monkeypatch.chdir(tmp_path)
    lang, code = QUICK[index]
    if lang == "bash":
        for line in code.splitlines():
            if line.strip() and not line.startswith("#"):
                run_cli_line(line)
        assert list((tmp_path / "runs").rglob("*.safetensors"))
    elif lang == "python":
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    else:
        pytest.fail(f"quick block of language {lang!r}")
