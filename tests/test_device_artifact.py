"""Device artifact: layout and bytes, fp16, refusal of damaged or foreign files, raw-id handling, CLI."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from typer.testing import CliRunner

from helpers import synthetic_dataset, tiny_teacher_config
from pocketrec.cli import app
from pocketrec.device.artifact import export_artifact
from pocketrec.device.runtime import ArtifactError, load, read_artifact
from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
from pocketrec.tables.codebook import CodebookTable
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.tables.tt import TTTable
from pocketrec.tables.tt_order import clustered_slots
from pocketrec.train.teacher import train_teacher


def tiny_config(out: str = ""):
    return tiny_teacher_config(out, epochs=1)


def with_table(teacher: SessionRecommender, table) -> SessionRecommender:
    """The teacher's trained encoder on another item table."""
    model = SessionRecommender(teacher.config, table)
    encoder_state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("table.")}
    model.load_state_dict(encoder_state, strict=False)
    return model.eval()


def trained_models(out: str = "", data=None) -> tuple[object, dict[str, SessionRecommender]]:
    """A small trained teacher (1 epoch) and the same encoder on dense, tt, codebook and bit-packed tables.

    ``data`` defaults to the synthetic walk; the parity tests also pass real ml-100k."""
    data = synthetic_dataset() if data is None else data
    teacher, _ = train_teacher(data, tiny_config(out))
    teacher.eval()
    weight = teacher.table.weight.detach()
    torch.manual_seed(0)
    tt = TTTable(data.num_items, 16, rank=8, num_cores=2, t=2)
    tt.fit_to(weight, steps=30)
    tt_ordered = TTTable(data.num_items, 16, rank=8, num_cores=2, t=2, ordered=True)
    tt_ordered.set_slots(clustered_slots(weight[1:], tt_ordered.item_factors))
    tt_ordered.fit_to(weight, steps=30)
    models = {
        "dense": teacher,
        "tt": with_table(teacher, tt),
        "tt_ordered": with_table(teacher, tt_ordered),
        "codebook": with_table(teacher, CodebookTable.from_vectors(weight, M=2, K=16, iters=5)),
        # EODRec's default layout: bit-packed codes, float16 codebooks
        "codebook_packed": with_table(teacher, CodebookTable.from_vectors(weight, M=3, K=16, iters=5,
                                                                          bitpack=True, dtype="float16")),
        "codebook_int8": with_table(teacher, CodebookTable.from_vectors(weight, M=3, K=16, iters=5,
                                                                        bitpack=True, dtype="int8")),
        "int8": with_table(teacher, QuantizedTable.from_rows(weight, bits=8)),
        "int4": with_table(teacher, QuantizedTable.from_rows(weight, bits=4)),
    }
    return data, models


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    data, models = trained_models(str(root / "run"))
    return data, models, root


