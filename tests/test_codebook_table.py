"""CodebookTable (EODRec compositional codes): lookups and scores against explicit sums, bytes against
the export and docs/methods/eodrec.md, bit-packing, budgets, k-means / residual-quantisation initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pocketrec.formats.bitpack import bits_for, code_dtype, pack_codes, packed_nbytes, unpack_codes
from pocketrec.quantize.kmeans import fit_codebooks, kmeans
from pocketrec.tables import TABLE_KINDS, CodebookTable, DenseTable, array_nbytes, table_from_export
from pocketrec.tables.codebook import DEFAULT_MAX_CODEBOOKS, icm_refine, reconstruction_mse


def make(num_items: int = 50, dim: int = 12, M: int = 3, K: int = 16, seed: int = 0, **kw) -> CodebookTable:
    table = CodebookTable(num_items, dim, M=M, K=K, seed=seed, init_std=0.5, **kw)
    return table.double()


def explicit_rows(table: CodebookTable) -> torch.Tensor:
    """Row i = sum_m codebooks[m, codes[i, m]] by plain Python loops; row 0 = zeros."""
    rows = torch.zeros(table.num_rows, table.dim, dtype=table.codebooks.dtype)
    for i in range(1, table.num_rows):
        for m in range(table.M):
            rows[i] += table.codebooks.detach()[m, int(table.codes[i, m])]
    return rows


def clustered(n: int = 2000, d: int = 32, clusters: int = 20, seed: int = 0) -> torch.Tensor:
    """``(n + 1, d)`` teacher-like vectors (row 0 = padding zeros): cluster centres plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3.0
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return torch.cat([torch.zeros(1, d), x])


# ---- lookups and scores ----------------------------------------------------------------------------

@pytest.mark.parametrize("M,K", [(1, 2), (3, 16), (4, 300)])
def test_forward_is_the_sum_of_codewords(M: int, K: int) -> None:
    table = make(M=M, K=K)
    rows = explicit_rows(table)
    ids = torch.tensor([[0, 1, 7], [50, 0, 23]])
    out = table(ids)
    assert out.shape == (2, 3, table.dim)
    torch.testing.assert_close(out, rows[ids])
    assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1] == 0)
    torch.testing.assert_close(table.materialize(), rows)


def on_path(table: CodebookTable, path: str) -> CodebookTable:
    """Force ``score``'s lookup-table path or its row-rebuild path (in blocks of 17 items, so several)."""
    table.LUT_MAX_BATCH = 10**9 if path == "lut" else 0
    table.ROW_CHUNK = 17
    return table


@pytest.mark.parametrize("path", ["lut", "rebuilt"])
@pytest.mark.parametrize("bitpack", [False, True])
@pytest.mark.parametrize("M,K", [(1, 8), (3, 16), (2, 1024)])
def test_score_matches_materialised_rows(M: int, K: int, bitpack: bool, path: str) -> None:
    table = make(M=M, K=K, bitpack=bitpack)
    if bitpack:  # what a device loads: through the packed export
        table = CodebookTable.from_export(*table.export()).double()
    on_path(table, path)
    queries = torch.randn(5, table.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scores = table.score(queries)
    assert scores.shape == (5, table.num_rows)
    expected = queries @ explicit_rows(table).t()
    torch.testing.assert_close(scores[:, 1:], expected[:, 1:])
    assert torch.all(scores[:, 0] == torch.finfo(scores.dtype).min)
    # column 0 never wins and never makes a softmax NaN
    assert torch.isfinite(torch.log_softmax(scores, -1)).all()


@pytest.mark.parametrize("path", ["lut", "rebuilt"])
def test_gradient_reaches_codebooks_through_score(path: str) -> None:
    table = on_path(make(M=3, K=8), path)
    queries = torch.randn(4, table.dim, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 5, 17, 50])
    loss = torch.nn.functional.cross_entropy(table.score(queries), targets)
    loss.backward()
    assert table.codebooks.grad is not None and table.codebooks.grad.abs().sum() > 0
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    # against autograd through the materialised rows
    grad_score = table.codebooks.grad.clone()
    table.codebooks.grad = None
    rows = table.materialize()
    logits = queries.detach() @ rows.t()
    logits[:, 0] = torch.finfo(logits.dtype).min
    torch.nn.functional.cross_entropy(logits, targets).backward()
    torch.testing.assert_close(grad_score, table.codebooks.grad)


