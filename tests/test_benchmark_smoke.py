"""Smoke runs of the compression benchmark (its --quick setting): the variants run end to end and learn."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = {"odrec": ["odrec", "odrec-t1", "odrec-no-kd"], "eodrec": ["eodrec", "eodrec-mutual", "eodrec-gumbel",
                                                                    "dense-small"]}


@pytest.mark.parametrize("method", sorted(SUBSETS))
def test_compress_benchmark_quick(method, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compress.py"), "--method", method, "--quick",
                           "--out", str(tmp_path), "--variants", ",".join(SUBSETS[method])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| synthetic")]
    assert [r[1] for r in rows] == ["teacher", *SUBSETS[method]]
    assert rows[0][7] == "100.0% / 100.0%"  # share of the teacher's Recall@20 / MRR@20
    for row in rows[1:]:
        share = float(row[7].split("%")[0])
        assert abs(share - 100 * float(row[4]) / float(rows[0][4])) < 0.2
        assert float(row[3].rstrip("x")) >= 3.9  # the 4x budget is met
        if row[1] != "dense-small":
            assert float(row[4]) > 60.0  # Recall@20 %; 60 items, so a random ranker gets ~33%
    assert not (ROOT / "benchmarks" / "results" / f"{method}-quick.json").exists()


def test_codebook_rows_benchmark_times_every_implementation(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "codebook_rows.py"), "--items", "3000",
                           "--layouts", "8x4,2x64", "--repeats", "1", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| 3,000")]
    assert [r[2] for r in rows] == ["8x4", "2x64"]
    assert all(float(v) > 0 for r in rows for v in r[3:])


def test_tt_order_benchmark_fits_every_order(tiny_teacher_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tt_order.py"), "--teachers",
                           str(tiny_teacher_dir), "--ratio", "4", "--steps", "50", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| synthetic")]
    assert [r[2] for r in rows] == ["identity", "random", "clustered"]
    assert all(float(r[5]) >= 4.0 and 0.0 < float(r[6]) < 1.5 for r in rows)  # ratio met; a fit, not noise


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables printed in ``text``, each a list of rows keyed by the header's cells."""
    tables, header, rows = [], None, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|") and header is None:
            header = [c.strip() for c in line.split("|")[1:-1]]
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            rows.append(dict(zip(header, (c.strip() for c in line.split("|")[1:-1]), strict=True)))
        elif header is not None:
            tables.append(rows)
            header, rows = None, []
    return tables


def test_peel_benchmark_quick(tmp_path):
    """benchmarks/peel.py --quick on the built-in ml-100k: PEEL, RULE and uniform at two budgets, a small fleet,
    a shrink / grow round trip on the real checkpoint; nothing written to benchmarks/results."""
    from pocketrec.tables.dense import DenseTable

    before = (ROOT / "benchmarks" / "results" / "peel.json").read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peel.py"), "--quick", "--no-ablation",
                           "--budgets", "5%,25%", "--fleet-levels", "3", "--out", str(tmp_path / "peel"),
                           "--rule-root", str(tmp_path / "rule"), "--teacher-root", str(tmp_path / "teacher")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    main, _variants, fleet, dynamic = markdown_tables(proc.stdout)
    dense = DenseTable.bytes_for(1656, 64)  # ml-100k's items, the teacher's d
    chosen = {(r["budget"], r["method"]): r for r in main}
    assert {("5%", "peel"), ("5%", "rule"), ("5%", "uniform"), ("25%", "peel"), ("1x", "rule (full model)")} \
        <= set(chosen)
    for (budget, _), row in chosen.items():
        if budget != "1x":
            assert int(row["table_bytes"].replace(",", "")) <= float(budget.rstrip("%")) / 100 * dense
        assert 0 < float(row["Recall@20 %"]) <= 100
    assert [r["method"] for r in fleet] == ["fleet peel", "fleet rule", "fleet uniform"]
    (row,) = dynamic
    assert row["shrunk_equals_direct"] == row["scores_identical"] == row["grown_equals_big"] == "1"  # True
    assert int(row["delta_bytes"].replace(",", "")) < int(row["big_file_bytes"].replace(",", ""))
    assert (ROOT / "benchmarks" / "results" / "peel.json").read_bytes() == before


