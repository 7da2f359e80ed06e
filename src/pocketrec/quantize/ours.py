"""pocketrec's own quantizers (torch k-means, :mod:`pocketrec.quantize.kmeans`): greedy residual k-means and
product k-means (then, as for every quantizer, least-squares codebooks when they lower the error), optionally
followed by rounds of iterated conditional modes (ICM). What the codebook table's ``from_vectors`` has always
done."""

from __future__ import annotations

import numpy as np
import torch

from pocketrec.quantize.base import Quantizer
from pocketrec.quantize.kmeans import fit_codebooks, product_quantize, residual_quantize


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
        from pocketrec.tables.codebook import icm_refine, reconstruction_mse

        rows = torch.from_numpy(x)
        fit = residual_quantize if self.kind == "rq" else product_quantize
        books, codes = fit(rows, M, K, iters=self.iters, seed=seed, chunk_size=self.chunk_size)
        if self.icm_iters:
            if M * K <= 8192:  # ICM starts from the least-squares codebooks
                refitted = fit_codebooks(rows, codes, K)
                if reconstruction_mse(rows, refitted, codes) < reconstruction_mse(rows, books, codes):
                    books = refitted
            books, codes = icm_refine(rows, books, codes, iters=self.icm_iters, chunk_size=self.chunk_size)
        return books.numpy(), codes.numpy()