@pytest.mark.parametrize("K", [4, 16, 64])
def test_codeword_sum_matches_explicit_lookups_and_gradients(K: int, monkeypatch) -> None:
    from pocketrec.tables import codebook
    from pocketrec.tables.codebook import codeword_sum

    monkeypatch.setattr(codebook, "ONE_HOT_BLOCK", 1000)  # several one-hot blocks, the last one partial
    gen = torch.Generator().manual_seed(K)
    M, n, d = 5, 3001, 6
    books = torch.randn(M * K, d, dtype=torch.float64, generator=gen, requires_grad=True)
    flat = torch.randint(K, (n, M), generator=gen) + torch.arange(M) * K
    grad = torch.randn(n, d, dtype=torch.float64, generator=gen)
    rows = codeword_sum(flat, books, K)
    rows.backward(grad)
    expected_books = books.detach().clone().requires_grad_(True)
    expected = torch.nn.functional.embedding(flat, expected_books).sum(-2)
    expected.backward(grad)
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(books.grad, expected_books.grad)


def test_both_score_paths_agree_and_the_default_switches_on_batch_size() -> None:
    table = make(M=4, K=16)
    rows = explicit_rows(table)
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    for batch in (1, CodebookTable.LUT_MAX_BATCH + 1):  # one query: LUT path; a big batch: rebuilt rows
        queries = torch.randn(batch, table.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
        torch.testing.assert_close(table.score(queries)[:, 1:], (queries @ rows.t())[:, 1:])
        torch.testing.assert_close(table.cosine_score(queries)[:, 1:], (queries @ unit.t())[:, 1:])
        torch.testing.assert_close(table.score(queries), on_path(make(M=4, K=16), "lut").score(queries))


# ---- bytes, export, bit-packing --------------------------------------------------------------------

@pytest.mark.parametrize("K", [2, 16, 32, 256, 257, 1024])
@pytest.mark.parametrize("bitpack", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_nbytes_is_what_export_returns(K: int, bitpack: bool, dtype: str) -> None:
    table = CodebookTable(37, 8, M=3, K=K, dtype=dtype, bitpack=bitpack, seed=0)
    arrays, description = table.export()
    assert table.nbytes() == array_nbytes(arrays)
    assert table.nbytes() == CodebookTable.bytes_for(37, 8, 3, K, dtype, bitpack)
    assert arrays["codebooks"].dtype == np.dtype(dtype)
    assert ("codebook_scales" in arrays) == (dtype == "int8")
    if bitpack:
        assert arrays["codes"].dtype == np.uint8 and arrays["codes"].ndim == 1
        assert arrays["codes"].nbytes == math.ceil(37 * 3 * math.ceil(math.log2(K)) / 8)
    else:
        assert arrays["codes"].dtype == (np.uint8 if K <= 256 else np.uint16)
        assert arrays["codes"].shape == (37, 3)
    assert description["code_dtype"] == ("uint8" if K <= 256 else "uint16")
    assert description["kind"] == "codebook" and description["bitpack"] == bitpack


def test_nbytes_matches_methods_formula_and_tmall_ratio() -> None:
    # docs/methods/eodrec.md: 4*M*K*d + ceil(n*M*ceil(log2 K)/8); with K = 256 uint8 codes are the same bytes.
    n, d, M, K = 40_727, 128, 3, 256
    formula = 4 * M * K * d + math.ceil(n * M * math.ceil(math.log2(K)) / 8)
    for bitpack in (False, True):
        assert CodebookTable.bytes_for(n, d, M, K, bitpack=bitpack) == formula
    ratio = DenseTable.bytes_for(n, d) / formula  # our dense table also stores the padding row
    assert ratio == pytest.approx(40.5, abs=0.05)
    # RetailRocket (n_node = 36,972), d = 256: 786,432 B + 110,916 B, 42.2x
    assert CodebookTable.bytes_for(36_972, 256, 3, 256, bitpack=True) == 786_432 + 110_916
    assert DenseTable.bytes_for(36_972, 256) / CodebookTable.bytes_for(36_972, 256, 3, 256) == \
        pytest.approx(42.2, abs=0.05)


@pytest.mark.parametrize("K", [2, 16, 32, 256, 1024])
@pytest.mark.parametrize("count", [1, 7, 8, 1001])
def test_bitpack_round_trip(K: int, count: int) -> None:
    rng = np.random.default_rng(K + count)
    codes = rng.integers(0, K, size=count)
    codes[0] = K - 1  # the widest value
    bits = bits_for(K)
    assert bits == math.ceil(math.log2(K))
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(count, bits)
    back = unpack_codes(packed, bits, count)
    assert back.dtype == code_dtype(K) and np.array_equal(back, codes)


def test_bitpack_layout_is_msb_first() -> None:
    # 3-bit codes 5 (101), 3 (011), 7 (111) -> 101011 11 -> 0b10101111, then 0b1 padded -> 0b10000000
    packed = pack_codes(np.array([5, 3, 7]), 3)
    assert packed.tolist() == [0b10101111, 0b10000000]
    with pytest.raises(ValueError, match="fit 3 bits"):
        pack_codes(np.array([8]), 3)


def test_code_dtypes() -> None:
    assert code_dtype(2) == np.uint8 and code_dtype(256) == np.uint8
    assert code_dtype(257) == np.uint16 and code_dtype(65536) == np.uint16
    assert CodebookTable(5, 4, M=2, K=256).code_dtype == "uint8"
    assert CodebookTable(5, 4, M=2, K=1024).code_dtype == "uint16"


@pytest.mark.parametrize("bitpack", [False, True])
@pytest.mark.parametrize("K", [2, 32, 256, 1024])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_export_round_trip_is_exact(K: int, bitpack: bool, dtype: str) -> None:
    table = CodebookTable(41, 6, M=3, K=K, dtype=dtype, bitpack=bitpack, seed=3)
    arrays, description = table.export()
    back = table_from_export(arrays, description)
    assert isinstance(back, CodebookTable) and TABLE_KINDS["codebook"] is CodebookTable
    arrays2, description2 = back.export()
    assert description2 == description
    for name in arrays:
        assert arrays2[name].dtype == arrays[name].dtype
        assert np.array_equal(arrays2[name], arrays[name])
    assert torch.equal(back.codes[1:], table.codes[1:])
    if dtype == "float32":
        assert torch.equal(back.codebooks, table.codebooks)
    rebuilt = CodebookTable.from_description(description)
    assert (rebuilt.M, rebuilt.K, rebuilt.bitpack, rebuilt.stored_dtype) == (3, K, bitpack, dtype)


def test_float16_table_scores_with_the_exported_codebooks() -> None:
    # Training, validation and test must see what the device loads: fp16-rounded codebooks.
    table = CodebookTable(40, 8, M=3, K=16, dtype="float16", seed=1)
    with torch.no_grad():
        table.codebooks.mul_(1 + 1e-3 * torch.arange(8.0))  # values fp16 cannot hold exactly
    arrays, description = table.export()
    device = table_from_export(arrays, description)
    ids = torch.arange(1, 41)
    assert not torch.equal(table.codebooks.half().float(), table.codebooks)
    assert torch.equal(table(ids), device(ids))
    queries = torch.randn(2, 8)
    assert torch.allclose(table.score(queries), device.score(queries), atol=1e-6)
    table.score(queries).sum().backward()
    assert table.codebooks.grad is not None and table.codebooks.grad.abs().sum() > 0


def test_int8_table_scores_with_the_exported_codebooks() -> None:
    """int8 codebooks: each codeword is int8 values times a float32 scale; lookups, scores and the device see
    exactly that, gradients pass straight through to the float32 master codebooks."""
    table = CodebookTable(40, 8, M=3, K=16, dtype="int8", seed=1)
    arrays, description = table.export()
    values, scales = arrays["codebooks"], arrays["codebook_scales"]
    assert values.dtype == np.int8 and scales.shape == (3, 16) and np.abs(values).max() == 127
    dequantized = torch.from_numpy(values.astype(np.float32) * scales[..., None])
    torch.testing.assert_close(table.stored_codebooks(), dequantized, rtol=0, atol=1e-7)
    error = (dequantized - table.codebooks).norm() / table.codebooks.norm()
    assert 0 < error < 0.01  # int8 per codeword: well under 1% of the codewords
    device = table_from_export(arrays, description)
    ids = torch.arange(1, 41)
    torch.testing.assert_close(table(ids), device(ids), rtol=0, atol=1e-6)
    queries = torch.randn(2, 8)
    torch.testing.assert_close(table.score(queries), device.score(queries), rtol=0, atol=1e-5)
    table.score(queries).sum().backward()
    assert table.codebooks.grad is not None and table.codebooks.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="codebook_scales"):
        CodebookTable.from_export({k: v for k, v in arrays.items() if k != "codebook_scales"}, description)
    # the device runtime never reads int8 codebooks as floats (or floats as int8)
    from pocketrec.device.np_tables import CodebookScorer

    with pytest.raises(ValueError, match="unexpected arrays"):
        CodebookScorer(arrays, {**description, "dtype": "float16"})
    with pytest.raises(ValueError, match="codebooks are int8"):
        CodebookScorer({k: v for k, v in arrays.items() if k != "codebook_scales"}, {**description, "dtype": "float16"})
    # a quarter of float32's codebook bytes, plus 4 B of scale per codeword
    assert (CodebookTable.bytes_for(40, 8, 3, 16, "float32") - CodebookTable.bytes_for(40, 8, 3, 16, "int8")
            == 3 * 16 * (8 * 3 - 4))
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        CodebookTable(40, 8, M=3, K=16, dtype="bfloat16")


def test_from_export_rejects_bad_arrays() -> None:
    arrays, description = CodebookTable(10, 4, M=2, K=16, seed=0).export()
    with pytest.raises(ValueError, match="codes have shape"):
        CodebookTable.from_export({**arrays, "codes": arrays["codes"][:5]}, description)
    with pytest.raises(ValueError, match="codebooks have shape"):
        CodebookTable.from_export({**arrays, "codebooks": arrays["codebooks"][:1]}, description)
    bad = arrays["codes"].copy()
    bad[0, 0] = 16
    with pytest.raises(ValueError, match="0..15"):
        CodebookTable.from_export({**arrays, "codes": bad}, description)


# ---- budgets -----------------------------------------------------------------------------------------

def _bits_rule_best(n: int, d: int, budget: int, dtype: str, bitpack: bool) -> tuple[float, int]:
    """Brute force over the documented search space: max bits per item, then fewest bytes."""
    best: tuple[float, int] | None = None
    for k in (2 ** b for b in range(1, 9)):
        for m in range(1, DEFAULT_MAX_CODEBOOKS + 1):
            size = CodebookTable.bytes_for(n, d, m, k, dtype, bitpack)
            if size <= budget:
                key = (m * math.log2(k), -size)
                best = key if best is None or key > best else best
    assert best is not None
    return best


@pytest.mark.parametrize("bitpack", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("budget", [30_000, 200_000, 515_397, 2_000_000])
def test_for_budget_fits_and_is_maximal(budget: int, dtype: str, bitpack: bool) -> None:
    n, d = 40_727, 128
    if budget < CodebookTable.bytes_for(n, d, 1, 2, dtype, bitpack):
        with pytest.raises(ValueError):
            CodebookTable.for_budget(n, d, budget, dtype=dtype, bitpack=bitpack)
        return
    M, K = CodebookTable.config_for_budget(n, d, budget, dtype=dtype, bitpack=bitpack)
    size = CodebookTable.bytes_for(n, d, M, K, dtype, bitpack)
    assert size <= budget and 1 <= M <= DEFAULT_MAX_CODEBOOKS and K in {2 ** b for b in range(1, 9)}
    assert (M * math.log2(K), -size) == _bits_rule_best(n, d, budget, dtype, bitpack)


def test_for_budget_builds_the_table_and_honours_fixed_K() -> None:
    n, d = 1_000, 16
    table = CodebookTable.for_budget(n, d, 20_000, seed=0)
    assert table.nbytes() <= 20_000
    assert (table.M, table.K) == CodebookTable.config_for_budget(n, d, 20_000)
    fixed = CodebookTable.for_budget(n, d, 200_000, K=256, seed=0)
    assert fixed.K == 256 and fixed.nbytes() <= 200_000
    assert CodebookTable.bytes_for(n, d, fixed.M + 1, 256) > 200_000 or fixed.M == 8


def test_too_small_budget_names_the_minimum() -> None:
    smallest = CodebookTable.bytes_for(40_727, 128, 1, 2)
    with pytest.raises(ValueError, match=f"{smallest:,} B for M=1, K=2"):
        CodebookTable.for_budget(40_727, 128, smallest - 1)
    CodebookTable.for_budget(40_727, 128, smallest)  # exactly the minimum fits


# ---- initialisation from teacher vectors ------------------------------------------------------------

def test_kmeans_is_deterministic_and_lowers_the_error() -> None:
    x = clustered(n=1500, d=16)[1:]
    c1, a1 = kmeans(x, 8, iters=10, seed=5)
    c2, a2 = kmeans(x, 8, iters=10, seed=5)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert a1.shape == (1500,) and c1.shape == (8, 16)
    # each point is assigned to its nearest returned centroid
    nearest = torch.cdist(x, c1).argmin(1)
    assert (nearest == a1).float().mean() > 0.999
    sse_kmeans = float(((x - c1[a1]) ** 2).sum())
    sse_one = float(((x - x.mean(0)) ** 2).sum())
    assert sse_kmeans < 0.5 * sse_one
    # more points than clusters is fine; fewer points than clusters too
    c3, a3 = kmeans(x[:5], 8, iters=5, seed=0)
    assert c3.shape == (8, 16) and torch.allclose(c3[a3], x[:5])


def test_kmeans_chunking_does_not_change_the_result() -> None:
    x = clustered(n=700, d=8)[1:]
    c1, a1 = kmeans(x, 6, iters=8, seed=1)
    c2, a2 = kmeans(x, 6, iters=8, seed=1, chunk_size=64)
    assert torch.equal(a1, a2) and torch.allclose(c1, c2)


def test_rq_beats_random_codes_and_more_codebooks_help() -> None:
    vectors = clustered()
    errors = {m: CodebookTable.from_vectors(vectors, m, 16, seed=0).reconstruction_error(vectors)
              for m in (1, 2, 4)}
    random = CodebookTable.from_vectors(vectors, 2, 16, method="random", seed=0)
    random_err = random.reconstruction_error(vectors)
    assert errors[2] < 0.1 * random_err
    assert errors[1] > errors[2] > errors[4]
    pq = CodebookTable.from_vectors(vectors, 2, 16, method="pq", seed=0)
    assert pq.reconstruction_error(vectors) < 0.1 * random_err


def test_from_vectors_is_deterministic_and_the_table_reconstructs() -> None:
    vectors = clustered(n=600, d=16)
    t1 = CodebookTable.from_vectors(vectors, 3, 8, seed=4)
    t2 = CodebookTable.from_vectors(vectors, 3, 8, seed=4)
    assert torch.equal(t1.codes, t2.codes) and torch.equal(t1.codebooks, t2.codebooks)
    assert t1.codes.shape == (601, 3) and int(t1.codes.max()) < 8
    err = t1.reconstruction_error(vectors)
    rows = t1.materialize().detach()
    assert err == pytest.approx(float(((rows[1:] - vectors[1:]) ** 2).sum(1).mean()), rel=1e-5)


def test_least_squares_codebooks_and_icm_never_raise_the_error() -> None:
    vectors = clustered(n=1000, d=16)
    x = vectors[1:]
    table = CodebookTable.from_vectors(vectors, 3, 8, seed=0, refit=False)
    books, codes = table.codebooks.detach(), table.codes[1:]
    rq = reconstruction_mse(x, books, codes)
    refit = reconstruction_mse(x, fit_codebooks(x, codes, 8), codes)
    assert refit <= rq + 1e-6
    books2, codes2 = icm_refine(x, books, codes, iters=3)
    assert reconstruction_mse(x, books2, codes2) < rq
    refined = CodebookTable.from_vectors(vectors, 3, 8, seed=0, refine_iters=3)
    assert refined.reconstruction_error(vectors) <= CodebookTable.from_vectors(
        vectors, 3, 8, seed=0).reconstruction_error(vectors)


@pytest.mark.parametrize("M,K,bitpack", [(1, 256, False), (3, 16, True), (7, 32, True), (5, 256, False), (4, 2, True)])
def test_numpy_scorer_groups_codebooks_and_matches_torch(M, K, bitpack):
    from pocketrec.device.np_tables import make_scorer

    table = CodebookTable(500, 12, M=M, K=K, bitpack=bitpack, seed=3)
    scorer = make_scorer(*table.export())
    assert sum(len(g) for g in scorer.groups) == M and all(K ** len(g) <= max(K, 500) for g in scorer.groups)
    query = torch.randn(1, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = table.score(query)[0, 1:].numpy()
        rows = table(torch.tensor([0, 1, 77, 500])).numpy()
    np.testing.assert_allclose(scorer.score(query[0].numpy())[1:], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.rows(np.array([0, 1, 77, 500])), rows, rtol=1e-6, atol=1e-6)
