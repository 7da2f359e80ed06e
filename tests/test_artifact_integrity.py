"""Device-artifact integrity: the checksum covers the manifest, duplicate ids and NaN weights are refused,
optional HMAC signatures, and `pocketrec export` / `recommend` refuse bad input with one line and no file
changed."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from typer.testing import CliRunner

from pocketrec.cli import app
from pocketrec.device import np_resize
from pocketrec.device.artifact import export_artifact
from pocketrec.device.onnx_export import export_onnx
from pocketrec.device.runtime import ArtifactError, artifact_checksum, load, read_artifact
from pocketrec.device.signing import ENV_KEY
from pocketrec.train.checkpoint import load_checkpoint, save_checkpoint

#: Checkpoint meta carried over when a test saves a changed model (save_checkpoint adds the rest).
KEEP = ("vocab", "dataset", "num_items")
HISTORIES = [["i1", "i2", "i3"], ["i10"], ["i5", "i30", "i31", "i32"]]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_signing_key_in_env(monkeypatch):
    """A key in the developer's environment would sign and verify everything here."""
    monkeypatch.delenv(ENV_KEY, raising=False)


@pytest.fixture(scope="module")
def good(tiny_teacher_dir, tmp_path_factory) -> Path:
    """An unsigned artifact of the tiny teacher (raw ids "i1".."i60": a JSON vocabulary)."""
    return export_artifact(tiny_teacher_dir, tmp_path_factory.mktemp("good") / "good.safetensors")


def snapshot(*roots: Path) -> dict[str, tuple[bytes, int] | None]:
    """Bytes and mtime of every file under ``roots`` (None for a folder): equal snapshots mean nothing changed."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for root in roots:
        for item in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root] if root.exists() else []:
            out[str(item)] = (item.read_bytes(), item.stat().st_mtime_ns) if item.is_file() else None
    return out


def recommendations(model) -> list[tuple[list[str], list[float]]]:
    return [(ids, scores.tolist()) for ids, scores in (model.recommend(h, k=10) for h in HISTORIES)]


def refused(path: Path, match: str, key: bytes | None = None) -> None:
    with pytest.raises(ArtifactError, match=match) as info:
        load(path, key=key)
    assert "\n" not in str(info.value)


def one_line_error(result, match: str) -> None:
    """The CLI refused: exit 2 and a single ``error:`` line containing ``match``."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.output


def rewrite(src: Path, dst: Path, checksum: bool, **changes: str) -> Path:
    """``src`` with manifest entries changed; ``checksum=True`` recomputes a valid checksum (a crafted file)."""
    tensors, manifest = read_artifact(src)
    manifest = {**manifest, **changes}
    if checksum:
        manifest["checksum"] = artifact_checksum(tensors, manifest)
    save_file(tensors, str(dst), metadata=manifest)
    return dst


# ------------------------------------------------------------------------------------ checksum covers all
def test_tampered_manifest_is_refused(good, tmp_path):
    _, manifest = read_artifact(good)
    encoder = json.loads(manifest["encoder"])
    assert encoder["normalize"] and encoder["scale"] > 0
    flipped = json.dumps({**encoder, "scale": -encoder["scale"]})  # would recommend the worst items
    refused(rewrite(good, tmp_path / "scale.safetensors", False, encoder=flipped), "checksum mismatch")
    reversed_vocab = json.dumps(json.loads(manifest["vocab"])[::-1])
    refused(rewrite(good, tmp_path / "vocab.safetensors", False, vocab=reversed_vocab), "checksum mismatch")
    refused(rewrite(good, tmp_path / "extra.safetensors", False, note="added"), "checksum mismatch")
    refused(rewrite(good, tmp_path / "data.safetensors", False, dataset="other"), "checksum mismatch")
    refused(rewrite(good, tmp_path / "v1.safetensors", True, version="1"), "version 1 is not supported.*re-export")