def header_size(path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("kind", ["dense", "tt", "tt_ordered", "codebook", "codebook_packed", "codebook_int8",
                                  "int8", "int4"])
def test_artifact_bytes(setup, kind):
    data, models, root = setup
    model = models[kind]
    path = export_artifact(model, root / f"{kind}.safetensors", vocab=data.vocab.to_json())
    tensors, manifest = read_artifact(path)
    table_bytes = sum(a.nbytes for n, a in tensors.items() if n.startswith("table/"))
    encoder_bytes = sum(a.nbytes for n, a in tensors.items() if n.startswith("encoder/"))
    assert table_bytes == model.table.nbytes() == int(manifest["table_bytes"])
    assert all(a.dtype == np.float32 for n, a in tensors.items() if n.startswith("encoder/"))
    expected_encoder = sum(v.numel() * 4 for k, v in model.state_dict().items() if not k.startswith("table."))
    assert encoder_bytes == expected_encoder
    norms_bytes = tensors["scoring/norms"].nbytes if model.config.normalize else 0
    norms_bytes += tensors["vocab/ids"].nbytes if "vocab/ids" in tensors else 0
    assert norms_bytes == (4 * (model.num_items + 1) if model.config.normalize else 0)
    size = path.stat().st_size
    assert size == header_size(path) + table_bytes + encoder_bytes + norms_bytes  # nothing but header and tensors
    manifest_bytes = len(json.dumps(manifest))
    # the header is the manifest plus a short index entry per tensor
    assert 0 <= size - (table_bytes + encoder_bytes + norms_bytes + manifest_bytes) <= 128 * len(tensors)
    if kind.startswith("codebook"):
        codes = tensors["table/codes"]
        assert codes.dtype == np.uint8
        assert codes.ndim == (1 if kind in ("codebook_packed", "codebook_int8") else 2)
    assert not list(root.glob(".*.tmp"))  # nothing half-written left behind


@pytest.mark.parametrize("kind", ["dense", "codebook"])
def test_size_on_disk_within_two_percent(tmp_path, kind):
    """At a realistic table size the file is its parts (table, encoder, the norms of a cosine model) plus the
    manifest, within 2%."""
    num_items = 20000
    table = DenseTable(num_items, 32) if kind == "dense" else CodebookTable(num_items, 32, M=8, K=256, seed=0)
    model = SessionRecommender(EncoderConfig(dim=32, max_len=20), table).eval()
    path = export_artifact(model, tmp_path / "big.safetensors")
    _, manifest = read_artifact(path)
    encoder_bytes = sum(v.numel() * 4 for k, v in model.state_dict().items() if not k.startswith("table."))
    norms_bytes = 4 * (num_items + 1)  # EncoderConfig scores by cosine by default
    vocab_bytes = 4 * num_items  # the raw ids "1".."n" are integers: one int32 tensor
    expected = table.nbytes() + encoder_bytes + norms_bytes + vocab_bytes + len(json.dumps(manifest))
    assert abs(path.stat().st_size - expected) <= 0.02 * expected


def test_fp16_export_leaves_int8_codebooks_as_they_are(setup):
    data, models, root = setup
    model = models["codebook_int8"]
    full, _ = read_artifact(export_artifact(model, root / "i8.safetensors"))
    half, manifest = read_artifact(export_artifact(model, root / "i8-16.safetensors", fp16=True))
    for name in ("table/codebooks", "table/codebook_scales", "table/codes"):
        assert half[name].dtype == full[name].dtype and np.array_equal(half[name], full[name])
    assert json.loads(manifest["table"])["dtype"] == "int8"
    session = np.asarray(data.test.sequences[0][:5])
    with torch.no_grad():
        expected = model.score(torch.as_tensor(session).view(1, -1))[0].numpy()
    np.testing.assert_allclose(load(root / "i8-16.safetensors").scores(session)[1:], expected[1:], atol=2e-2)


@pytest.mark.parametrize("kind", ["dense", "codebook"])
def test_fp16_halves_float_parts(setup, kind):
    data, models, root = setup
    full, _ = read_artifact(export_artifact(models[kind], root / "a32.safetensors"))
    half, manifest = read_artifact(export_artifact(models[kind], root / "a16.safetensors", fp16=True))
    assert full.keys() == half.keys()
    for name, arr in full.items():
        if arr.dtype == np.float32:
            assert half[name].dtype == np.float16 and half[name].nbytes * 2 == arr.nbytes
        else:
            assert half[name].dtype == arr.dtype and half[name].nbytes == arr.nbytes  # codes unchanged
    assert json.loads(manifest["table"])["dtype"] == "float16"
    model = load(root / "a16.safetensors")
    session = data.test.sequences[0][:5]
    with torch.no_grad():
        ref = models[kind].score(torch.as_tensor(session).view(1, -1))[0, 1:].numpy()
    assert np.abs(model.scores(session)[1:] - ref).max() < 0.05


def test_damaged_and_foreign_files_are_refused(setup, tmp_path):
    data, models, root = setup
    good = export_artifact(models["codebook"], tmp_path / "good.safetensors", vocab=data.vocab.to_json())
    raw = good.read_bytes()

    def refused(path, match):
        with pytest.raises(ArtifactError, match=match) as info:
            load(path)
        assert "\n" not in str(info.value)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) - 100])
    refused(truncated, "not a readable safetensors file")
    truncated.write_bytes(raw[:5])
    refused(truncated, "not a readable safetensors file")

    tampered = tmp_path / "tampered.safetensors"
    flipped = bytearray(raw)
    flipped[header_size(good) + 17] ^= 0xFF  # inside the data region
    tampered.write_bytes(bytes(flipped))
    refused(tampered, "checksum mismatch")

    tensors, manifest = read_artifact(good)
    save_file(tensors, str(tmp_path / "v99.safetensors"), metadata={**manifest, "version": "99"})
    refused(tmp_path / "v99.safetensors", "version 99 is not supported")
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    refused(tmp_path / "other.safetensors", "not a pocketrec device artifact")

    pickled = tmp_path / "pickle.safetensors"
    pickled.write_bytes(pickle.dumps({"weight": np.zeros(3)}))
    refused(pickled, "not a readable safetensors file")
    refused(tmp_path / "missing.safetensors", "no such artifact file")


