"""The EODRec recipe end to end on synthetic sessions: a truly compressed codebook student that learns."""

from pathlib import Path

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
    assert meta["M"] == table.M and meta["K"] == table.K and meta["codes"] == "rq"  # the default quantizer
    assert meta["layout"] == f"RQ{table.M}x{table.code_bits}" and 0 <= meta["code_error"] < 1
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


def narrower_codebooks_buy_code_bits(data, teacher_dir, out: Path, wider: str, narrower: str, max_codebooks: int):
    """Students at one budget with ``wider`` and ``narrower`` codebook precisions: the narrower stores as it
    says, buys more code bits, and its checkpoint reproduces what was tested. Returns both results."""
    wide, wide_result = compress_eodrec(teacher_dir, data, "4x", codes="rq", max_codebooks=max_codebooks,
                                        dtype=wider, train=student_train_config(1))
    narrow, result = compress_eodrec(teacher_dir, data, "4x", codes="rq", max_codebooks=max_codebooks,
                                     dtype=narrower, out_dir=out, train=student_train_config(1))
    bits = [t.table.M * (t.table.K.bit_length() - 1) for t in (wide, narrow)]
    assert narrow.table.stored_dtype == narrower and bits[1] > bits[0]  # smaller codebooks leave bytes for codes
    model, meta = load_checkpoint(out / "best")
    assert meta["dtype"] == narrower and model.table.stored_dtype == narrower
    assert evaluate(model, data.test) == result.test  # the checkpoint reproduces what was tested
    return wide_result, result


def test_float16_codebooks_buy_code_bits_and_train_as_stored(synthetic_data, tiny_teacher_dir, tmp_path):
    full_result, result = narrower_codebooks_buy_code_bits(synthetic_data, tiny_teacher_dir, tmp_path / "half",
                                                           "float32", "float16", max_codebooks=32)
    assert result.table_bytes <= full_result.table_bytes * 1.05


def test_int8_codebooks_buy_more_code_bits_than_float16(synthetic_data, tiny_teacher_dir, tmp_path):
    half_result, result = narrower_codebooks_buy_code_bits(synthetic_data, tiny_teacher_dir, tmp_path / "int8",
                                                           "float16", "int8", max_codebooks=64)
    assert result.table_bytes <= result.dense_table_bytes / 4
    assert result.test["recall@20"] > 0.5 * half_result.test["recall@20"]  # it learns like the float16 one


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


def test_ranked_codes_are_the_candidate_the_teacher_ranks_best_with(synthetic_data, tiny_teacher_dir, tmp_path):
    """codes=ranked: every candidate fitted and judged zero-shot on validation; the best one is distilled."""
    from pocketrec.methods.code_ranking import quantized_table, valid_sample, zero_shot
    from pocketrec.methods.recipe import teacher_rows

    student, result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="ranked",
                                      code_candidates=("rq", "pq", "rq-icm"), out_dir=tmp_path / "ranked",
                                      train=student_train_config(1))
    _, meta = load_checkpoint(tmp_path / "ranked" / "best")
    reports = meta["code_candidates"]
    assert [r["quantizer"] for r in reports] == ["rq", "pq", "rq-icm"]
    best = max(reports, key=lambda r: r["zero_shot_valid"]["recall@20"])
    assert [r["chosen"] for r in reports] == [r is best for r in reports] and meta["quantizer"] == best["quantizer"]
    # the chosen candidate's zero-shot figure is what the teacher's encoder gets over that very table
    teacher, _ = load_checkpoint(tiny_teacher_dir)
    table, _ = quantized_table(best["quantizer"], teacher_rows(teacher), student.table.M, student.table.K,
                               student.table.stored_dtype, student.table.bitpack, seed=7)
    assert zero_shot(teacher, table, valid_sample(synthetic_data, seed=7)) == best["zero_shot_valid"]
    with pytest.raises(ValueError, match="code_candidates must name quantizers"):
        EODRecConfig(code_candidates="rq,nope")


def test_the_papers_autoencoder_is_still_an_option(synthetic_data, tiny_teacher_dir, tmp_path):
    _, result = compress_eodrec(tiny_teacher_dir, synthetic_data, "4x", codes="learned", code_epochs=2,
                                train=student_train_config(1))
    report = result.meta["code_learning"]
    assert report is not None and report["warmstart_agreement"] > 0 and report["learned_mse"] > 0  # it ran
    assert result.meta["layout"].startswith("AE") and 0 < result.meta["code_error"] < 1