def test_duplicate_ids_are_refused_at_export_and_at_load(tiny_teacher_dir, good, tmp_path):
    model, meta = load_checkpoint(tiny_teacher_dir)
    vocab = list(meta["vocab"])
    words = [*vocab[:5], vocab[3], *vocab[6:]]
    numbers = [str(1000 + i) for i in range(len(vocab) - 1)] + ["1002"]
    for ids, duplicate in ((words, vocab[3]), (numbers, "1002")):
        with pytest.raises(ValueError, match=f"item id '{duplicate}' appears more than once"):
            export_artifact(model, tmp_path / "dup.safetensors", vocab=ids)
    assert not list(tmp_path.iterdir())  # nothing written

    # load side: crafted files with a valid checksum, JSON and integer vocabularies
    json_dup = json.dumps([*vocab[:-1], vocab[0]])
    refused(rewrite(good, tmp_path / "json.safetensors", True, vocab=json_dup), "item id 'i1' appears more than")
    numeric = export_artifact(model, tmp_path / "int.safetensors", vocab=[str(1000 + i) for i in range(len(vocab))])
    tensors, manifest = read_artifact(numeric)
    tensors["vocab/ids"] = tensors["vocab/ids"].copy()
    tensors["vocab/ids"][7] = tensors["vocab/ids"][2]
    save_file(tensors, str(numeric), metadata={**manifest, "checksum": artifact_checksum(tensors, manifest)})
    refused(numeric, "item id '1002' appears more than once")


def nan_model(tiny_teacher_dir, value: float = float("nan")):
    model, meta = load_checkpoint(tiny_teacher_dir)
    with torch.no_grad():
        model.layers[0].ff1.weight.view(-1)[:3] = value
    return model, meta["vocab"]


def test_non_finite_weights_are_refused_at_export(tiny_teacher_dir, tmp_path):
    model, vocab = nan_model(tiny_teacher_dir)
    message = ("encoder/layers.0.ff1.weight holds 3 non-finite values (NaN/inf); the model diverged — retrain it")
    with pytest.raises(ValueError) as info:
        export_artifact(model, tmp_path / "nan.safetensors", vocab=vocab)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        export_onnx(model, tmp_path / "nan.onnx", vocab=vocab)
    assert str(info.value) == message
    big, _ = nan_model(tiny_teacher_dir, 1e6)  # finite, but not in float16
    with pytest.raises(ValueError, match="3 non-finite .*float16's range.*without --fp16"):
        export_artifact(big, tmp_path / "big.safetensors", vocab=vocab, fp16=True)
    assert not list(tmp_path.iterdir())
    export_artifact(big, tmp_path / "big.safetensors", vocab=vocab)  # float32 holds it


def test_non_finite_weights_are_refused_at_load(good, tmp_path):
    tensors, manifest = read_artifact(good)
    name = next(n for n in sorted(tensors) if n.startswith("table/"))
    tensors[name] = tensors[name].copy()
    tensors[name].reshape(-1)[[0, 5]] = [np.nan, np.inf]
    crafted = tmp_path / "nan.safetensors"
    save_file(tensors, str(crafted), metadata={**manifest, "checksum": artifact_checksum(tensors, manifest)})
    refused(crafted, f"{name} holds 2 non-finite values")


def test_cli_export_of_a_diverged_checkpoint(tiny_teacher_dir, tmp_path):
    """A run that diverged saved a valid checkpoint of NaN/inf weights: the export refuses it."""
    model, meta = load_checkpoint(tiny_teacher_dir)
    with torch.no_grad():
        model.table.weight[4, 2] = float("inf")
    checkpoint = save_checkpoint(tmp_path / "ckpt", model, {k: v for k, v in meta.items() if k in KEEP})
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["export", str(checkpoint), "-o", str(tmp_path / "m.safetensors")])
    one_line_error(result, "table/weight holds 1 non-finite values (NaN/inf)")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ bit flips
def test_header_bit_flips_never_change_behaviour_silently(good, tmp_path):
    """Flip every byte of the safetensors header (length prefix, tensor index, manifest) with two masks:
    each damaged file is refused or loads to the very same recommendations."""
    raw = good.read_bytes()
    header = 8 + struct.unpack("<Q", raw[:8])[0]
    expected = recommendations(load(good))
    target = tmp_path / "flipped.safetensors"
    counts = {"refused": 0, "identical": 0}
    for pos in range(header):
        for mask in (0x01, 0xFF):
            data = bytearray(raw)
            data[pos] ^= mask
            target.write_bytes(data)
            try:
                model = load(target)
            except ArtifactError as err:
                assert "\n" not in str(err)
                counts["refused"] += 1
                continue
            assert recommendations(model) == expected, f"byte {pos} ^ {mask:#x} changed behaviour silently"
            counts["identical"] += 1
    print(f"\n{2 * header} header flips: {counts['refused']} refused, {counts['identical']} loaded identical")
    assert counts["refused"] + counts["identical"] == 2 * header and counts["refused"] > 0


