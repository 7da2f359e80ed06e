"""The contract every backbone x every item-table kind keeps: it trains a step, evaluates, survives a
checkpoint round trip, exports, and torch, the numpy runtime and onnxruntime rank the same top 20.

A new backbone or table kind joins by one entry in ``BACKBONES`` / ``KINDS`` below (and its registration in
the package); the test then holds it to the whole contract.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from helpers import synthetic_dataset, synthetic_interactions
from pocketrec.backbones.base import BACKBONES as REGISTERED
from pocketrec.backbones.base import backbone_class
from pocketrec.device.artifact import export_artifact
from pocketrec.device.runtime import load
from pocketrec.tables.codebook import CodebookTable
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.elastic import ElasticTable
from pocketrec.tables.elastic_core import item_groups
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.tables.tt import TTTable
from pocketrec.tables.tt_order import clustered_slots
from pocketrec.train.checkpoint import load_checkpoint, save_checkpoint

DIM = 16
TOP = 20


def table_of_kind(kind: str, num_items: int, seed: int = 0):
    """A small table of ``kind`` over ``num_items`` items (fitted to random rows where the kind needs rows)."""
    torch.manual_seed(seed)
    rows = torch.randn(num_items + 1, DIM) * 0.3
    rows[0] = 0
    if kind == "dense":
        table = DenseTable(num_items, DIM)
        with torch.no_grad():
            table.weight.copy_(rows)
        return table
    if kind in ("tt", "tt_ordered"):
        table = TTTable(num_items, DIM, rank=8, num_cores=2, t=2, ordered=kind == "tt_ordered")
        if kind == "tt_ordered":
            table.set_slots(clustered_slots(rows[1:], table.item_factors))
        return table
    if kind.startswith("codebook"):
        options = {"codebook": {}, "codebook_packed": {"bitpack": True, "dtype": "float16"},
                   "codebook_int8": {"bitpack": True, "dtype": "int8"}}[kind]
        return CodebookTable.from_vectors(rows, M=3, K=16, iters=3, **options)
    if kind.startswith("elastic"):  # popularity-like groups, a sub-architecture (group 0 keeps every block)
        scoring, dtype = {"elastic": ("shared", "float32"), "elastic_aligned_int8": ("aligned", "int8")}[kind]
        groups = item_groups(np.arange(num_items + 1)[::-1].copy(), 4)
        table = ElasticTable.from_rows(rows, 4, groups, 4, scoring=scoring, dtype=dtype)
        table.set_architecture([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1], [0, 0, 1, 0]])
        return table
    return QuantizedTable.from_rows(rows, bits=int(kind[3:]))


KINDS = ["dense", "tt", "tt_ordered", "codebook", "codebook_packed", "codebook_int8", "int8", "int4", "elastic",
         "elastic_aligned_int8"]


def build(backbone: str, kind: str, data):
    cls = backbone_class(backbone)
    table = table_of_kind(kind, data.num_items)
    if backbone == "session":
        from pocketrec.models.session_encoder import EncoderConfig

        return cls(EncoderConfig(dim=DIM, max_len=10, dropout=0.0, attn_dropout=0.0), table)
    config = cls.config_class(dim=DIM)
    model = cls.from_checkpoint(config, table, {"num_users": data.num_users})
    model.attach(data)
    return model


BACKBONES = sorted(REGISTERED)


@pytest.fixture(scope="module")
def datasets():
    return {"session": synthetic_dataset(), "cf": synthetic_interactions()}


def queries(backbone: str, data) -> list:
    """A few queries: sessions (internal ids) or users (raw ids)."""
    if backbone == "session":
        return [np.asarray(seq[:-1][-10:], dtype=np.int64) for seq in data.test.sequences[:5]]
    return data.users.raw_ids[:5]


def torch_top(model, backbone: str, data, query) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        if backbone == "session":
            scores = model.score(torch.as_tensor(query).view(1, -1))[0].clone()
        else:
            user = data.users.encode(query)
            scores = model.score_users(torch.tensor([user]))[0].clone()
            scores[data.seen("test")[user].indices] = float("-inf")
        scores[0] = float("-inf")
    values, indices = torch.topk(scores, TOP)
    return indices.numpy(), values.numpy()


def same_ranking(ids_a, scores_a, ids_b, scores_b, tol: float = 1e-4) -> None:
    np.testing.assert_allclose(scores_a, scores_b, atol=tol, rtol=0)
    cut = scores_a[-1] + tol  # ids may differ only among scores tied with the last one
    assert set(np.asarray(ids_a)[scores_a > cut]) == set(np.asarray(ids_b)[scores_b > cut])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_with_every_table_kind(backbone, kind, datasets, tmp_path):
    data = datasets["session" if backbone == "session" else "cf"]
    model = build(backbone, kind, data)
    # one training step of the backbone's own loss moves the weights and stays finite
    loss_fn = model.training_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    model.train()
    batch = next(iter(model.training_batches(data, 64).batches(seed=0)))
    loss, _ = loss_fn(batch)
    assert torch.isfinite(loss)
    if params:  # e.g. frozen user vectors over a post-hoc quantised table: nothing to train
        optimizer = torch.optim.Adam(params, lr=1e-2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))
    model.eval()
    metrics = model.evaluate(data, "valid")
    assert 0.0 <= metrics[f"{model.selection_metric}"] <= 1.0
    # checkpoint round trip: the same scores
    save_checkpoint(tmp_path / "ckpt", model, {"num_users": getattr(data, "num_users", 0),
                                               "vocab": data.vocab.to_json(), "dataset": data.name})
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    if backbone != "session":
        loaded.attach(data)
    assert loaded.evaluate(data, "valid") == pytest.approx(metrics)
    # the device: numpy runtime and ONNX rank as torch does
    users = queries(backbone, data) if backbone != "session" else None
    artifact = export_artifact(model, tmp_path / "model.safetensors", vocab=data.vocab.to_json(), users=users,
                               data=data if users else None)
    device = load(artifact)
    onnx = None
    if all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):  # the onnx extra
        from pocketrec.device.onnx_export import export_onnx
        from pocketrec.device.runtime import OnnxModel

        onnx_path = export_onnx(model, tmp_path / "model.onnx", k=TOP, vocab=data.vocab.to_json(), users=users,
                                data=data if users else None)
        onnx = OnnxModel(onnx_path)
        # the ONNX file keeps the table's bytes; its graph structure adds ~15 KB at any size (the 10% bound at
        # realistic sizes is tests/test_onnx_size.py's)
        assert onnx_path.nbytes <= 1.10 * artifact.nbytes + 16384
    for query in queries(backbone, data):
        ids, scores = torch_top(model, backbone, data, query)
        if backbone == "session":
            device_ids, device_scores = device.top_k(query, TOP)
            onnx_ids, onnx_scores = onnx.top_k(query) if onnx else (device_ids, device_scores)
        else:
            raw, device_scores = device.recommend_user(query, k=TOP)
            device_ids = np.asarray([data.vocab.encode(i) for i in raw])
            onnx_raw, onnx_scores = onnx.recommend_user(query, k=TOP) if onnx else (raw, device_scores)
            onnx_ids = np.asarray([data.vocab.encode(i) for i in onnx_raw])
        same_ranking(ids, scores, device_ids, device_scores)
        same_ranking(device_ids, device_scores, np.asarray(onnx_ids)[:TOP], np.asarray(onnx_scores)[:TOP])
