"""FAISS's additive quantizers behind pocketrec's interface (optional extra ``faiss``: ``faiss-cpu``).

* ``faiss-rq``: residual quantisation with beam search (``max_beam_size``, default 8): each step keeps the best
  partial encodings instead of one;
* ``faiss-lsq``: local search quantisation (Martinez et al. 2018): codes by iterated local search, codebooks by
  least squares, alternated (slow: minutes for tens of thousands of rows);
* ``faiss-prq``: product-residual: the dims cut into ``nsplits`` parts (4, else 2, dividing both ``d`` and ``M``
  with at least 4 codebooks a part), a residual quantiser with beam search in each;
* ``faiss-pq``: product quantisation with FAISS's k-means on contiguous slices of dims (FAISS's own
  ``ProductQuantizer`` needs ``d`` divisible by ``M``, which the budget solver's ``M`` rarely is).

FAISS packs codes as bit strings (``compute_codes``); they are unpacked to one integer per codebook here, and the
codebooks read back (zero-padded outside their slice for the product kinds), so the result is the sum layout of
the codebook table. ``search_type = ST_decompress``: no norm is encoded, the codes are ``M * log2 K`` bits.
"""

from __future__ import annotations

import numpy as np

from pocketrec.extras import load_faiss
from pocketrec.formats.bitpack import from_faiss_bitstrings
from pocketrec.quantize.base import Quantizer


def nbits_of(K: int) -> int:
    bits = int(np.log2(K))
    if 1 << bits != K:
        raise ValueError(f"FAISS quantizers need K a power of two, got {K}")
    return bits


class FaissAdditive(Quantizer):
    """``kind``: ``rq`` (``beam``), ``lsq`` or ``prq`` (``beam`` in each part)."""

    def __init__(self, kind: str = "rq", beam: int = 8) -> None:
        if kind not in ("rq", "lsq", "prq"):
            raise ValueError(f"kind must be rq, lsq or prq, got {kind!r}")
        self.kind, self.beam = kind, int(beam)
        self.name, self.prefix = f"faiss-{kind}", kind.upper()

    def _fit(self, x: np.ndarray, M: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = load_faiss()
        n, d = x.shape
        nbits = nbits_of(K)
        if self.kind == "rq":
            q = faiss.ResidualQuantizer(d, M, nbits)
            q.max_beam_size = self.beam
            q.cp.seed = seed
        elif self.kind == "lsq":
            q = faiss.LocalSearchQuantizer(d, M, nbits)
            q.random_seed = seed
        else:
            splits = next((s for s in (4, 2) if d % s == 0 and M % s == 0 and M // s >= 4), 0)
            if not splits:  # FAISS's parts of a single 2-bit codebook reconstruct nothing (measured)
                raise ValueError(f"faiss-prq needs M divisible into 2 or 4 parts of at least 4 codebooks and d "
                                 f"likewise divisible, got M={M}, d={d}")
            q = faiss.ProductResidualQuantizer(d, splits, M // splits, nbits)
            for i in range(splits):
                part = faiss.downcast_AdditiveQuantizer(q.subquantizer(i))
                part.max_beam_size = self.beam
                part.cp.seed = seed + i
        q.search_type = faiss.AdditiveQuantizer.ST_decompress
        if hasattr(q, "verbose"):
            q.verbose = False
        q.train(x)
        codes = from_faiss_bitstrings(q.compute_codes(x), M, nbits)
        flat = faiss.vector_to_array(q.codebooks)
        if self.kind != "prq":
            return flat.reshape(M, K, d), codes
        splits = q.nsplits  # q.codebooks: per part, its M / splits codebooks over its d / splits dims
        width, per = d // splits, M // splits
        books = np.zeros((M, K, d), dtype=np.float32)
        for i, part in enumerate(flat.reshape(splits, per, K, width)):
            books[i * per:(i + 1) * per, :, i * width:(i + 1) * width] = part
        return books, codes


class FaissProduct(Quantizer):
    """``faiss-pq``: FAISS k-means on each of ``M`` contiguous slices of dims (zero-padded codebooks)."""

    name, prefix = "faiss-pq", "PQ"

    def __init__(self, iters: int = 25) -> None:
        self.iters = int(iters)

    def _fit(self, x: np.ndarray, M: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = load_faiss()
        n, d = x.shape
        if M > d:
            raise ValueError(f"product quantisation needs M <= dim, got M={M}, dim={d}")
        bounds = np.linspace(0, d, M + 1).round().astype(int)
        books = np.zeros((M, K, d), dtype=np.float32)
        codes = np.empty((n, M), dtype=np.int64)
        for m in range(M):
            lo, hi = int(bounds[m]), int(bounds[m + 1])
            part = np.ascontiguousarray(x[:, lo:hi])
            km = faiss.Kmeans(hi - lo, K, niter=self.iters, seed=seed + m, verbose=False)
            km.train(part)
            books[m, :, lo:hi] = km.centroids
            codes[:, m] = km.index.search(part, 1)[1][:, 0]
        return books, codes