# ------------------------------------------------------------------------------------------ signatures
def test_signature_verifies_with_the_right_key_only(tiny_teacher_dir, good, tmp_path):
    signed = export_artifact(tiny_teacher_dir, tmp_path / "signed.safetensors", key=b"secret")
    _, manifest = read_artifact(signed)
    assert len(manifest["signature"]) == 64
    assert recommendations(load(signed, key=b"secret")) == recommendations(load(good))
    assert recommendations(load(signed)) == recommendations(load(good))  # without a key: integrity only
    refused(signed, "signature mismatch", key=b"other")
    refused(good, "not signed", key=b"secret")
    # an edit with a recomputed checksum passes integrity but not the signature
    encoder = json.loads(manifest["encoder"])
    forged = rewrite(signed, tmp_path / "forged.safetensors", True,
                     encoder=json.dumps({**encoder, "scale": -encoder["scale"]}))
    load(forged)
    refused(forged, "signature mismatch", key=b"secret")
    with pytest.raises(ValueError, match="empty"):
        export_artifact(tiny_teacher_dir, tmp_path / "empty.safetensors", key=b"")


def test_signature_verification_needs_no_torch(tiny_teacher_dir, tmp_path):
    signed = export_artifact(tiny_teacher_dir, tmp_path / "signed.safetensors", key=b"secret")
    code = ("import sys; from pocketrec.device.runtime import load, ArtifactError\n"
            f"m = load({str(signed)!r}, key=b'secret'); assert m.recommend(['i1', 'i2'], k=3)[0]\n"
            f"try: load({str(signed)!r}, key=b'wrong')\nexcept ArtifactError: pass\nelse: raise SystemExit(1)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_signing_with_key_files_and_environment(tiny_teacher_dir, tmp_path, monkeypatch):
    key, other, empty = tmp_path / "key", tmp_path / "other", tmp_path / "empty"
    key.write_bytes(b"secret\n")  # the trailing newline is not part of the key
    other.write_text("wrong")
    empty.write_text("\n")
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(out), "--sign-key", str(key)])
    assert result.exit_code == 0, result.output
    load(out, key=b"secret")
    recommend = ["recommend", str(out), "--history", "i1,i2", "-k", "3"]
    assert runner.invoke(app, [*recommend, "--verify-key", str(key)]).exit_code == 0
    one_line_error(runner.invoke(app, [*recommend, "--verify-key", str(other)]), "signature mismatch")
    one_line_error(runner.invoke(app, [*recommend, "--verify-key", str(empty)]), "the signing key is empty")
    one_line_error(runner.invoke(app, [*recommend, "--verify-key", str(tmp_path / "nope")]), "cannot read")

    monkeypatch.setenv(ENV_KEY, "wrong")  # the environment verifies when no flag is given; the flag wins
    one_line_error(runner.invoke(app, recommend), "signature mismatch")
    assert runner.invoke(app, [*recommend, "--verify-key", str(key)]).exit_code == 0
    monkeypatch.setenv(ENV_KEY, "secret")
    assert runner.invoke(app, recommend).exit_code == 0
    env_signed = tmp_path / "env.safetensors"  # ... and signs on export
    assert runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(env_signed)]).exit_code == 0
    load(env_signed, key=b"secret")
    monkeypatch.setenv(ENV_KEY, "")
    one_line_error(runner.invoke(app, recommend), f"{ENV_KEY} is set but empty")
    monkeypatch.delenv(ENV_KEY)

    before = snapshot(tmp_path)
    one_line_error(runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "x.safetensors"),
                                       "--sign-key", str(empty)]), "the signing key is empty")
    one_line_error(runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "x.onnx"),
                                       "--sign-key", str(key)]), "ONNX files are not signed")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------ export CLI
def test_cli_export_refuses_to_write_into_a_checkpoint(tiny_teacher_dir, tmp_path):
    before = snapshot(tiny_teacher_dir.parent)
    for target in (tiny_teacher_dir / "model.safetensors", tiny_teacher_dir / "sub" / "model.safetensors",
                   tiny_teacher_dir / "model.onnx"):
        result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(target)])
        one_line_error(result, f"is inside the checkpoint folder {tiny_teacher_dir.resolve()}")
    assert snapshot(tiny_teacher_dir.parent) == before


