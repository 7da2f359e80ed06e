"""The OD-Rec recipe end to end on synthetic sessions: small, accurate enough, careful with bad input."""

import pytest
import torch
from typer.testing import CliRunner

from helpers import student_train_config, synthetic_dataset
from pocketrec.cli import app
from pocketrec.eval.evaluate import evaluate
from pocketrec.methods.odrec import compress_odrec
from pocketrec.train.checkpoint import CheckpointError, load_checkpoint
from pocketrec.train.distill import DistillConfig


def test_student_is_small_and_learns(synthetic_data, tiny_teacher_dir, tmp_path):
    teacher, _ = load_checkpoint(tiny_teacher_dir)
    student, result = compress_odrec(tiny_teacher_dir, synthetic_data, "9x", num_cores=3, t=2,
                                     out_dir=tmp_path / "odrec",
                                     distill=DistillConfig(), train=student_train_config(2))
    assert teacher.table.nbytes() >= 8 * student.table.nbytes()
    assert result.table_bytes == student.table.nbytes() and result.ratio >= 8
    # 60 items: chance Recall@5 is ~8%.
    assert result.test["recall@5"] > 0.4
    model, meta = load_checkpoint(tmp_path / "odrec" / "best")
    assert meta["method"] == "odrec" and meta["teacher"] == str(tiny_teacher_dir)
    assert meta["table"]["kind"] == "tt" and meta["table_bytes"] == result.table_bytes
    assert meta["dense_table_bytes"] == teacher.table.nbytes() and meta["ratio"] == pytest.approx(result.ratio)
    assert meta["test"] == result.test
    assert evaluate(model, synthetic_data.test) == result.test
    assert not any(k.startswith("heads") for k in model.state_dict())


def test_float16_cores_buy_rank_at_the_same_bytes(synthetic_data, tiny_teacher_dir, tmp_path):
    full, full_result = compress_odrec(tiny_teacher_dir, synthetic_data, "4x", train=student_train_config(1))
    half, result = compress_odrec(tiny_teacher_dir, synthetic_data, "4x", dtype="float16", out_dir=tmp_path / "half",
                                  train=student_train_config(1))
    assert half.table.stored_dtype == "float16" and half.table.rank > full.table.rank
    assert result.table_bytes <= full_result.dense_table_bytes / 4
    model, meta = load_checkpoint(tmp_path / "half" / "best")
    assert meta["dtype"] == "float16" and model.table.stored_dtype == "float16"
    assert evaluate(model, synthetic_data.test) == result.test  # the checkpoint reproduces what was tested


def test_clustered_order_is_shipped_counted_and_reloaded(synthetic_data, tiny_teacher_dir, tmp_path):
    _, plain = compress_odrec(tiny_teacher_dir, synthetic_data, "4x", train=student_train_config(1))
    student, result = compress_odrec(tiny_teacher_dir, synthetic_data, "4x", order="clustered",
                                     out_dir=tmp_path / "ordered", train=student_train_config(1))
    table = student.table
    assert table.ordered and result.table_bytes == table.nbytes() <= result.dense_table_bytes / 4
    assert not torch.equal(table.slots, torch.arange(table.num_rows))  # the order was installed
    assert result.meta["order"] == "clustered" and plain.meta["order"] == "identity"
    # same budget: the order's bytes come out of the cores
    assert table.nbytes() - 2 * table.num_items <= plain.table_bytes
    model, meta = load_checkpoint(tmp_path / "ordered" / "best")
    assert meta["order"] == "clustered" and torch.equal(model.table.slots, table.slots)
    assert evaluate(model, synthetic_data.test) == result.test
    with pytest.raises(ValueError, match="order must be one of"):
        compress_odrec(tiny_teacher_dir, synthetic_data, "4x", order="sorted", train=student_train_config(1))


def test_too_small_budget_writes_nothing(synthetic_data, tiny_teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="below the smallest tt table"):
        compress_odrec(tiny_teacher_dir, synthetic_data, 100, out_dir=tmp_path / "run", train=student_train_config(1))
    with pytest.raises(ValueError, match="cannot read budget"):
        compress_odrec(tiny_teacher_dir, synthetic_data, "lots", out_dir=tmp_path / "run",
                       train=student_train_config(1))
    assert not (tmp_path / "run").exists()


def test_teacher_of_another_dataset_is_refused(tiny_teacher_dir, tmp_path):
    other = synthetic_dataset(num_items=50)
    with pytest.raises(CheckpointError, match="does not fit dataset"):
        compress_odrec(tiny_teacher_dir, other, "9x", out_dir=tmp_path / "run", train=student_train_config(1))
    assert not (tmp_path / "run").exists()


def test_cli_reports_user_errors(tiny_teacher_dir, tmp_path):
    runner = CliRunner()

    def error_of(*args):
        result = runner.invoke(app, ["compress", *args])
        assert result.exit_code == 2
        return " ".join(result.output.split())  # rich wraps long lines

    assert "--method must be one of" in error_of("--method", "nope", "--teacher", str(tiny_teacher_dir))
    assert "not a pocketrec checkpoint" in error_of("--teacher", str(tmp_path / "missing"))
    assert "unknown config key" in error_of("--teacher", str(tiny_teacher_dir), "--distill.bogus=1")
    assert "float32 or float16" in error_of("--teacher", str(tiny_teacher_dir), "--dtype=int8")


def test_cli_compresses(synthetic_data, tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("pocketrec.data.registry.load_dataset", lambda name: synthetic_data)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["compress", "--method", "odrec", "--teacher", str(tiny_teacher_dir),
                                      "--budget", "9x",
                                      "--out", str(out), "--quiet", "--num_cores=3", "--train.epochs=1",
                                      "--train.batch_size=64", "--distill.bidirectional=true"])
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(out / "best")
    assert meta["method"] == "odrec" and meta["ratio"] >= 8 and meta["distill"]["bidirectional"] is True
    assert meta["train_config"]["epochs"] == 1
