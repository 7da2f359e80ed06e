"""`pocketrec bench --family cf` end to end on synthetic user-item data: a LightGCN teacher, every CF method at
every budget that fits (a row that says so where none does), RULE trained once and customised per budget, one
user's device file per model that loads and ranks in the numpy runtime, results and report written; the CLI
reuses a finished bench and refuses a session dataset in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import synthetic_interactions
from pocketrec.bench.cf_runner import CF_METHODS, load_bench_config, run_cf_bench
from pocketrec.cli import app
from pocketrec.config import ConfigError
from pocketrec.device.runtime import load
from pocketrec.tables.dense import DenseTable

BUDGETS = "4x,40B"  # 4x: every budgeted method fits; 40 bytes: none does
OVERRIDES = ["dataset=synthetic-cf", f"budgets={BUDGETS}", "latency_repeats=2",
             "teacher.encoder.dim=16", "teacher.encoder.layers=2", "teacher.train.lr=0.01",
             "teacher.train.batch_size=256", "teacher.train.epochs=2", "teacher.train.progress=false",
             "student.epochs=1", "student.batch_size=512", "student.lr=0.01", "student.progress=false",
             "eodrec_code_epochs=1",
             "method_options=cf-tt.warm_start_steps=50,rule.num_blocks=4,rule.num_groups=5,rule.label_archs=20,"
             "rule.label_users=100,rule.estimator_epochs=50,peel.user_groups=2"]


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions()


@pytest.fixture(scope="module")
def bench_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cf-bench")
    cfg = load_bench_config(None, ["family=cf", *OVERRIDES, f"out={out}"])
    logs: list[str] = []
    rows = run_cf_bench(cfg, data, log=logs.append)
    return out, rows, logs


def test_every_cf_method_gets_a_row_at_every_budget(bench_run, data):
    out, rows, _ = bench_run
    built = {(r["method"], r["budget"]) for r in rows if "note" not in r}
    assert built == {("teacher", "-"), ("cf-int8", "fixed"), ("cf-int4", "fixed")} | {
        (m, "4x") for m in CF_METHODS if m not in ("cf-int8", "cf-int4")}
    assert {r["method"] for r in rows if "note" in r} == set(CF_METHODS) - {"cf-int8", "cf-int4"}
    assert all(r["budget"] == "40B" and "below" in r["note"] for r in rows if "note" in r)
    teacher = rows[0]
    assert teacher["method"] == "teacher" and teacher["table_bytes"] == DenseTable.bytes_for(data.num_items, 16)
    for row in (r for r in rows if "note" not in r):
        if row["budget_bytes"] is not None:
            assert row["table_bytes"] <= row["budget_bytes"]
        assert row["ratio"] == pytest.approx(teacher["table_bytes"] / row["table_bytes"])
        # one user's device file: it loads, holds that user, and ranks the catalogue in numpy
        artifact = Path(row["artifact"])
        assert artifact.parent == out / "artifacts" and artifact.stat().st_size == row["artifact_bytes"]
        items, scores = load(artifact).recommend_user(row["user"], k=5)
        assert len(items) == 5 and list(scores) == sorted(scores, reverse=True)
        assert row["latency_ms"] > 0 and 0 <= row["ndcg@20"] <= row["recall@20"] <= 1
    # a post-hoc int8 table ranks as the teacher does
    int8 = next(r for r in rows if r["method"] == "cf-int8")
    assert int8["recall@20"] == pytest.approx(teacher["recall@20"], abs=0.03)
    # fixed sizes run once; the budgets they are over are said
    assert int8["over_budgets"] == ["4x", "40B"] and "over the budgets 4x, 40B" in int8["remark"]
    int4 = next(r for r in rows if r["method"] == "cf-int4")
    assert int4["over_budgets"] == ["40B"]


def test_rule_is_trained_once_and_customised_per_budget(bench_run):
    out, rows, logs = bench_run
    assert [p.name for p in out.iterdir() if p.name.startswith("rule")] == [
        next(r for r in rows if r["method"] == "rule")["checkpoint"].split("/")[-2]]
    assert sum("rule: training" in line for line in logs) == 1
    rule = [r for r in rows if r["method"] == "rule"]
    assert [r["budget"] for r in rule] == ["4x", "40B"]
    fitted, too_small = rule
    assert fitted["customize_seconds"] > 0 and fitted["build_seconds"] > fitted["customize_seconds"]
    assert fitted["table_bytes"] <= fitted["budget_bytes"] and fitted["dtype"] in ("float32", "float16", "int8")
    assert "below one" in too_small["note"]


def test_results_are_written(bench_run):
    out, rows, _ = bench_run
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(rows))
    md = (out / "results.md").read_text()
    assert md.startswith("| method | budget | table bytes |") and "customise s" in md and "MRR" not in md
    assert md.count("does not fit") == 6 and "- cf-int8 @ fixed:" in md  # every budgeted method at 40B


def test_cli_reuses_the_bench_and_writes_the_report(bench_run, data, monkeypatch):
    out, rows, _ = bench_run
    monkeypatch.setattr("pocketrec.data.registry.load_interactions", lambda name: data)
    args = ["bench", "--family", "cf", "--dataset", "synthetic-cf", "--budgets", BUDGETS, "--out", str(out),
            "--quiet", *(f"--{o}" for o in OVERRIDES[2:])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # everything is reused; only the budget that nothing fits is tried again (and refused again)
    assert set(re.findall(r"@ (\S+): building", text)) == {"40B"} and "teacher: reusing" in text
    assert "rule: reusing" in text and "rule @ 4x: customised" in text
    again = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["budget"], r.get("recall@20")) for r in again] == [
        (r["method"], r["budget"], r.get("recall@20")) for r in rows]
    for name in ("accuracy.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NDCG@20" in (out / "report.md").read_text()


def test_a_session_dataset_or_method_is_refused_for_cf(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--family", "cf", "--dataset", "tmall", "--out", str(tmp_path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and text.startswith("error:") and "session data" in text, result.output
    assert "Traceback" not in result.output and not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="do not compress cf teachers"):
        load_bench_config(None, ["family=cf", "methods=odrec"])
    assert load_bench_config(None, []).family == "session"


def test_a_given_teacher_is_used_and_a_session_one_refused(bench_run, data, tiny_teacher_dir, tmp_path):
    out, rows, _ = bench_run
    teacher = rows[0]["checkpoint"]
    cfg = load_bench_config(None, ["family=cf", *OVERRIDES, "methods=cf-int4", f"teacher_checkpoint={teacher}",
                                   f"out={tmp_path / 'given'}"])
    logs: list[str] = []
    given = run_cf_bench(cfg, data, log=logs.append)
    assert [(r["method"], r["checkpoint"]) for r in given][0] == ("teacher", teacher)
    assert given[1]["recall@20"] == next(r for r in rows if r["method"] == "cf-int4")["recall@20"]
    assert not (tmp_path / "given" / "teacher").exists() and not any("teacher: training" in line for line in logs)
    cfg.teacher_checkpoint, cfg.out = str(tiny_teacher_dir), str(tmp_path / "session")
    with pytest.raises(ValueError, match="is a 'session' model"):
        run_cf_bench(cfg, data, log=logs.append)


def test_the_family_is_read_from_a_yaml_file(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("family: cf\nteacher:\n  encoder:\n    layers: 1\n")
    cfg = load_bench_config(path, ["budgets=2%,5%"])
    assert (cfg.family, cfg.teacher.backbone, cfg.teacher.encoder.layers, cfg.budgets) == (
        "cf", "lightgcn", 1, ["2%", "5%"])
    assert cfg.methods == list(CF_METHODS) and cfg.student.batch_size == 2048