def test_unknown_ids_are_skipped_with_a_warning(setup):
    data, models, root = setup
    model = load(export_artifact(models["dense"], root / "ids.safetensors", vocab=data.vocab.to_json()))
    history = data.vocab.decode(data.test.sequences[1][:4])
    with pytest.warns(UserWarning, match="skipping 2 item id"):
        ids, scores = model.recommend(["nope", *history, "missing"], k=5)
    assert (ids, scores.tolist()) == (lambda r: (r[0], r[1].tolist()))(model.recommend(history, k=5))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no item known"):
        model.recommend(["nope", "nada"])
    long_history = data.vocab.decode(np.arange(1, 31))  # longer than max_len=10: the last 10 count
    assert model.recommend(long_history, k=5)[0] == model.recommend(long_history[-10:], k=5)[0]
    ids, _ = model.recommend(history, k=model.num_items, exclude_history=True)
    assert not set(ids) & set(history) and len(ids) == model.num_items - len(set(history))
    assert len(set(ids)) == len(ids)


def test_runtime_does_not_import_torch():
    code = ("import sys, pocketrec.device.runtime, pocketrec.device.np_tables; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_export_and_recommend(setup, tmp_path):
    data, _, root = setup
    checkpoint = root / "run" / "best"
    runner = CliRunner()
    out = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    history = ",".join(data.vocab.decode(data.test.sequences[2][:3]))
    result = runner.invoke(app, ["recommend", str(out), "--history", history, "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    ids, scores = load(out).recommend(history.split(","), k=5)
    assert printed["items"] == ids and np.allclose(printed["scores"], scores)
    result = runner.invoke(app, ["recommend", str(out), "--history", history, "-k", "3"])
    assert result.exit_code == 0 and len(result.stdout.strip().splitlines()) == 3

    onnx_out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(onnx_out), "--format", "onnx", "--k", "5"])
    assert result.exit_code == 0, result.output
    from pocketrec.device.onnx_export import OnnxModel

    assert OnnxModel(onnx_out).recommend(history.split(","), k=5)[0] == ids

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 not a safetensors file")
    result = runner.invoke(app, ["recommend", str(bad), "--history", history])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(out), "--format", "zip"])
    assert result.exit_code == 2 and "--format" in result.output


def test_new_table_kind_registers_a_scorer(setup, tmp_path):
    """A new kind plugs in with @register_scorer, without touching the runtime."""
    from pocketrec.device import np_tables

    data, models, root = setup
    path = export_artifact(models["dense"], tmp_path / "d.safetensors")
    tensors, manifest = read_artifact(path)
    description = {**json.loads(manifest["table"]), "kind": "scaled-dense"}
    @np_tables.register_scorer("scaled-dense")
    class Scaled(np_tables.DenseScorer):
        pass

    try:
        from pocketrec.device.runtime import DeviceModel

        model = DeviceModel(tensors, {**manifest, "table": json.dumps(description)})
        assert isinstance(model.table, Scaled)
        assert model.recommend(["1", "2"], k=3)[0] == load(path).recommend(["1", "2"], k=3)[0]
    finally:
        np_tables.SCORERS.pop("scaled-dense")


def test_raw_ids_integer_tensor_or_json_strings(setup, tmp_path):
    """Integer raw ids ride as one int tensor; other ids as a JSON list; both map back and forth."""
    data, models, _ = setup
    model = models["codebook"]
    n = model.num_items
    numeric = [str(1000 + 7 * i) for i in range(n)]
    words = [f"sku-{i}" for i in range(n)]
    for vocab in (numeric, words):
        path = export_artifact(model, tmp_path / "ids.safetensors", vocab=vocab)
        tensors, manifest = read_artifact(path)
        assert ("vocab/ids" in tensors) == (vocab is numeric)
        if vocab is numeric:
            assert tensors["vocab/ids"].dtype == np.int32 and manifest["vocab"] == "vocab/ids"
        device = load(path)
        history = [vocab[3], vocab[10], "nope"]
        with pytest.warns(UserWarning, match="unknown"):
            assert device.vocab.internal(history) == [4, 11, None]
            items, _ = device.recommend(history, k=5)
        assert all(item in vocab for item in items)
