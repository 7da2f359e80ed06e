"""The quantizer interface: arrays in, additive codes out.

Every quantizer here is *additive*: it approximates each row ``x_i`` (``d`` floats) by the sum of ``M`` codewords,
one from each of ``M`` codebooks of ``K``, which is exactly the layout of the codebook item table
(:class:`~pocketrec.tables.codebook.CodebookTable`): product quantisers too, written as zero-padded codebooks.
So a quantizer's bytes are the table's (``CodebookTable.bytes_for``), the byte-exact budget solver picks ``(M, K)``
once, and any quantizer fills that layout. Layout names follow FAISS's (``RQ46x2``: 46 codebooks of 2 bits).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class AdditiveCodes:
    """``codebooks (M, K, d)`` float32 and ``codes (n, M)`` int64: ``x_i ~ sum_m codebooks[m, codes[i, m]]``."""

    codebooks: np.ndarray
    codes: np.ndarray
    seconds: float = 0.0

    def reconstruct(self, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        codes = self.codes[rows]
        out = np.zeros((len(codes), self.codebooks.shape[2]), dtype=np.float32)
        for m in range(self.codebooks.shape[0]):
            out += self.codebooks[m][codes[:, m]]
        return out

    def relative_error(self, x: np.ndarray, chunk: int = 65536) -> float:
        """``sum_i |x_i - x^_i|^2 / sum_i |x_i|^2`` (the code error of the issue and the benchmark)."""
        err = total = 0.0
        for start in range(0, len(x), chunk):
            block = np.asarray(x[start:start + chunk], dtype=np.float64)
            err += float(((block - self.reconstruct(slice(start, start + chunk))) ** 2).sum())
            total += float((block ** 2).sum())
        return err / max(total, 1e-30)


class Quantizer(ABC):
    """Fits ``M`` codebooks of ``K`` codewords to rows; subclasses implement :meth:`_fit`."""

    #: the registry name (``pocketrec compress --method eodrec --codes NAME``)
    name: str = ""
    #: FAISS-style layout prefix (``RQ``, ``LSQ``, ``PQ``, ``PRQ``)
    prefix: str = ""

    def layout(self, M: int, K: int) -> str:
        """``RQ46x2``-style name: ``M`` codebooks of ``log2 K`` bits."""
        return f"{self.prefix}{M}x{int(np.ceil(np.log2(K)))}"

    #: replace the codebooks by the least-squares ones for the chosen codes when that lowers the error (the
    #: best codebooks for fixed codes; it also lets product codes use every dim): :func:`least_squares_if_better`
    refit: bool = True

    def fit(self, x: np.ndarray, M: int, K: int, seed: int = 0) -> AdditiveCodes:
        """Codes and codebooks of ``x (n, d)`` in ``M`` codebooks of ``K`` (then :attr:`refit`), timed."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or len(x) < 1:
            raise ValueError(f"a quantizer fits a 2-D array of rows, got shape {x.shape}")
        if M < 1 or K < 2:
            raise ValueError(f"M must be >= 1 and K >= 2, got M={M}, K={K}")
        if len(x) < K:
            raise ValueError(f"{self.name or 'a quantizer'} needs at least K={K} rows to fit, got {len(x)}")
        start = time.perf_counter()
        codebooks, codes = self._fit(x, int(M), int(K), int(seed))
        codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        if codebooks.shape != (M, K, x.shape[1]) or codes.shape != (len(x), M):
            raise RuntimeError(f"{self.name} returned codebooks {codebooks.shape} and codes {codes.shape}, expected "
                               f"{(M, K, x.shape[1])} and {(len(x), M)}")
        result = AdditiveCodes(codebooks, codes)
        if self.refit:
            result = least_squares_if_better(x, result)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _fit(self, x: np.ndarray, M: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(codebooks (M, K, d), codes (n, M))`` of float32 rows ``x``."""


def least_squares_if_better(x: np.ndarray, fitted: AdditiveCodes) -> AdditiveCodes:
    """``fitted`` with the least-squares codebooks for its codes when they reconstruct ``x`` better (only up to
    :data:`~pocketrec.quantize.kmeans.MAX_LEAST_SQUARES` codewords), else ``fitted`` itself."""
    import torch

    from pocketrec.quantize.kmeans import MAX_LEAST_SQUARES, fit_codebooks

    M, K, _ = fitted.codebooks.shape
    if M * K > MAX_LEAST_SQUARES:
        return fitted
    books = fit_codebooks(torch.from_numpy(x), torch.from_numpy(fitted.codes), K).numpy()
    refitted = AdditiveCodes(books, fitted.codes)
    return refitted if refitted.relative_error(x) < fitted.relative_error(x) else fitted