def test_cli_export_refuses_a_directory(tiny_teacher_dir, tmp_path):
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)
    one_line_error(runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "folder")]),
                   "is a directory")
    assert snapshot(tmp_path) == before


def test_cli_export_format_follows_the_suffix(tiny_teacher_dir, tmp_path):
    from pocketrec.device.runtime import OnnxModel

    expected = load(reference(tiny_teacher_dir, tmp_path)).recommend(["i1", "i2"], k=5)[0]
    onnx_out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(onnx_out), "--k", "5"])
    assert result.exit_code == 0, result.output
    assert OnnxModel(onnx_out).recommend(["i1", "i2"], k=5)[0] == expected
    before = snapshot(tmp_path)
    for name, fmt in (("a.onnx", "safetensors"), ("a.safetensors", "onnx"), ("a.ONNX", "safetensors")):
        result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / name), "--format", fmt])
        one_line_error(result, f"--format {fmt} contradicts the file name")
    assert snapshot(tmp_path) == before
    # another suffix takes either format (safetensors by default)
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "m.bin"), "--format", "onnx"])
    assert result.exit_code == 0 and OnnxModel(tmp_path / "m.bin").recommend(["i1", "i2"], k=5)[0] == expected
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "m.bin")])
    assert result.exit_code == 0 and load(tmp_path / "m.bin").recommend(["i1", "i2"], k=5)[0] == expected


def reference(tiny_teacher_dir: Path, tmp_path: Path) -> Path:
    """An artifact exported through the Python API, in its own folder."""
    return export_artifact(tiny_teacher_dir, tmp_path / "ref" / "ref.safetensors")


def test_cli_export_without_the_onnx_extra(tiny_teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(tmp_path / "m.onnx")])
    one_line_error(result, "ONNX export needs the onnx extra: pip install 'pocketrec[onnx]'")
    assert snapshot(tmp_path) == before


def test_cli_export_reports_the_bytes_it_wrote(tiny_teacher_dir, tmp_path, monkeypatch):
    """Another export racing to the same path may win the rename: the message is about this export's file."""
    size = reference(tiny_teacher_dir, tmp_path).stat().st_size
    replace = os.replace

    def racing_replace(src, dst):
        replace(src, dst)
        Path(dst).write_bytes(b"someone else's file")

    monkeypatch.setattr(np_resize.os, "replace", racing_replace)  # the one atomic writer of device files
    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["export", str(tiny_teacher_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out} ({size:,} bytes)" in " ".join(result.output.split())
    assert out.stat().st_size != size


# ------------------------------------------------------------------------------------------ recommend
def test_k_below_one(good):
    for k in ("0", "-3"):
        result = runner.invoke(app, ["recommend", str(good), "--history", "i1,i2", "-k", k])
        one_line_error(result, f"-k must be at least 1, got {k}")
    model = load(good)
    assert [len(a) for a in model.recommend(["i1"], k=0)] == [0, 0]
    with pytest.raises(ValueError, match="k must be >= 0"):
        model.recommend(["i1"], k=-1)


def test_integer_ids_beyond_int64(tiny_teacher_dir, tmp_path):
    model, meta = load_checkpoint(tiny_teacher_dir)
    n = len(meta["vocab"])
    numeric = export_artifact(model, tmp_path / "int.safetensors", vocab=[str(1000 + i) for i in range(n)])
    huge = "99999999999999999999999"
    result = runner.invoke(app, ["recommend", str(numeric), "--history", f"1000,{huge},1001", "-k", "3"])
    assert result.exit_code == 0, result.output
    assert f"skipping 1 item id(s) unknown to this model: {huge}" in " ".join(result.output.split())
    device = load(numeric)
    assert device.vocab.internal([huge, "1001", str(-2**70)]) == [None, 2, None]
    # a vocabulary with ids beyond int64 falls back to the JSON list of strings
    wide = [str(2**64 + i) for i in range(n)]
    path = export_artifact(model, tmp_path / "wide.safetensors", vocab=wide)
    tensors, manifest = read_artifact(path)
    assert "vocab/ids" not in tensors and json.loads(manifest["vocab"]) == wide
    ids, _ = load(path).recommend([wide[0], wide[1]], k=3)
    assert set(ids) <= set(wide)
    fits = [str(2**63 - 1 - i) for i in range(n)]  # int64 edge: still a tensor
    assert read_artifact(export_artifact(model, tmp_path / "edge.safetensors", vocab=fits))[0]["vocab/ids"].dtype \
        == np.int64
