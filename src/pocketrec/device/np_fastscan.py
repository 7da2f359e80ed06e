"""Exact top-k of a 4-bit codebook table on FAISS's fast-scan kernels (optional extra ``faiss``).

FAISS's ``IndexAdditiveQuantizerFastScan`` scores 4-bit codes (``K = 16``) from lookup tables held in SIMD
registers, reading the codes at close to memory bandwidth. Its lookup tables are rounded to 8 bits, so its scores
(and ranks) are approximate: each codebook's table is shifted by its minimum and scaled by one shared factor
``a = 255 / max_span`` (``max_span``: the largest range of any codebook's table), so every entry is off by at most
``0.5 / a`` and a score by at most ``M * max_span / 510``. :class:`FastScanScorer` turns that into exact ranks:

1. ask FAISS for the best ``fetch`` items by its approximate score (``fetch`` a few times ``k``);
2. score those candidates exactly, adding their codewords' ``q . A[m, c]`` in the numpy scorer's order (its grouped
   lookup tables' float32 additions, without building the tables), so the same scores to the bit;
3. if the ``k``-th exact score is at least the last candidate's approximate score plus the error bound (taken
   twice over, for safety), no item left out can beat it: done; else fetch 4x more and repeat. Past a sixteenth
   of the catalogue (many near-ties), or for a query whose lookup tables are flat (FAISS's scale is then
   undefined), it ranks with the numpy scorer instead: one exact pass.

So the ranks are those of :class:`~pocketrec.device.np_tables.CodebookScorer`, ties by smaller id. Only
inner-product ranking fits: a cosine model divides each score by its row's norm, which the kernel cannot, so
:class:`~pocketrec.device.runtime.DeviceModel` refuses the combination. FAISS adds the 8-bit entries in 16-bit
counters, so at most 257 codebooks (``255 * M < 65536``); more are refused.

Memory: FAISS's copy of the codes (``M / 2`` bytes per item) besides the scorer's grouped codes; one query at a
time on the caller's thread (FAISS uses one thread for one query).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pocketrec.device.np_tables import CodebookScorer, stream_top_k
from pocketrec.extras import load_faiss

FAST_SCAN_K = 16
MAX_FAST_SCAN_CODEBOOKS = 256  # 255 * M must fit FAISS's 16-bit accumulators
_MIN_FETCH = 64
_FALLBACK_SHARE = 16  # fetching more than 1/16 of the catalogue: rank with the numpy scorer instead


def check_fast_scan(description: dict[str, Any]) -> None:
    """``ValueError`` (one line) unless the table described can be fast-scanned: a codebook table with ``K = 16``
    and at most 256 codebooks."""
    kind, K, M = description.get("kind"), description.get("K"), description.get("M")
    if kind != "codebook":
        raise ValueError(f"fast-scan scores codebook tables, not {kind!r} ones")
    if int(K) != FAST_SCAN_K:
        raise ValueError(f"fast-scan needs 4-bit codes (K = 16); this table has K = {K} "
                         f"(build it with --K=16 to use fast-scan)")
    if int(M) > MAX_FAST_SCAN_CODEBOOKS:
        raise ValueError(f"fast-scan sums at most {MAX_FAST_SCAN_CODEBOOKS} codebooks in 16 bits; this table has "
                         f"M = {M}")


class FastScanScorer(CodebookScorer):
    """A :class:`CodebookScorer` (same arrays, same ``rows``/``score_blocks``) with an exact :meth:`top_k` on
    FAISS fast-scan."""

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        check_fast_scan(description)
        faiss = load_faiss()
        super().__init__(arrays, description)
        base = faiss.IndexResidualQuantizer(self.dim, self.M, 4, faiss.METRIC_INNER_PRODUCT,
                                            faiss.AdditiveQuantizer.ST_LUT_nonorm)
        faiss.copy_array_to_vector(self.codebooks.ravel(), base.rq.codebooks)
        base.rq.is_trained = base.is_trained = True
        base.codes.resize(self.num_items * base.code_size)
        packed = faiss.rev_swig_ptr(base.codes.data(), self.num_items * base.code_size).reshape(
            self.num_items, base.code_size)  # written in place, a chunk at a time
        for start, codes in self._code_chunks(arrays["codes"], description):
            packed[start:start + len(codes)] = faiss_nibbles(codes)
        base.ntotal = self.num_items
        self.index = faiss.IndexAdditiveQuantizerFastScan(base)
        # the fast-scan index points at base's quantizer: keep base alive (else a segfault). Its codes were copied
        # into the fast-scan layout and are freed; FAISS keeps a pointer to them (orig_codes) that only the
        # search implementations 2-4 read, chosen only when ``index.implem`` is set by hand: never here
        self._base = base
        del packed
        base.reset()

    def error_bound(self, per_book: np.ndarray) -> float:
        """Twice FAISS's worst error of one approximate score for per-codebook lookup tables ``(M, K)``."""
        span = float((per_book.max(1) - per_book.min(1)).max())
        return 2.0 * self.M * span / 510.0 + 1e-6 * float(np.abs(per_book).max(1).sum())

    def _exact(self, per_book: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Scores of items ``found + 1`` as :meth:`score_blocks` computes them, bit for bit, without building the
        groups' lookup tables: each group's entry is its codebooks' ``per_book`` values added in the outer sum's
        order, then the groups are added in order (the same float32 additions)."""
        codes = self._codes(found)
        exact: np.ndarray | None = None
        for group in self.groups:
            value = per_book[group[0]][codes[group[0]]]
            for m in group[1:]:
                value = value + per_book[m][codes[m]]
            exact = value if exact is None else exact + value
        assert exact is not None
        return exact

    def top_k(self, query: np.ndarray, k: int, exclude: Sequence[int] | np.ndarray = ()
              ) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (``1..n``) and exact scores of the ``k`` best items, score descending then id ascending,
        never one of ``exclude``."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(self.dim)
        k = min(int(k), self.num_items)
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        per_book = self.codebooks @ query  # (M, K)
        if k <= 0 or not np.isfinite(per_book).all() or float((per_book.max(1) - per_book.min(1)).max()) == 0.0:
            return stream_top_k(self.score_blocks(query), k, excluded)  # flat tables: FAISS's scale is undefined
        bound = self.error_bound(per_book)
        fetch = max(4 * (k + len(excluded)), _MIN_FETCH)
        while fetch <= self.num_items // _FALLBACK_SHARE:
            approx, found = (a[0] for a in self.index.search(query[None], fetch))
            if not np.isfinite(approx).all() or (found < 0).any():
                break
            exact = self._exact(per_book, found)
            ids = found + 1
            keep = ~np.isin(ids, excluded)
            order = np.lexsort((ids[keep], -exact[keep]))[:k]
            ids, exact = ids[keep][order], exact[keep][order]
            # an item not fetched scores at most approx[-1] + bound / 2: below the k-th
            if len(ids) == k and exact[-1] >= approx[-1] + bound:
                return ids, exact
            fetch *= 4
        return stream_top_k(self.score_blocks(query), k, excluded)


def faiss_nibbles(codes: np.ndarray) -> np.ndarray:
    """``(n, M)`` 4-bit codes as FAISS's bit strings ``(n, ceil(M / 2))`` uint8: code ``2j`` in the low nibble of
    byte ``j``, code ``2j + 1`` in the high one (read back by
    :func:`~pocketrec.formats.bitpack.from_faiss_bitstrings`)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((len(codes), 1), np.uint8)], axis=1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)
