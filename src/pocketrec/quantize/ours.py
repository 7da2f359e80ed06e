"""pocketrec's own quantizers (torch k-means, :mod:`pocketrec.quantize.kmeans`): greedy residual k-means and
product k-means (then, as for every quantizer, least-squares codebooks when they lower the error), optionally
followed by rounds of iterated conditional modes (ICM). What the codebook table's ``from_vectors`` has always
done."""

from __future__ import annotations

import numpy as np
import torch

from pocketrec.quantize.base import AdditiveCodes, Quantizer, least_squares_if_better
from pocketrec.quantize.kmeans import product_quantize, residual_quantize


class KMeansQuantizer(Quantizer):
    """``rq``: residual k-means; ``pq``: product k-means on contiguous slices of dims (sizes differ by at most
    one, so any ``M <= d``); ``icm_iters``: rounds of ICM after the least-squares refit."""

    def __init__(self, kind: str = "rq", icm_iters: int = 0, iters: int = 25, chunk_size: int | None = None) -> None:
        if kind not in ("rq", "pq"):
            raise ValueError(f"kind must be rq or pq, got {kind!r}")
        self.name = kind if not icm_iters else f"{kind}-icm"
        self.prefix = kind.upper()
        self.kind, self.icm_iters, self.iters, self.chunk_size = kind, int(icm_iters), int(iters), chunk_size
        self.refit = not icm_iters  # ICM ends with least-squares codebooks already

    def _fit(self, x: np.ndarray, M: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        from pocketrec.tables.codebook import icm_refine

        rows = torch.from_numpy(x)
        fit = residual_quantize if self.kind == "rq" else product_quantize
        books, codes = fit(rows, M, K, iters=self.iters, seed=seed, chunk_size=self.chunk_size)
        if not self.icm_iters:
            return books.numpy(), codes.numpy()
        start = least_squares_if_better(x, AdditiveCodes(books.numpy(), codes.numpy()))  # ICM's starting point
        books, codes = icm_refine(rows, torch.from_numpy(start.codebooks), torch.from_numpy(start.codes),
                                  iters=self.icm_iters, chunk_size=self.chunk_size)
        return books.numpy(), codes.numpy()
