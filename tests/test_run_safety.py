"""Runs never overwrite finished work, diverged runs never reach a checkpoint, NaN never scores as a hit,
budgets above the dense table are refused, and a model trained from a path evaluates without --dataset."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import synthetic_sessions
from pocketrec.cli import app
from pocketrec.eval.metrics import target_ranks
from pocketrec.search.budget import parse_budget

TINY = ["--encoder.dim=16", "--encoder.max_len=10", "--train.epochs=1", "--train.batch_size=64", "--quiet"]


def write_session_folder(folder: Path, offset: int = 0, seed: int = 0) -> Path:
    """A session dataset folder (train_sessions.txt + test_sessions.txt) of the synthetic walk."""
    folder.mkdir(parents=True, exist_ok=True)
    sessions = synthetic_sessions(num_items=40, num_sessions=300, seed=seed)
    lines = [" ".join(str(int(i) + offset) for i in s) for s in sessions]
    (folder / "train_sessions.txt").write_text("\n".join(lines[:270]) + "\n")
    (folder / "test_sessions.txt").write_text("\n".join(lines[270:]) + "\n")
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (what 'no file changed' is checked against)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result, " ".join(result.output.split())


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Path:
    return write_session_folder(tmp_path_factory.mktemp("data") / "walk")


@pytest.fixture(scope="module")
def finished_run(sessions, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    result, text = invoke("train", "--dataset", sessions, "--out", out, *TINY)
    assert result.exit_code == 0, text
    return out


def test_train_refuses_a_folder_that_holds_a_run(sessions, finished_run):
    before = snapshot(finished_run)
    result, text = invoke("train", "--dataset", sessions, "--out", finished_run, *TINY)
    assert result.exit_code == 2
    assert re.search(r"error: --out .* already holds a run \(best, last\); pass --resume .* --overwrite", text), text
    assert snapshot(finished_run) == before
    result, text = invoke("train", "--dataset", sessions, "--out", finished_run, "--resume", "--overwrite", *TINY)
    assert result.exit_code == 2 and "contradict" in text
    assert snapshot(finished_run) == before


def test_overwrite_keeps_the_old_run_when_the_new_one_diverges(sessions, finished_run, tmp_path):
    out = tmp_path / "copy"
    import shutil

    shutil.copytree(finished_run, out)
    before = snapshot(out)
    result, text = invoke("train", "--dataset", sessions, "--out", out, "--overwrite", *TINY, "--train.lr=1e30")
    assert result.exit_code == 2
    assert "training diverged" in text and "the loss is nan" in text, text
    assert snapshot(out) == before  # nothing of the diverged run reached the folder
    result, text = invoke("train", "--dataset", sessions, "--out", out, "--overwrite", *TINY, "--train.seed=3")
    assert result.exit_code == 0, text
    assert snapshot(out) != before


def test_a_diverged_run_saves_nothing(sessions, tmp_path):
    out = tmp_path / "diverged"
    result, text = invoke("train", "--dataset", sessions, "--out", out, *TINY, "--train.lr=1e30")
    assert result.exit_code == 2
    assert "training diverged: epoch 1, step" in text and "nothing was saved" in text, text
    assert not out.exists() or not any(out.iterdir())
    assert "Traceback" not in result.output


def test_resume_refuses_another_dataset(finished_run, tmp_path):
    before = snapshot(finished_run)
    other_ids = write_session_folder(tmp_path / "other", offset=1000)
    result, text = invoke("train", "--dataset", other_ids, "--out", finished_run, "--resume", *TINY)
    assert result.exit_code == 2 and "does not fit dataset 'other'" in text, text
    same_ids = write_session_folder(tmp_path / "renamed")  # the same catalogue under another name
    result, text = invoke("train", "--dataset", same_ids, "--out", finished_run, "--resume", *TINY)
    assert result.exit_code == 2 and "was trained on 'walk'; it cannot be resumed on 'renamed'" in text, text
    assert snapshot(finished_run) == before


def test_compress_refuses_a_folder_that_holds_a_run_and_budgets_above_the_teacher(finished_run, tmp_path):
    out = tmp_path / "student"
    args = ["compress", "--method", "eodrec", "--teacher", finished_run / "best", "--out", out,
            "--train.epochs=1", "--code_epochs=1", "--quiet"]
    result, text = invoke(*args, "--budget", "0.5x")
    assert result.exit_code == 2 and "a ratio must be at least 1x" in text and "2,624 B" in text, text
    result, text = invoke(*args, "--budget", "10MB")
    assert result.exit_code == 2 and "is more than the dense item table it compresses (2,624 B" in text, text
    assert not out.exists()
    result, text = invoke(*args, "--budget", "30%")
    assert result.exit_code == 0, text
    before = snapshot(out)
    result, text = invoke(*args, "--budget", "30%")
    assert result.exit_code == 2 and "already holds a run" in text and "--overwrite" in text, text
    assert snapshot(out) == before


def test_a_model_trained_from_a_path_evaluates_without_dataset(finished_run, tmp_path):
    result, text = invoke("evaluate", finished_run / "best", "--json")
    assert result.exit_code == 0, text
    meta_file = finished_run / "best" / "checkpoint.json"
    import json

    meta = json.loads(meta_file.read_text())
    assert Path(meta["dataset_origin"]).is_dir()
    from pocketrec.train.compat import dataset_of, load_dataset_of

    old = {k: v for k, v in meta.items() if k != "dataset_origin"}  # as an older pocketrec wrote it
    with pytest.raises(ValueError, match="not a registered dataset .* pass --dataset PATH"):
        load_dataset_of(old, None, what="ckpt")
    with pytest.raises(ValueError, match="no longer there; pass --dataset"):
        dataset_of({**meta, "dataset_origin": str(tmp_path / "gone")}, None, what="ckpt")
    assert dataset_of(old, "given", what="ckpt") == "given"


def test_non_finite_scores_are_misses():
    scores = torch.tensor([[0.1, 0.9, float("nan"), 0.3],
                           [0.1, float("nan"), 0.5, 0.2],
                           [0.1, float("inf"), 0.5, 0.2],
                           [0.1, 0.2, float("nan"), 0.3]])
    ranks = target_ranks(scores, torch.tensor([2, 1, 1, 3]))
    # a NaN or infinite target ranks last (a miss); a NaN elsewhere never ranks above a finite target
    assert ranks.tolist() == [4, 4, 4, 0]


def test_evaluation_of_a_nan_model_warns_and_scores_misses(tiny_teacher_dir, synthetic_data):
    from pocketrec.eval.evaluate import evaluate
    from pocketrec.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_teacher_dir)
    clean = evaluate(model, synthetic_data.test)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("table."))[:] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"examples had NaN or infinite scores"):
        broken = evaluate(model, synthetic_data.test)
    assert clean["recall@20"] > 0.2
    assert broken["recall@5"] == 0.0 and broken["mrr@20"] == 0.0  # was 1.0 and inf


def test_parse_budget_refuses_more_than_the_dense_table():
    assert parse_budget("1x", 1000) == 1000 and parse_budget("100%", 1000) == 1000
    for text in ("0.5x", "10MB", "1001", "1e100"):
        with pytest.raises(ValueError, match=r"1,000 B"):
            parse_budget(text, 1000)
    assert parse_budget("10MB") == 10**7  # no dense table known: nothing to compare with