def test_fleet_load_benchmark_quick(tmp_path):
    """benchmarks/fleet_load.py --quick: a real `pocketrec serve` process under a small concurrent load, every file
    verified by the client; RULE and PEEL runs of a synthetic dataset saved as a CSV file (the server process
    loads it by path); nothing written to benchmarks/results."""
    import json

    from helpers import synthetic_interactions, train_cf_runs
    from pocketrec.data import load_interactions

    rows = synthetic_interactions()
    csv = tmp_path / "ratings.csv"
    lines = ["user,item,timestamp"]
    for split in ("train", "valid", "test"):
        matrix = rows.matrix(split).tocoo()
        lines += [f"{rows.users.decode([u])[0]},{rows.items.decode([i])[0]},{t}"
                  for t, (u, i) in enumerate(zip(matrix.row, matrix.col, strict=True))]
    csv.write_text("\n".join(lines) + "\n")
    rule, peel = train_cf_runs(load_interactions(str(csv)), tmp_path, dataset=str(csv))
    before = (ROOT / "benchmarks" / "results" / "fleet.json").read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fleet_load.py"), "--quick", "--rule", str(rule),
                           "--peel", str(peel), "--top", "0.6"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("FLEET "))[6:])
    load = result["load"]
    assert load["requests"] == load["answered"] == 200 and load["errors"] == 0
    assert load["hit"]["n"] > 0 and load["miss"]["n"] >= 1 and result["build_failures"] == 0
    assert result["deltas"]["delta_bytes"] < result["deltas"]["file_bytes"]
    assert result["server_peak_rss_mib"] > 0
    assert (ROOT / "benchmarks" / "results" / "fleet.json").read_bytes() == before


def test_quantizers_benchmark_quick(tmp_path):
    """benchmarks/quantizers.py --quick: two quantizers fill one layout on a tiny teacher, each judged zero-shot on
    validation, the better one distilled; nothing written to benchmarks/results."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quantizers.py"), "--quick", "--distill", "best",
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = markdown_tables(proc.stdout)
    teacher, *zero = [r for r in rows if r["zero-shot valid R@20 %"]]
    distilled = [r for r in rows if r["distilled test R@20 %"]]
    assert teacher["codes"] == "dense float32 (dense)" and teacher["budget"] == "1x"
    assert [r["codes"] for r in zero] == ["RQ13x1 (rq)", "PQ13x1 (pq)"]
    best = max(zero, key=lambda r: float(r["zero-shot valid R@20 %"]))
    assert [r["codes"] for r in distilled] == [best["codes"]] and float(distilled[0]["distilled test R@20 %"]) > 60
    assert all(0 < float(r["code error"]) < 1 for r in zero) and float(teacher["code error"]) == 0
    assert not (ROOT / "benchmarks" / "results" / "quantizers.json").exists() or "synthetic" not in \
        (ROOT / "benchmarks" / "results" / "quantizers.json").read_text()


def test_fast_scan_benchmark_quick(tmp_path):
    """benchmarks/fast_scan.py --quick: every runtime ranks a 4-bit table's catalogue, the same top-k, each timed
    against the floor; nothing written to benchmarks/results."""
    pytest.importorskip("faiss")
    pytest.importorskip("onnxruntime")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fast_scan.py"), "--quick", "--items", "20000",
                           "--dims", "32"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    times, ratios = markdown_tables(proc.stdout)
    assert times[0]["layout"] == "5x16" and float(ratios[0]["fast-scan / floor"]) > 0
    assert all(float(times[0][f"{r} p50 ms"]) > 0 for r in ("dense", "numpy", "fast-scan", "onnxruntime"))
    assert all(ratios[0][f"{r} same top-k"] == "1" for r in ("numpy (32k LUTs)", "numpy", "fast-scan", "onnxruntime"))
