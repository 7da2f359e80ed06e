"""Parity: the torch model, the numpy runtime and onnxruntime rank the catalogue the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_device_artifact import trained_models

from pocketrec.device.artifact import export_artifact
from pocketrec.device.onnx_export import OnnxModel, export_onnx
from pocketrec.device.runtime import load
from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
from pocketrec.tables.codebook import CodebookTable
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.tt import TTTable

TOL = 1e-4
TOP = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    data, models = trained_models()
    return data, models, root


def torch_top(model: SessionRecommender, session: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        scores = model.score(torch.as_tensor(session, dtype=torch.long).view(1, -1))[0]
    values, indices = torch.topk(scores, k)
    return indices.numpy(), values.numpy()


def assert_same_ranking(ids_a, scores_a, ids_b, scores_b, all_scores_b=None) -> None:
    """Same scores at every rank; ids may differ only among items whose scores tie within TOL."""
    assert len(ids_a) == len(ids_b)
    np.testing.assert_allclose(scores_a, scores_b, atol=TOL, rtol=0)
    for rank, (a, b) in enumerate(zip(ids_a, ids_b, strict=True)):
        if a != b:  # a tie: both scores at this rank must match the other's within tolerance
            assert abs(scores_a[rank] - scores_b[rank]) <= TOL
            if all_scores_b is not None:
                assert abs(all_scores_b[a] - scores_b[rank]) <= TOL
    # items clearly inside the list (not tied with the last one) are the same sets
    cut = scores_a[-1] + TOL
    assert set(ids_a[scores_a > cut]) == set(ids_b[scores_b > cut])


def sessions(data, count: int = 8) -> list[np.ndarray]:
    out = []
    for seq in data.test.sequences[:count]:
        out.append(np.asarray(seq[:-1][-10:], dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def ml100k_setup(tmp_path_factory):
    """The same models trained on real data: ml-100k from the recbole wheel (installed by the Makefile)."""
    from pocketrec.data.registry import available_datasets, load_dataset

    info = next(i for i in available_datasets() if i.name == "ml-100k")
    if not info.available:
        pytest.skip(f"ml-100k not available: {info.reason}")
    root = tmp_path_factory.mktemp("parity-ml100k")
    data, models = trained_models(str(root / "run"), data=load_dataset("ml-100k"))
    return data, models, root


KINDS = ["dense", "tt", "tt_ordered", "codebook", "codebook_packed", "codebook_int8", "int8", "int4"]


@pytest.mark.parametrize("kind", KINDS)
def test_torch_numpy_onnx_agree(setup, kind):
    check_parity(setup, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_parity_on_real_ml100k_histories(ml100k_setup, kind):
    """Real users' histories (the last 10 items before each test target) over the 1,682-item catalogue."""
    check_parity(ml100k_setup, kind)


def check_parity(setup, kind: str) -> None:
    """torch, the numpy runtime and onnxruntime: same top-20 (ties allowed), scores within TOL."""
    data, models, root = setup
    model = models[kind]
    device = load(export_artifact(model, root / f"{kind}.safetensors", vocab=data.vocab.to_json()))
    onnx_model = OnnxModel(export_onnx(model, root / f"{kind}.onnx", k=TOP, vocab=data.vocab.to_json()))
    for session in sessions(data):
        t_ids, t_scores = torch_top(model, session, TOP)
        n_ids, n_scores = device.top_k(session, TOP)
        o_ids, o_scores = onnx_model.top_k(session)
        all_numpy = device.scores(session)
        with torch.no_grad():
            all_torch = model.score(torch.as_tensor(session).view(1, -1))[0].numpy()
        np.testing.assert_allclose(all_numpy[1:], all_torch[1:], atol=TOL, rtol=0)
        assert_same_ranking(t_ids, t_scores, n_ids, n_scores, all_numpy)
        assert_same_ranking(t_ids, t_scores, o_ids, o_scores, all_numpy)
        assert 0 not in n_ids and 0 not in o_ids
        padded = np.zeros(10, dtype=np.int64)  # right-padded input gives the same result in ONNX
        padded[: len(session)] = session
        p_ids, p_scores = onnx_model.top_k(padded)
        assert_same_ranking(o_ids, o_scores, p_ids, p_scores)


@pytest.mark.parametrize("readout,normalize", [("last", False), ("attention", False), ("hybrid", True), ("item", True)])
def test_encoder_variants(setup, readout, normalize):
    """Last-position, mean- and last-queried (hybrid) readouts, dot-product and cosine scores, two layers and
    two heads (untrained)."""
    data, _, root = setup
    torch.manual_seed(1)
    cfg = EncoderConfig(dim=16, layers=2, heads=2, max_len=10, readout=readout, normalize=normalize)
    model = SessionRecommender(cfg, DenseTable(data.num_items, 16, init_std=0.5)).eval()
    device = load(export_artifact(model, root / "variant.safetensors"))
    onnx_model = OnnxModel(export_onnx(model, root / "variant.onnx", k=TOP))
    for session in sessions(data, 4):
        t_ids, t_scores = torch_top(model, session, TOP)
        n_ids, n_scores = device.top_k(session, TOP)
        o_ids, o_scores = onnx_model.top_k(session)
        assert_same_ranking(t_ids, t_scores, n_ids, n_scores, device.scores(session))
        assert_same_ranking(t_ids, t_scores, o_ids, o_scores, device.scores(session))


def test_tt_three_cores_and_uint16_codes(setup):
    """Scorers beyond the defaults: a 3-core TT and codebooks with K > 256 (uint16 codes)."""
    data, models, root = setup
    teacher = models["dense"]
    for table in (TTTable(data.num_items, 16, rank=4, num_cores=3, t=2),
                  CodebookTable(data.num_items, 16, M=2, K=300, seed=0)):
        model = SessionRecommender(teacher.config, table)
        model.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("table.")},
                              strict=False)
        model.eval()
        device = load(export_artifact(model, root / "extra.safetensors"))
        for session in sessions(data, 3):
            with torch.no_grad():
                ref = model.score(torch.as_tensor(session).view(1, -1))[0].numpy()
            np.testing.assert_allclose(device.scores(session)[1:], ref[1:], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["dense", "tt", "tt_ordered", "codebook_packed", "int4"])
def test_streamed_top_k_equals_full_ranking_across_blocks(setup, kind, monkeypatch):
    """With tiny score blocks the streamed top-k (ties by id, exclusions) equals a sort of all scores."""
    from pocketrec.device import np_tables

    data, models, root = setup
    device = load(export_artifact(models[kind], root / f"{kind}-blocks.safetensors", vocab=data.vocab.to_json()))
    monkeypatch.setattr(np_tables, "_SCORE_BLOCK", 7)
    for session in sessions(data, 3):
        full = device.scores(session)
        full[session] = -np.inf
        order = np.lexsort((np.arange(len(full)), -full))
        expected = [i for i in order if np.isfinite(full[i])][:15]
        ids, scores = device.top_k(session, 15, exclude=session)
        assert list(ids) == expected
        np.testing.assert_array_equal(scores, full[expected])
        assert len(list(device.table.blocks())) > 5
