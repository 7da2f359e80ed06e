"""Training end to end on synthetic sessions: it learns, it is reproducible, it checkpoints and resumes."""

import json

import pytest
import torch

from helpers import synthetic_dataset, tiny_teacher_config
from pocketrec.eval.evaluate import evaluate
from pocketrec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pocketrec.train.compat import check_compatible
from pocketrec.train.teacher import final_test_metrics, train_teacher
from pocketrec.train.trainer import TrainConfig

small_config = tiny_teacher_config


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


def test_teacher_learns_the_transitions(data):
    _, result = train_teacher(data, small_config(epochs=6))
    test = final_test_metrics(result)
    # 60 items: chance Recall@5 is ~8%; the walk makes the next item predictable.
    assert test["recall@5"] > 0.5
    assert test["mrr@20"] > 0.3


def test_same_seed_same_metrics(data):
    _, a = train_teacher(data, small_config(epochs=2))
    _, b = train_teacher(data, small_config(epochs=2))
    _, c = train_teacher(data, small_config(epochs=2, seed=8))
    assert final_test_metrics(a) == final_test_metrics(b)
    assert final_test_metrics(a) != final_test_metrics(c)


def test_checkpoint_round_trip_and_resume(data, tmp_path):
    full_model, full = train_teacher(data, small_config(tmp_path / "full", epochs=3))
    best = tmp_path / "full" / "best"
    model, meta = load_checkpoint(best)
    assert meta["epoch"] == full.best_epoch and meta["test"] == final_test_metrics(full)
    assert evaluate(model, data.test) == final_test_metrics(full)
    assert not list(tmp_path.glob("full/.*"))  # no temporary folders left behind
    check_compatible(meta, data)

    # Train 2 of 3 epochs, then resume: the result equals the uninterrupted run.
    train_teacher(data, small_config(tmp_path / "part", epochs=2))
    _, resumed = train_teacher(data, small_config(tmp_path / "part", epochs=3), resume=True)
    assert final_test_metrics(resumed) == final_test_metrics(full)
    assert len(json.loads((tmp_path / "part" / "last" / "checkpoint.json").read_text())["history"]) == 3


def test_checkpoint_refuses_other_data_and_damage(data, tmp_path):
    model, _ = train_teacher(data, small_config(tmp_path / "run", epochs=1))
    _, meta = load_checkpoint(tmp_path / "run" / "best")
    other = synthetic_dataset(num_items=50)
    with pytest.raises(CheckpointError, match="does not fit dataset"):
        check_compatible(meta, other)
    with pytest.raises(CheckpointError, match="not a pocketrec checkpoint"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    save_checkpoint(bad, model, {})
    meta_file = bad / "checkpoint.json"
    meta_file.write_text(meta_file.read_text().replace('"version": 2', '"version": 99'))
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(bad)
    save_checkpoint(bad, model, {})
    (bad / "model.safetensors").write_bytes(b"\x80\x04 not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(bad)


def test_interrupted_save_leaves_previous_checkpoint(data, tmp_path, monkeypatch):
    model, _ = train_teacher(data, small_config(epochs=1))
    path = save_checkpoint(tmp_path / "ck", model, {"tag": "first"})

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pocketrec.train.checkpoint.save_file", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(path, model, {"tag": "second"})
    _, meta = load_checkpoint(path)
    assert meta["tag"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
    assert torch.is_tensor(next(model.parameters()))


def test_step_lr_decay_is_applied_and_survives_resume(data, tmp_path):
    def config(out, epochs):
        cfg = small_config(out, epochs=epochs)
        cfg.train.lr_decay, cfg.train.lr_decay_every = 0.5, 2
        return cfg

    _, full = train_teacher(data, config(tmp_path / "full", 3))
    assert [h["lr"] for h in full.history if "epoch" in h] == pytest.approx([5e-3, 5e-3, 2.5e-3])
    _, constant = train_teacher(data, small_config(epochs=3))
    assert final_test_metrics(constant) != final_test_metrics(full)
    train_teacher(data, config(tmp_path / "part", 2))
    _, resumed = train_teacher(data, config(tmp_path / "part", 3), resume=True)
    assert final_test_metrics(resumed) == final_test_metrics(full)
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=0.0)
