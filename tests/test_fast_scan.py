"""Fast-scan: FAISS's 4-bit kernels give exactly the reference scorer's top-k (ties aside), through the runtime
and the CLI; the grouped lookup tables of the numpy scorer and the ONNX graph score as the plain sum does."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pocketrec.cli import app
from pocketrec.device.artifact import export_artifact
from pocketrec.device.np_tables import CodebookScorer
from pocketrec.device.runtime import ArtifactError, load
from pocketrec.extras import MissingExtraError
from pocketrec.formats.table_arrays import lut_groups
from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
from pocketrec.tables.codebook import CodebookTable

faiss = pytest.importorskip("faiss")
from pocketrec.device import np_fastscan  # noqa: E402
from pocketrec.device.np_fastscan import FastScanScorer  # noqa: E402


def codebook_arrays(n: int, d: int, M: int, K: int = 16, scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    books = (rng.standard_normal((M, K, d)) * scale).astype(np.float32)
    codes = rng.integers(0, K, (n, M)).astype(np.uint8)
    return {"codebooks": books, "codes": codes.ravel()}, {"kind": "codebook", "num_items": n, "dim": d, "M": M,
                                                          "K": K, "dtype": "float32"}


def reference_top(scorer: CodebookScorer, query: np.ndarray, k: int, exclude=()) -> np.ndarray:
    scores = scorer.score(query)
    scores[0] = -np.inf
    scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


@pytest.mark.parametrize("n,d,M,scale", [(40_000, 32, 8, 1.0), (20_001, 16, 3, 5.0), (30_000, 64, 13, 0.1)])
def test_fast_scan_top_k_is_the_reference_top_k(n, d, M, scale):
    arrays, description = codebook_arrays(n, d, M, scale=scale)
    fast, ref = FastScanScorer(arrays, description), CodebookScorer(arrays, description)
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(12):
        query = rng.standard_normal(d).astype(np.float32)
        # FAISS's approximate scores stay within the error model the exactness check relies on
        per_book = fast.codebooks @ query
        approx, found = fast.index.search(query[None], 300)
        exact = ref.score(query)[found[0] + 1]
        model = M * float((per_book.max(1) - per_book.min(1)).max()) / 510
        worst = max(worst, float(np.abs(approx[0] - exact).max()) / model)
        top_id = int(found[0][0]) + 1
        for k, exclude in ((1, ()), (20, (top_id, 7)), (100, ())):
            ids, scores = fast.top_k(query, k, exclude)
            expected = reference_top(ref, query, k, exclude)
            assert np.array_equal(ids, expected)
            assert np.array_equal(scores, ref.score(query)[expected])  # the scorer's own sums, to the bit
    assert 0 < worst <= 1.0


def test_the_candidate_list_widens_until_the_bound_proves_the_top_k(monkeypatch):
    """Near-ties (a tiny spread of scores) with a tiny first fetch: the check must refuse it and fetch more, and
    past a sixteenth of the catalogue the numpy scorer ranks instead; the answer is exact either way."""
    arrays, description = codebook_arrays(80_000, 16, 4, scale=1.0)
    arrays["codebooks"] *= 1e-3  # the scores nearly flat, but one big codeword sets the LUTs' 8-bit step: the
    arrays["codebooks"][0, 0] = 10.0  # ~5,000 items holding it are all within FAISS's error of each other
    fast, ref = FastScanScorer(arrays, description), CodebookScorer(arrays, description)
    searched = []
    original = fast.index.search
    fast.index = type("Spy", (), {"search": lambda self, q, k: searched.append(k) or original(q, k)})()
    monkeypatch.setattr(np_fastscan, "_MIN_FETCH", 1)
    query = np.ones(16, dtype=np.float32)
    ids, scores = fast.top_k(query, 1)
    assert np.array_equal(ids, reference_top(ref, query, 1))
    assert searched == [4, 16, 64, 256, 1024, 4096]  # widened 4x a round, then the numpy scorer (5,000 > n / 16)


def test_flat_queries_exclusions_and_small_catalogues_stay_exact():
    arrays, description = codebook_arrays(40_000, 8, 4)
    fast, ref = FastScanScorer(arrays, description), CodebookScorer(arrays, description)
    zero = np.zeros(8, dtype=np.float32)  # every score ties at 0: FAISS's scale is undefined
    ids, scores = fast.top_k(zero, 5)
    assert ids.tolist() == [1, 2, 3, 4, 5] and not scores.any()
    query = np.random.default_rng(3).standard_normal(8).astype(np.float32)
    everything_but_three = np.arange(4, 40_001)
    ids, _ = fast.top_k(query, 10, everything_but_three)  # fewer than k left
    assert sorted(ids.tolist()) == [1, 2, 3]
    ids, _ = fast.top_k(query, 10**6)  # k beyond the catalogue
    assert len(ids) == 40_000 and np.array_equal(ids, reference_top(ref, query, 40_000))
    tiny_arrays, tiny = codebook_arrays(50, 8, 3)
    small = FastScanScorer(tiny_arrays, tiny)
    assert np.array_equal(small.top_k(query, 7)[0], reference_top(CodebookScorer(tiny_arrays, tiny), query, 7))


def test_fast_scan_refuses_more_codebooks_than_its_counters_hold():
    from pocketrec.device.np_fastscan import check_fast_scan

    check_fast_scan({"kind": "codebook", "K": 16, "M": 256})
    with pytest.raises(ValueError, match="at most 256 codebooks"):
        check_fast_scan({"kind": "codebook", "K": 16, "M": 300})


def test_fast_scan_packs_codes_as_faiss_reads_them():
    from pocketrec.device.np_fastscan import faiss_nibbles
    from pocketrec.formats.bitpack import from_faiss_bitstrings

    codes = np.random.default_rng(0).integers(0, 16, (50, 7))
    packed = faiss_nibbles(codes)
    assert packed.shape == (50, 4) and np.array_equal(from_faiss_bitstrings(packed, 7, 4), codes)


def test_stream_top_k_of_nothing_is_nothing():
    from pocketrec.device.np_tables import stream_top_k

    blocks = [(0, np.array([0.0, 3.0, 1.0], np.float32))]
    assert stream_top_k(iter(blocks), 0)[0].size == 0
    assert stream_top_k(iter(blocks), 5)[0].tolist() == [1, 2]


def session_model(num_items: int, K: int = 16, normalize: bool = False) -> SessionRecommender:
    torch.manual_seed(0)
    config = EncoderConfig(dim=16, layers=1, heads=1, max_len=10, normalize=normalize)
    return SessionRecommender(config, CodebookTable(num_items, 16, M=6, K=K, bitpack=True, seed=0)).eval()


def test_runtime_and_cli_rank_the_same_with_fast_scan(tmp_path):
    model = session_model(6_000)
    path = export_artifact(model, tmp_path / "m.safetensors")
    plain, fast = load(path), load(path, fast_scan=True)
    assert isinstance(fast.table, FastScanScorer)
    for session in ([5, 9, 3], [100], [4000, 12, 7, 7]):
        a_ids, a_scores = plain.top_k(session, 20, exclude=session)
        b_ids, b_scores = fast.top_k(session, 20, exclude=session)
        assert np.array_equal(a_ids, b_ids)
        np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-5)
    runner = CliRunner()
    outs = [runner.invoke(app, ["recommend", str(path), "--history", "1,2,3", "-k", "7", "--json", *flag])
            for flag in ([], ["--fast-scan"])]
    assert all(o.exit_code == 0 for o in outs), [o.output for o in outs]
    assert json.loads(outs[0].output)["items"] == json.loads(outs[1].output)["items"]


def test_fast_scan_refuses_what_it_cannot_rank(tmp_path, monkeypatch):
    cosine = export_artifact(session_model(300, normalize=True), tmp_path / "cos.safetensors")
    with pytest.raises(ArtifactError, match="cosine"):
        load(cosine, fast_scan=True)
    wide = export_artifact(session_model(300, K=32), tmp_path / "k32.safetensors")
    with pytest.raises(ArtifactError, match="K = 16"):
        load(wide, fast_scan=True)
    result = CliRunner().invoke(app, ["recommend", str(wide), "--history", "1", "--fast-scan"])
    assert result.exit_code != 0 and "K = 16" in result.output and "Traceback" not in result.output
    monkeypatch.setitem(sys.modules, "faiss", None)
    plain = export_artifact(session_model(300), tmp_path / "plain.safetensors")
    with pytest.raises(MissingExtraError, match=r"pip install 'pocketrec\[faiss\]'"):
        load(plain, fast_scan=True)
    assert load(plain).top_k([1, 2], 5)[0].size == 5  # without fast-scan nothing needs FAISS


@pytest.mark.parametrize("max_lut", [16, 256, 4096, 65536])
def test_grouped_lookup_tables_score_as_the_plain_sum(max_lut):
    arrays, description = codebook_arrays(70_000, 8, 7, K=16)
    scorer = CodebookScorer(arrays, description, max_group_lut=max_lut)
    assert [len(g) for g in scorer.groups] == {16: [1] * 7, 256: [2, 2, 2, 1], 4096: [3, 3, 1],
                                               65536: [4, 3]}[max_lut]
    query = np.random.default_rng(2).standard_normal(8).astype(np.float32)
    codes = arrays["codes"].reshape(-1, 7).astype(np.int64)
    plain = (arrays["codebooks"] @ query)[np.arange(7), codes].sum(1)
    np.testing.assert_allclose(scorer.score(query)[1:], plain, rtol=1e-5, atol=1e-5)
    assert np.array_equal(scorer.rows(np.array([1, 500, 70_000])),
                          arrays["codebooks"][np.arange(7), codes[[0, 499, 69_999]]].sum(1))


def test_lut_groups_follow_the_table_cap_and_the_catalogue():
    assert lut_groups(12, 16, 10**6, 65536) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert lut_groups(12, 16, 10**6, 32768) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert lut_groups(5, 16, 300, 65536) == [[0, 1], [2, 3], [4]]  # no table larger than the catalogue
    assert lut_groups(3, 256, 10**6, 65536) == [[0, 1], [2]]


def test_the_table_alone_in_onnx_ranks_as_numpy():
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from pocketrec.device.onnx_export import table_query_model

    arrays, description = codebook_arrays(9_000, 16, 6)  # K = 16, groups of 3: the grouped graph
    session = ort.InferenceSession(table_query_model(arrays, description, k=50).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    scorer = CodebookScorer(arrays, description)
    for seed in range(3):
        query = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
        scores, ids = session.run(None, {"query": query[None]})
        expected = reference_top(scorer, query, 50)
        np.testing.assert_allclose(scores[0], scorer.score(query)[expected], rtol=1e-5, atol=1e-5)
        assert np.array_equal(ids[0], expected)


def test_a_torch_table_hands_its_arrays_to_fast_scan():
    table = CodebookTable(3_000, 16, M=5, K=16, bitpack=True, seed=3).eval()
    fast = FastScanScorer(*table.export())  # the torch side hands over its exported arrays
    query = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    with torch.no_grad():
        reference = table.score(torch.from_numpy(query)[None])[0].numpy()
    reference[0] = -np.inf
    ids, scores = fast.top_k(query, 10)
    assert np.array_equal(ids, np.lexsort((np.arange(len(reference)), -reference))[:10])
    np.testing.assert_allclose(scores, reference[ids], rtol=1e-5, atol=1e-5)
