"""Exact top-k of a 4-bit codebook table on FAISS's fast-scan kernels (optional extra ``faiss``).

FAISS's ``IndexAdditiveQuantizerFastScan`` scores 4-bit codes (``K = 16``) from lookup tables held in SIMD
registers, reading the codes at close to memory bandwidth. Its lookup tables are rounded to 8 bits, so its scores
(and ranks) are approximate: each codebook's table is shifted by its minimum and scaled by one shared factor
``a = 255 / max_span`` (``max_span``: the largest range of any codebook's table), so every entry is off by at most
``0.5 / a`` and a score by at most ``M * max_span / 510``. :class:`FastScanScorer` turns that into exact ranks:

1. ask FAISS for the best ``fetch`` items by its approximate score (``fetch`` a few times ``k``);
2. score those candidates exactly (float32 sums of the codebooks' lookup tables, as the reference scorer);
3. if the ``k``-th exact score is at least the last candidate's approximate score plus the error bound (taken
   twice over, for safety), no item left out can beat it: done; else fetch 4x more and repeat (at worst the
   whole catalogue).

The ranks are then those of :class:`~pocketrec.device.np_tables.CodebookScorer` (ties aside: the two sum the same
float32 values in a different order). Only inner-product ranking fits: a cosine model divides each score by its
row's norm, which the kernel cannot, so :class:`~pocketrec.device.runtime.DeviceModel` refuses the combination.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pocketrec.device.np_tables import CodebookScorer
from pocketrec.extras import load_faiss
from pocketrec.formats.bitpack import faiss_bitstrings

FAST_SCAN_K = 16
_MIN_FETCH = 64


def check_fast_scan(description: dict[str, Any]) -> None:
    """``ValueError`` (one line) unless the table described can be fast-scanned: a codebook table with ``K = 16``."""
    kind, K = description.get("kind"), description.get("K")
    if kind != "codebook":
        raise ValueError(f"fast-scan scores codebook tables, not {kind!r} ones")
    if int(K) != FAST_SCAN_K:
        raise ValueError(f"fast-scan needs 4-bit codes (K = 16); this table has K = {K} "
                         f"(build it with --K=16 to use fast-scan)")


class FastScanScorer(CodebookScorer):
    """A :class:`CodebookScorer` (same arrays, same ``rows``/``score_blocks``) with an exact :meth:`top_k` on
    FAISS fast-scan. Holds FAISS's copy of the codes too (``M / 2`` bytes per item) besides the scorer's."""

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any], threads: int = 1) -> None:
        check_fast_scan(description)
        faiss = load_faiss()
        super().__init__(arrays, description)
        faiss.omp_set_num_threads(int(threads))
        base = faiss.IndexResidualQuantizer(self.dim, self.M, 4, faiss.METRIC_INNER_PRODUCT,
                                            faiss.AdditiveQuantizer.ST_LUT_nonorm)
        faiss.copy_array_to_vector(self.codebooks.ravel(), base.rq.codebooks)
        base.rq.is_trained = base.is_trained = True
        packed = np.empty((self.num_items, base.code_size), dtype=np.uint8)
        for start, codes in self._code_chunks(arrays["codes"], description):
            packed[start:start + len(codes)] = faiss_bitstrings(codes, 4)
        faiss.copy_array_to_vector(packed.ravel(), base.codes)
        base.ntotal = self.num_items
        self.index = faiss.IndexAdditiveQuantizerFastScan(base)
        self._base = base  # the fast-scan index points at base's quantizer: keep it alive (else a segfault)
        base.reset()  # its codes were copied into the fast-scan layout

    def error_bound(self, per_book: np.ndarray) -> float:
        """Twice FAISS's worst error of one approximate score for per-codebook lookup tables ``(M, K)``."""
        span = float((per_book.max(1) - per_book.min(1)).max())
        return 2.0 * self.M * span / 510.0 + 1e-6 * float(np.abs(per_book).max(1).sum())

    def top_k(self, query: np.ndarray, k: int, exclude: Sequence[int] | np.ndarray = ()
              ) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids (``1..n``) and exact scores of the ``k`` best items, score descending then id ascending,
        never one of ``exclude``."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        per_book = self.codebooks @ query[0]  # (M, K)
        bound = self.error_bound(per_book)
        excluded = np.unique(np.asarray(exclude, dtype=np.int64))
        k = min(int(k), self.num_items)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        fetch = min(self.num_items, max(4 * (k + len(excluded)), _MIN_FETCH))
        while True:
            approx, found = (a[0] for a in self.index.search(query, fetch))
            approx, found = approx[found >= 0], found[found >= 0]
            ids = found + 1
            exact = np.zeros(len(ids), dtype=np.float32)
            for m, codes in enumerate(self._codes(found)):
                exact += per_book[m][codes]
            keep = ~np.isin(ids, excluded)
            order = np.lexsort((ids[keep], -exact[keep]))[:k]
            ids, exact = ids[keep][order], exact[keep][order]
            # an item not fetched scores at most approx[-1] + bound: below the k-th, or tied with it
            if fetch >= self.num_items or (len(ids) == k and exact[-1] >= approx[-1] + bound):
                return ids, exact
            fetch = min(self.num_items, 4 * fetch)
