"""Bad configs and bad checkpoints end in one clear line (ConfigError / CheckpointError), before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from pocketrec.cli import app
from pocketrec.config import ConfigError, load_config
from pocketrec.data.errors import DataError
from pocketrec.data.readers import read_interactions, read_session_log
from pocketrec.models import EncoderConfig, SessionRecommender
from pocketrec.train.checkpoint import (
    META_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    CheckpointError,
    _meta_checksum,
    load_checkpoint,
    load_optimizer_state,
    load_weights_into,
    read_meta,
    read_weights,
    save_checkpoint,
)
from pocketrec.train.teacher import TeacherConfig
from pocketrec.train.trainer import TrainConfig


def copy_checkpoint(source: Path, tmp_path: Path, name: str = "best") -> Path:
    """A private copy of a (shared, session-scoped) checkpoint folder, safe to tamper with."""
    return Path(shutil.copytree(source, tmp_path / name))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def rewrite_meta(path: Path, change: Any, *, rehash: bool = True) -> None:
    """Edit ``checkpoint.json`` with ``change(meta)``; ``rehash`` keeps its checksum valid (a file that
    another, e.g. newer, pocketrec wrote on purpose rather than a damaged one)."""
    meta = json.loads((path / META_FILE).read_text())
    change(meta)
    if rehash and "checksum" in meta:
        meta["checksum"]["meta"] = _meta_checksum(meta)
    (path / META_FILE).write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------- 1. config value types

@pytest.mark.parametrize("yaml_value, cli_value, shown", [
    ("2.7", "2.7", "2.7"),
    ("true", "true", "True"),
    ("[1, 2]", None, "[1, 2]"),
])
def test_int_fields_take_whole_numbers_only_from_yaml_and_cli(tmp_path, yaml_value, cli_value, shown):
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  epochs: {yaml_value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(TeacherConfig, path)
    assert str(err.value) == f"train.epochs: cannot read {shown} as int"
    if cli_value is not None:
        with pytest.raises(ConfigError, match=rf"train\.epochs: cannot read '{cli_value}' as int"):
            load_config(TeacherConfig, None, [f"--train.epochs={cli_value}"])


def test_integral_values_and_numeric_strings_are_read_the_same_from_both(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2.0\n  batch_size: '16'\n  lr: 1\n  weight_decay: '1e-4'\n")
    from_yaml = load_config(TeacherConfig, path)
    from_cli = load_config(TeacherConfig, None, ["train.epochs=2.0", "train.batch_size=16", "train.lr=1",
                                                  "train.weight_decay=1e-4"])
    assert from_yaml == from_cli
    assert from_yaml.train.epochs == 2 and type(from_yaml.train.epochs) is int
    assert from_yaml.train.lr == 1.0 and type(from_yaml.train.lr) is float


@pytest.mark.parametrize("line, message", [
    ("train:\n  lr: true", "train.lr: cannot read True as float"),
    ("train:\n  lr: .nan", "train.lr: cannot read nan as float"),
    ("encoder:\n  readout: [last]", "encoder.readout: cannot read ['last'] as str"),
    ("encoder:\n  readout: no", "encoder.readout: cannot read False as str (YAML reads yes/no"),
    ("dataset: {a: 1}", "dataset: cannot read {'a': 1} as str"),
    ("encoder:\n  normalize: maybe", "encoder.normalize: cannot read 'maybe' as bool"),
])
def test_float_str_and_bool_fields_refuse_other_yaml_types(tmp_path, line, message):
    path = tmp_path / "c.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(TeacherConfig, path)
    assert str(err.value).startswith(message)


# ---------------------------------------------------------------------------- 2. YAML file errors

@pytest.mark.parametrize("content, message", [
    (b"train:\n  epochs: [1, 2\n", r"not valid YAML \(line 3: expected ',' or '\]', but got '<stream end>'\)"),
    (b"train: !!python/object:os.system {}\n", r"not valid YAML \(line 1: could not determine a constructor "
                                                r"for the tag 'tag:yaml.org,2002:python/object:os.system'\)"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a UTF-8 text file"),
    (b"a: \x00\n", r"not valid YAML \(line 1: unacceptable character #x0000"),
    (b"- 1\n- 2\n", "expected a mapping at the top level"),
])
def test_yaml_file_errors_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(TeacherConfig, path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_cli_shows_a_yaml_error_as_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.yaml: not valid YAML (line 3" in lines[0]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- 3. values, before training

@pytest.mark.parametrize("override, message", [
    ("encoder.heads=0", "encoder: heads must be >= 1, got 0"),
    ("encoder.heads=3", "encoder: dim=64 is not divisible by heads=3"),
    ("encoder.dim=0", "encoder: dim must be >= 1, got 0"),
    ("encoder.max_len=0", "encoder: max_len must be >= 1, got 0"),
    ("encoder.layers=-1", "encoder: layers must be >= 0, got -1"),
    ("encoder.inner=-4", "encoder: inner must be >= 0, got -4"),
    ("encoder.dropout=1", r"encoder: dropout must lie in \[0, 1\), got 1.0"),
    ("encoder.attn_dropout=-0.1", r"encoder: attn_dropout must lie in \[0, 1\), got -0.1"),
    ("encoder.scale=0", "encoder: scale must be a finite number > 0, got 0.0"),
    ("train.metric=foo", "train: metric must be one of recall@5, recall@10, recall@20, mrr@5, mrr@10, mrr@20, "
                         "ndcg@5, ndcg@10, ndcg@20, recall@50, ndcg@50, precision@10, precision@20, "
                         "precision@50; got 'foo'"),
    ("train.patience=0", "train: patience must be >= 1, got 0"),
    ("train.weight_decay=-1", "train: weight_decay must be >= 0, got -1.0"),
])
def test_bad_values_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        load_config(TeacherConfig, None, [f"--{override}"])


def test_every_metric_the_evaluation_reports_is_accepted(synthetic_data):
    from helpers import tiny_teacher_config
    from pocketrec.eval.evaluate import evaluate

    model = dense_model(synthetic_data.num_items, tiny_teacher_config().encoder, 0)
    for name in evaluate(model, synthetic_data.valid):
        if "@" in name:
            assert TrainConfig(metric=name).metric == name
    with pytest.raises(ValueError, match="metric must be one of"):
        TrainConfig(metric="hr@20")


# ---------------------------------------------------------------------------- 4. checkpoint JSON

@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(encoder="abc"), "key 'encoder' should be an object, got \"abc\""),
    (lambda m: m.update(table=5), "key 'table' should be an object, got 5"),
    (lambda m: m.update(num_items="x"), "key 'num_items' should be an integer, got \"x\""),
    (lambda m: m.update(num_items=True), "key 'num_items' should be an integer, got true"),
    (lambda m: m.pop("encoder"), "missing key 'encoder'"),
    (lambda m: m.pop("table"), "missing key 'table'"),
])
def test_checkpoint_json_with_a_wrong_type_or_missing_key(tiny_teacher_dir, tmp_path, change, message):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    rewrite_meta(path, change)
    before = snapshot(path)
    for reader in (read_meta, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            reader(path)
        assert str(err.value) == f"{path / META_FILE}: {message}"
    assert snapshot(path) == before


@pytest.mark.parametrize("change, message", [
    (lambda m: m["encoder"].update(foo=1), "written by a newer pocketrec? unknown encoder key 'foo'"),
    (lambda m: m["encoder"].update(dim="x"), "encoder.dim: cannot read 'x' as int"),
    (lambda m: m["encoder"].update(heads=0), "encoder.heads must be >= 1, got 0"),
    (lambda m: m["table"].pop("num_items"), "item table description lacks key 'num_items'"),
    (lambda m: m["table"].update(num_items="x"), "bad item table description (invalid literal for int()"),
    (lambda m: m["table"].update(dim=8), "item table has dim=8 but the encoder has dim=16"),
])
def test_checkpoint_encoder_and_table_errors(tiny_teacher_dir, tmp_path, change, message):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    rewrite_meta(path, change)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path / META_FILE}: {message}")


def test_unknown_table_kind(tiny_teacher_dir, tmp_path):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    rewrite_meta(path, lambda m: m["table"].update(kind="hologram"))
    with pytest.raises(CheckpointError, match="unknown item-table kind 'hologram'"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------- 5. checksum

def test_a_flipped_weight_byte_is_detected(tiny_teacher_dir, tmp_path):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data: still a valid safetensors file
    (path / MODEL_FILE).write_bytes(bytes(data))
    read_meta(path)  # the JSON part is intact
    message = f"{path}: checksum mismatch, the checkpoint was modified or damaged"
    for load in (load_checkpoint, read_weights):
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert str(err.value) == message


def test_an_edited_checkpoint_json_is_detected(tiny_teacher_dir, tmp_path):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    assert read_meta(path)["version"] == 2 and set(read_meta(path)["checksum"]) == {"meta", "model"}
    rewrite_meta(path, lambda m: m["test"].update({"mrr@20": 0.99}), rehash=False)
    with pytest.raises(CheckpointError, match="checksum mismatch, the checkpoint was modified or damaged"):
        read_meta(path)


def test_version_1_checkpoints_without_checksum_still_load(tiny_teacher_dir, tmp_path):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    expected, _ = load_checkpoint(tiny_teacher_dir)

    def downgrade(meta: dict[str, Any]) -> None:
        meta["version"] = 1
        del meta["checksum"]

    rewrite_meta(path, downgrade)
    model, meta = load_checkpoint(path)
    assert meta["version"] == 1
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())


def test_optimizer_state_stays_loadable(tiny_teacher_dir):
    last = tiny_teacher_dir.parent / "last"
    assert (last / OPTIMIZER_FILE).is_file()
    model, _ = load_checkpoint(last)
    optimizer = torch.optim.Adam(model.parameters())
    assert load_optimizer_state(last, optimizer)
    assert optimizer.state


# ---------------------------------------------------------------------------- 6. crash-safe best/

def test_a_save_killed_between_its_renames_is_repaired(tiny_teacher_dir, tmp_path):
    # The state a kill leaves after `best -> .best.old` and before `.best.tmp -> best`.
    aside = copy_checkpoint(tiny_teacher_dir, tmp_path, ".best.old")
    best = tmp_path / "best"
    expected = read_meta(aside)
    assert read_meta(best) == expected  # evaluate / --resume find it again
    assert best.is_dir() and not aside.exists()

    shutil.move(best, aside)
    model, meta = load_checkpoint(best)
    assert meta == expected and not aside.exists()

    shutil.move(best, aside)
    save_checkpoint(best, model, {"tag": "new"})
    assert read_meta(best)["tag"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_an_incomplete_aside_folder_is_not_restored(tiny_teacher_dir, tmp_path):
    aside = copy_checkpoint(tiny_teacher_dir, tmp_path, ".best.old")
    (aside / MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match="not a pocketrec checkpoint"):
        read_meta(tmp_path / "best")
    assert aside.is_dir() and not (tmp_path / "best").exists()


# ---------------------------------------------------------------------------- 7. resume with another width

def test_load_weights_into_a_model_of_another_width(tiny_teacher_dir, tmp_path):
    saved = read_meta(tiny_teacher_dir)["encoder"]
    wider = EncoderConfig(**{**saved, "dim": 32})
    model = dense_model(read_meta(tiny_teacher_dir)["num_items"], wider, 0)
    with pytest.raises(CheckpointError) as err:
        load_weights_into(tiny_teacher_dir, model)
    assert str(err.value) == (f"{tiny_teacher_dir}: weights do not fit this model (saved encoder dim 16, "
                              "this run's 32; resume with the same --encoder settings)")

    same = dense_model(read_meta(tiny_teacher_dir)["num_items"], EncoderConfig(**saved), 0)
    meta = load_weights_into(tiny_teacher_dir, same)
    reference, _ = load_checkpoint(tiny_teacher_dir)
    assert meta["encoder"] == saved
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in same.state_dict().items())

    other_catalogue = dense_model(7, EncoderConfig(**saved), 0)
    with pytest.raises(CheckpointError, match=r"weights do not fit this model \(table.weight saved \(\d+, 16\), "
                                              r"this model's \(8, 16\)\)"):
        load_weights_into(tiny_teacher_dir, other_catalogue)


def test_load_weights_into_verifies_the_checksum(tiny_teacher_dir, tmp_path):
    path = copy_checkpoint(tiny_teacher_dir, tmp_path)
    data = bytearray((path / MODEL_FILE).read_bytes())
    data[-1] ^= 0x10
    (path / MODEL_FILE).write_bytes(bytes(data))
    model = dense_model(read_meta(path)["num_items"], EncoderConfig(**read_meta(path)["encoder"]), 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_weights_into(path, model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left untouched


# ---------------------------------------------------------------------------- 8. .inter header hint

def test_inter_header_hint_names_what_a_cli_user_can_do(tmp_path):
    path = tmp_path / "toy.inter"
    path.write_text("who:token\tmovie_name:token\ttimestamp:float\n1\t2\t3\n1\t3\t4\n")
    with pytest.raises(DataError) as err:
        read_interactions(path)
    message = str(err.value)
    assert "rename that column to 'user_id' (RecBole: 'user_id:token'), or, from Python, pass user_col=" in message
    assert "\n" not in message

    log = tmp_path / "clicks.csv"
    log.write_text("visit,item_id,time\n1,2,3\n1,3,4\n")
    with pytest.raises(DataError, match="rename that column to 'session_id'.*pass session_col="):
        read_session_log(log)


def dense_model(num_items: int, encoder: EncoderConfig, seed: int) -> SessionRecommender:
    """A seeded session model with a dense table of ``num_items`` items."""
    from pocketrec.tables.dense import DenseTable

    torch.manual_seed(seed)
    return SessionRecommender(encoder, DenseTable(num_items, encoder.dim))
