"""The EODRec recipe end to end on synthetic sessions: a truly compressed codebook student that learns."""

import pytest
import torch
from typer.testing import CliRunner

from helpers import student_train_config, synthetic_dataset
from pocketrec.cli import app
from pocketrec.eval.evaluate import evaluate
from pocketrec.methods.eodrec import EODRecConfig, compress_eodrec
from pocketrec.tables.codebook import CodebookTable
from pocketrec.train.checkpoint import CheckpointError, load_checkpoint
from pocketrec.train.distill import DistillConfig


def test_student_is_compressed_and_learns(synthetic_data, tiny_teacher_dir, tmp_path):
    teacher, _ = load_checkpoint(tiny_teacher_dir)
    student, result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", code_epochs=2,
                                      out_dir=tmp_path / "eodrec",
                                      train=student_train_config(2))
    table = student.table
    assert isinstance(table, CodebookTable)
    assert result.ratio >= 4 and result.table_bytes == table.nbytes() <= teacher.table.nbytes() / 4
    # Nothing of the teacher's table is in the student: its parameters are the codebooks and the encoder.
    assert {name for name, _ in student.named_parameters() if name.startswith("table.")} == {"table.codebooks"}
    assert result.test["recall@5"] > 0.4  # 60 items: chance is ~8%
    model, meta = load_checkpoint(tmp_path / "eodrec" / "best")
    assert meta["method"] == "eodrec" and meta["table"]["kind"] == "codebook"
    assert meta["M"] == table.M and meta["K"] == table.K and meta["code_learning"] is not None
    assert meta["distill"]["bidirectional"] is True and meta["distill"]["use_pred"] is False
    assert evaluate(model, synthetic_data.test) == result.test
    assert torch.equal(model.table.codes, table.codes)


def test_codes_are_frozen_and_codebooks_train(synthetic_data, tiny_teacher_dir, tmp_path):
    start, _ = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="rq", train=student_train_config(1))
    rq = CodebookTable.from_vectors(load_checkpoint(tiny_teacher_dir)[0].table.all_rows().detach(), start.table.M,
                                    start.table.K, method="rq", seed=7, bitpack=True)
    assert torch.equal(start.table.codes[1:], rq.codes[1:])  # the codes were not touched by training
    assert not torch.allclose(start.table.codebooks, rq.codebooks)  # the codebooks were


def test_teacher_learning_from_the_student_changes_only_the_teacher_side(synthetic_data, tiny_teacher_dir, tmp_path):
    frozen = load_checkpoint(tiny_teacher_dir)[0].state_dict()
    student, result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="rq", train=student_train_config(1),
                                      distill=DistillConfig(cl_weight=0.1, use_pred=False, teacher_lr=1e-3))
    assert result.fit.history[0]["train"].get("s2t", 0) > 0
    # The checkpointed teacher itself is untouched on disk.
    assert all(torch.equal(v, load_checkpoint(tiny_teacher_dir)[0].state_dict()[k]) for k, v in frozen.items())


def test_float16_codebooks_buy_code_bits_and_train_as_stored(synthetic_data, tiny_teacher_dir, tmp_path):
    budget = "4x"
    full, full_result = compress_eodrec(tiny_teacher_dir, synthetic_data, budget, codes="rq", max_codebooks=32,
                                        dtype="float32", train=student_train_config(1))
    half, result = compress_eodrec(tiny_teacher_dir, synthetic_data, budget, codes="rq", max_codebooks=32,
                                   dtype="float16", out_dir=tmp_path / "half", train=student_train_config(1))
    bits = [t.table.M * (t.table.K.bit_length() - 1) for t in (full, half)]
    assert half.table.stored_dtype == "float16" and bits[1] > bits[0]  # halved codebooks leave bytes for codes
    assert result.table_bytes <= full_result.table_bytes * 1.05
    model, meta = load_checkpoint(tmp_path / "half" / "best")
    assert meta["dtype"] == "float16" and model.table.stored_dtype == "float16"
    assert evaluate(model, synthetic_data.test) == result.test  # the checkpoint reproduces what was tested


def test_int8_codebooks_buy_more_code_bits_than_float16(synthetic_data, tiny_teacher_dir, tmp_path):
    budget = "4x"
    half, half_result = compress_eodrec(tiny_teacher_dir, synthetic_data, budget, codes="rq", max_codebooks=64,
                                        dtype="float16", train=student_train_config(1))
    int8, result = compress_eodrec(tiny_teacher_dir, synthetic_data, budget, codes="rq", max_codebooks=64,
                                   dtype="int8", out_dir=tmp_path / "int8", train=student_train_config(1))
    bits = [t.table.M * (t.table.K.bit_length() - 1) for t in (half, int8)]
    assert int8.table.stored_dtype == "int8" and bits[1] > bits[0]
    assert result.table_bytes <= result.dense_table_bytes / 4
    assert result.test["recall@20"] > 0.5 * half_result.test["recall@20"]  # it learns like the float16 one
    model, meta = load_checkpoint(tmp_path / "int8" / "best")
    assert meta["dtype"] == "int8" and model.table.stored_dtype == "int8"
    assert evaluate(model, synthetic_data.test) == result.test  # the checkpoint reproduces what was tested


def test_bad_input(synthetic_data, tiny_teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="below the smallest codebook table"):
        compress_eodrec(tiny_teacher_dir, synthetic_data, 64, out_dir=tmp_path / "run", train=student_train_config(1))
    with pytest.raises(CheckpointError, match="does not fit dataset"):
        compress_eodrec(tiny_teacher_dir, synthetic_dataset(num_items=50), "4x", out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="codes must be one of"):
        EODRecConfig(codes="magic")
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        EODRecConfig(dtype="bfloat16")
    assert EODRecConfig(dtype="int8").dtype == "int8"


def test_cli_compresses_with_eodrec(synthetic_data, tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("pocketrec.data.registry.load_dataset", lambda name: synthetic_data)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["compress", "--method", "eodrec", "--teacher", str(tiny_teacher_dir), "--budget",
                                      "4x", "--out", str(out), "--quiet", "--codes=rq", "--train.epochs=1"])
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(out / "best")
    assert meta["method"] == "eodrec" and meta["ratio"] >= 4 and meta["codes"] == "rq"
