"""The quantizers (pocketrec.quantize): pocketrec's k-means family and FAISS's, each returning the additive layout
of the codebook table (codebooks that sum), judged on rows with structure to find; FAISS's codes unpacked as FAISS
itself decodes them; a missing extra is a one-line hint."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pocketrec.extras import MissingExtraError
from pocketrec.quantize import QUANTIZERS, get_quantizer
from pocketrec.quantize.base import AdditiveCodes
from pocketrec.tables.codebook import CodebookTable


def rows(n: int = 1500, d: int = 16, rank: int = 4, seed: int = 0) -> np.ndarray:
    """Low-rank rows plus a little noise: a good quantizer gets well below the error of the mean."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + 0.05 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def available(name: str) -> bool:
    if name.startswith("faiss"):
        pytest.importorskip("faiss")
    return True


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_each_quantizer_returns_summing_codebooks_that_fit(name):
    available(name)
    x = rows()
    quantizer = get_quantizer(name)
    fitted = quantizer.fit(x, 8, 4, seed=0)
    assert fitted.codebooks.shape == (8, 4, 16) and fitted.codes.shape == (1500, 8)
    assert fitted.codes.min() >= 0 and fitted.codes.max() < 4 and fitted.seconds > 0
    error = fitted.relative_error(x)
    assert error < 0.5, error  # 8 codebooks of 2 bits on rank-4 rows
    # the codes and codebooks are the codebook table's: the table reconstructs what the quantizer did
    table = CodebookTable.from_codes(fitted.codebooks, fitted.codes)
    np.testing.assert_allclose(table.materialize()[1:].detach().numpy(), fitted.reconstruct(), atol=1e-5)
    assert quantizer.layout(8, 4) == f"{quantizer.prefix}8x2"


def test_least_squares_codebooks_let_product_codes_use_every_dim():
    x = rows(seed=1)
    # product codes with least-squares codebooks use every dim: far below plain product quantisation here
    pq = get_quantizer("pq")
    pq.refit = False
    assert get_quantizer("pq").fit(x, 6, 4).relative_error(x) < 0.8 * pq.fit(x, 6, 4).relative_error(x)


def test_relative_error_is_the_squared_error_over_the_squared_norm():
    x = rows(n=50, d=4)
    zero = AdditiveCodes(np.zeros((1, 2, 4), np.float32), np.zeros((50, 1), np.int64))
    assert zero.relative_error(x) == pytest.approx(1.0)
    exact = AdditiveCodes(x[:, None, :].transpose(1, 0, 2).copy(), np.arange(50)[:, None])
    assert exact.relative_error(x) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["rq", "lsq", "prq"])
def test_faiss_codes_are_unpacked_as_faiss_decodes_them(kind):
    faiss = pytest.importorskip("faiss")
    from pocketrec.quantize.faiss_quantizers import FaissAdditive

    x = rows(n=800)
    quantizer = FaissAdditive(kind, beam=2)
    quantizer.refit = False  # FAISS's own codebooks, to compare with FAISS's own decoding
    fitted = quantizer.fit(x, 8, 4, seed=0)
    if kind == "rq":
        reference = faiss.ResidualQuantizer(16, 8, 2)
        reference.max_beam_size = 2
        reference.cp.seed = 0
    elif kind == "lsq":
        reference = faiss.LocalSearchQuantizer(16, 8, 2)
        reference.random_seed = 0
    else:
        reference = faiss.ProductResidualQuantizer(16, 2, 4, 2)
        for i in range(2):
            part = faiss.downcast_AdditiveQuantizer(reference.subquantizer(i))
            part.max_beam_size, part.cp.seed = 2, i
    reference.search_type = faiss.AdditiveQuantizer.ST_decompress
    reference.train(x)
    decoded = reference.decode(reference.compute_codes(x))
    np.testing.assert_allclose(fitted.reconstruct(), decoded, atol=1e-4)


def test_a_missing_faiss_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'pocketrec\[faiss\]'"):
        get_quantizer("faiss-rq").fit(rows(n=100), 4, 4)
    with pytest.raises(ValueError, match="unknown quantizer 'nope'"):
        get_quantizer("nope")
    from pocketrec.quantize.faiss_quantizers import nbits_of

    with pytest.raises(ValueError, match="K a power of two"):
        nbits_of(6)


@pytest.mark.parametrize("name", ["rq", "faiss-rq", "faiss-prq", "faiss-lsq"])
def test_the_seed_is_honoured(name):
    available(name)
    x = rows(n=600)
    a, b, c = (get_quantizer(name).fit(x, 8, 4, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.codes, b.codes)  # the same seed, the same codes
    assert not np.array_equal(a.codes, c.codes)  # another seed, another fit


def test_fewer_rows_than_codewords_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs at least K=16 rows to fit, got 10"):
        get_quantizer("rq").fit(rows(n=10), 2, 16)
