"""ONNX files keep the compression: every table kind's ONNX file is at most 10% larger than its safetensors
artifact, holds the table's arrays at their stored types (no unpacked or dequantised copy), and ranks like
the numpy runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import numpy_helper  # noqa: E402

from pocketrec.device.artifact import export_artifact  # noqa: E402
from pocketrec.device.np_tables import SCORERS  # noqa: E402
from pocketrec.device.onnx_export import ONNX_TABLES, OnnxGraph, OnnxModel, export_onnx, unpack_codes  # noqa: E402
from pocketrec.device.runtime import load, read_artifact  # noqa: E402
from pocketrec.formats.bitpack import pack_codes  # noqa: E402
from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender  # noqa: E402
from pocketrec.tables.codebook import CodebookTable  # noqa: E402
from pocketrec.tables.dense import DenseTable  # noqa: E402
from pocketrec.tables.elastic import ElasticTable  # noqa: E402
from pocketrec.tables.elastic_core import item_groups  # noqa: E402
from pocketrec.tables.quantized import QuantizedTable  # noqa: E402
from pocketrec.tables.tt import TTTable  # noqa: E402
from pocketrec.tables.tt_order import clustered_slots  # noqa: E402

NUM_ITEMS, DIM = 2000, 64
TOP = 20
TOL = 1e-4
MAX_RATIO = 1.10
#: Bytes of small constants (shapes, axes, code offsets) the table's part of the graph may add.
CONSTANT_SLACK = 2048


def _dense_fp16(w: torch.Tensor) -> DenseTable:
    table = DenseTable(NUM_ITEMS, DIM, dtype="float16")
    with torch.no_grad():
        table.weight.copy_(w)
    return table


def _tt(w: torch.Tensor, ordered: bool = False, dtype: str = "float32") -> TTTable:
    table = TTTable(NUM_ITEMS, DIM, rank=16, num_cores=2, t=2, ordered=ordered, dtype=dtype)
    if ordered:
        table.set_slots(clustered_slots(w[1:], table.item_factors))
    table.fit_to(w, steps=20)
    return table


def _elastic(w: torch.Tensor, scoring: str, dtype: str) -> ElasticTable:
    """8 popularity-like groups of 8 blocks: the most popular keep all, the least popular one (not a prefix)."""
    groups = item_groups(np.arange(NUM_ITEMS + 1)[::-1].copy(), 8)
    table = ElasticTable.from_rows(w, 8, groups, 8, scoring=scoring, dtype=dtype)
    mask = np.zeros((8, 8), dtype=bool)
    for g in range(8):
        mask[g, np.random.default_rng(g).permutation(8)[:8 - g]] = True
    table.set_architecture(mask)
    return table


#: One table per stored layout, fitted to the same random "teacher" rows.
TABLES = {
    "dense": lambda w: DenseTable.from_export({"weight": w.numpy()}, {"num_items": NUM_ITEMS, "dim": DIM}),
    "dense_float16": _dense_fp16,
    "tt": _tt,
    "tt_ordered": lambda w: _tt(w, ordered=True),
    "tt_float16": lambda w: _tt(w, dtype="float16"),
    "quantized_int8": lambda w: QuantizedTable.from_rows(w, bits=8),
    "quantized_int4": lambda w: QuantizedTable.from_rows(w, bits=4),
    "codebook_uint8": lambda w: CodebookTable.from_vectors(w, M=8, K=64, iters=3),
    "codebook_uint16": lambda w: CodebookTable.from_vectors(w, M=4, K=300, iters=3),
    "codebook_bitpacked": lambda w: CodebookTable.from_vectors(w, M=8, K=32, iters=3, bitpack=True),
    "codebook_float16": lambda w: CodebookTable.from_vectors(w, M=8, K=64, iters=3, bitpack=True, dtype="float16"),
    "codebook_int8": lambda w: CodebookTable.from_vectors(w, M=8, K=256, iters=3, bitpack=True, dtype="int8"),
    "elastic_shared_float16": lambda w: _elastic(w, "shared", "float16"),
    "elastic_aligned_int8": lambda w: _elastic(w, "aligned", "int8"),
}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    config = EncoderConfig(dim=DIM, layers=1, heads=2, max_len=20)
    return SessionRecommender(config, DenseTable(NUM_ITEMS, DIM, init_std=0.5)).eval()


def build(teacher: SessionRecommender, kind: str) -> SessionRecommender:
    """The teacher's encoder on a ``kind`` table fitted to the teacher's rows."""
    torch.manual_seed(1)
    weight = teacher.table.weight.detach().clone()
    model = SessionRecommender(teacher.config, TABLES[kind](weight))
    model.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("table.")}, strict=False)
    return model.eval()


def sessions(count: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(1, NUM_ITEMS + 1, size=int(rng.integers(1, 20))) for _ in range(count)]


def assert_same_top(numpy_ids, numpy_scores, onnx_ids, onnx_scores, all_numpy) -> None:
    """Same scores at every rank (within TOL); ids may differ only between items whose scores tie."""
    np.testing.assert_allclose(onnx_scores, numpy_scores, atol=TOL, rtol=0)
    for rank, (a, b) in enumerate(zip(numpy_ids, onnx_ids, strict=True)):
        if a != b:
            assert abs(all_numpy[b] - numpy_scores[rank]) <= TOL, f"rank {rank}: numpy {a}, onnxruntime {b}"
    assert 0 not in onnx_ids


@pytest.mark.parametrize("kind", list(TABLES))
def test_onnx_keeps_the_compression_and_the_ranking(teacher, kind, tmp_path):
    model = build(teacher, kind)
    artifact = export_artifact(model, tmp_path / f"{kind}.safetensors")
    onnx_file = export_onnx(model, tmp_path / f"{kind}.onnx", k=TOP)
    assert onnx_file.nbytes <= MAX_RATIO * artifact.nbytes, (
        f"{kind}: ONNX {onnx_file.nbytes:,} B vs artifact {artifact.nbytes:,} B")

    # the table's arrays are initializers at their stored types, byte for byte; nothing else is big
    tensors, _ = read_artifact(artifact)
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(onnx_file)).graph.initializer}
    for name, stored in tensors.items():
        if name.startswith("table/"):
            held = inits[f"pocketrec/{name}"]
            assert held.dtype == stored.dtype and held.shape == stored.shape, name
            assert held.tobytes() == stored.tobytes(), name
    expected = sum(a.nbytes for n, a in tensors.items() if not n.startswith("vocab/"))
    assert sum(a.nbytes for a in inits.values()) <= expected + CONSTANT_SLACK

    device, onnx_model = load(artifact), OnnxModel(onnx_file)
    for session in sessions():
        n_ids, n_scores = device.top_k(session, TOP)
        o_ids, o_scores = onnx_model.top_k(session)
        assert_same_top(n_ids, n_scores, o_ids, o_scores, device.scores(session))


def test_every_numpy_table_kind_has_an_onnx_builder():
    assert set(SCORERS) <= set(ONNX_TABLES)


@pytest.mark.parametrize("bits", range(1, 17))
def test_bit_unpacking_in_the_graph_matches_bitpack(bits):
    """The graph's decoder of bit-packed codes (fed at run time, so nothing is folded) for every width."""
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 13, 100, 1001):
        codes = rng.integers(0, 1 << bits, size=count)
        packed = pack_codes(codes, bits)
        graph = OnnxGraph()
        out = unpack_codes(graph, "packed", packed.size, bits, count)
        model = onnx.helper.make_model(
            onnx.helper.make_graph(
                graph.nodes, "unpack",
                [onnx.helper.make_tensor_value_info("packed", onnx.TensorProto.UINT8, [packed.size])],
                [onnx.helper.make_tensor_value_info(out, onnx.TensorProto.INT32, [count])],
                graph.initializers),
            opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (decoded,) = session.run(None, {"packed": packed})
        np.testing.assert_array_equal(decoded, codes)
