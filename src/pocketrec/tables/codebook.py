"""Compositional-code item table (EODRec: Xia et al., "Efficient On-Device Session-Based Recommendation",
ACM TOIS 41(4), 2023; codes after Shu & Nakayama, "Compressing Word Embeddings via Deep Compositional
Code Learning", ICLR 2018).

Every item ``i`` in ``1..n`` has ``M`` integer codes ``c_i^m`` in ``0..K-1``; its vector is the SUM of one
codeword from each of ``M`` codebooks: ``e_i = sum_m A[m, c_i^m]`` with ``A`` of shape ``(M, K, dim)``
(docs/methods/eodrec.md). Id 0 (padding) gives zeros. The device stores the codebooks (float32 or float16) and the
codes of items ``1..n`` as the smallest unsigned integer type (uint8 for ``K <= 256``, uint16 up to 65536)
or bit-packed at ``ceil(log2 K)`` bits (:mod:`pocketrec.formats.bitpack`), so
``nbytes = M*K*dim*itemsize + n*M*code_bytes`` (docs/methods/eodrec.md).

Scoring one query never rebuilds the item rows: it builds the lookup table ``LUT[m, k] = q . A[m, k]``
(``M*K*dim`` multiply-adds) and sums ``M`` gathered LUT entries per item (``n*M`` adds) — the device path.
A batch of queries (training, evaluation) shares one rebuild instead: rows in chunks of items, each one
fused ``embedding_bag`` sum of codewords (never an ``items x M x dim`` tensor), then one matrix product;
``b*n*M`` scattered gathers cost more than ``n*M*dim`` streamed adds plus a ``b x n x dim`` GEMM once a
batch has a few dozen queries.

What differs from the authors' code (docs/methods/eodrec.md), on purpose:

* True compression: no teacher mixing ``eta * onehot(C) A + (1 - eta) * E_T``; the table is the codes
  and codebooks alone (the equivalent of ``eta = 1``).
* Integer codes (uint8 / uint16 / bit-packed), not a float one-hot matrix of shape ``(n*M, K)``.
* Explicit initialisation: :meth:`CodebookTable.from_vectors` fits codebooks and codes to teacher item
  vectors by residual quantisation (k-means on the vectors, then on the residuals, ...), whose sums
  compose exactly like the table does; the authors' codebooks start as uninitialised memory.
  The learned codes (argmax of the converged encoder) come from :mod:`pocketrec.train.codes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.formats.bitpack import bits_for, code_dtype, pack_codes, packed_nbytes, unpack_codes
from pocketrec.formats.table_arrays import dequantized_codebooks
from pocketrec.quantize.kmeans import (
    MAX_LEAST_SQUARES,
    fit_codebooks,
    nearest_centroids,
)
from pocketrec.tables.base import (
    STORED_DTYPES,
    ItemTable,
    as_stored,
    check_stored_dtype,
    mask_padding_column,
    quantize_rows,
    register_table,
    score_row_blocks,
)

#: Default bound on ``M`` in the budget solver: more codebooks buy code bits per item (what accuracy follows:
#: on Tmall at ~40x, 8 codebooks of 64 kept 85% of the teacher's Recall@20, 46 of 4 kept 97%) at the cost of
#: ``n*M`` gathers per single-query score (the numpy runtime groups codebooks, so ``ceil(M / g)`` in practice).
DEFAULT_MAX_CODEBOOKS = 48
_INIT_METHODS = ("rq", "pq", "random")
def reassign_codes(x: Tensor, codebooks: Tensor, codes: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """One round of iterated conditional modes with the codebooks fixed: each codebook ``m`` in turn gives
    every item the codeword nearest to its residual ``x - sum_{m' != m} codeword``. The current code is
    among the candidates, so no item's error ``|x_i - e_i|`` grows. Returns new codes ``(n, M)`` (long)."""
    books = codebooks.detach().to(x.dtype)
    codes = codes.to(device=x.device, dtype=torch.long).clone()
    recon = reconstruct(books, codes)
    for m in range(books.shape[0]):
        partial = recon - books[m].index_select(0, codes[:, m])
        assign, _ = nearest_centroids(x - partial, books[m], chunk_size)
        codes[:, m] = assign
        recon = partial + books[m].index_select(0, assign)
    return codes


def icm_refine(x: Tensor, codebooks: Tensor, codes: Tensor, *, iters: int = 3,
               chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Alternating refinement of an additive quantiser (as in additive quantisation, Babenko & Lempitsky
    2014, with iterated conditional modes instead of beam search): per round, each codebook ``m`` in
    turn re-assigns every item to the codeword nearest to its residual with the other ``M-1`` codes
    fixed, then all codebooks are refitted by least squares (:func:`fit_codebooks`). Each step can only
    lower the reconstruction error; a round that does not is undone and ends the refinement.
    Returns ``(codebooks, codes)``.
    """
    M, K, _ = codebooks.shape
    codes = codes.to(device=x.device, dtype=torch.long).clone()
    books = codebooks.detach().to(x.dtype).clone()
    best = reconstruction_mse(x, books, codes)
    for _ in range(iters):
        new_codes = reassign_codes(x, books, codes, chunk_size=chunk_size)
        new_books = fit_codebooks(x, new_codes, K) if M * K <= MAX_LEAST_SQUARES else books
        err = reconstruction_mse(x, new_books, new_codes)
        if err >= best:
            break
        best, books, codes = err, new_books, new_codes
    return books, codes


#: Codebook sizes up to this take the one-hot backward in :func:`codeword_sum` (measured, one CPU thread,
#: 40k items, d = 128: 46 codebooks of 4, 0.04 s against embedding_bag's 0.24 s; the one-hot product's cost
#: grows with ``K``, the scattered adds' does not, and they meet around ``K = 24``).
ONE_HOT_BACKWARD_MAX_K = 16
#: Entries of one one-hot block in that backward (4 MiB at float32).
ONE_HOT_BLOCK = 1 << 20


class _OneHotBackwardSum(torch.autograd.Function):
    """``embedding_bag`` sum forward; backward as ``one_hot(codes)^T @ grad`` in chunks of items.

    For small ``K`` the dense product runs at BLAS speed, while ``embedding_bag``'s own backward scatters
    ``n*M`` rows of ``dim`` one by one. Nothing of size ``items x M x dim`` is built either way.
    """

    @staticmethod
    def forward(ctx: Any, flat: Tensor, books: Tensor) -> Tensor:
        ctx.save_for_backward(flat)
        ctx.num_books = books.shape[0]
        return F.embedding_bag(flat, books, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        (flat,) = ctx.saved_tensors
        grad_books = grad.new_zeros(ctx.num_books, grad.shape[1])
        step = max(1, ONE_HOT_BLOCK // ctx.num_books)
        for start in range(0, flat.shape[0], step):
            idx = flat[start:start + step]
            one_hot = grad.new_zeros(idx.shape[0], ctx.num_books).scatter_(1, idx, 1.0)
            grad_books.addmm_(one_hot.t(), grad[start:start + step])
        return None, grad_books


def codeword_sum(flat: Tensor, books: Tensor, K: int) -> Tensor:
    """``rows[i] = sum_m books[flat[i, m]]``: ``flat (n, M)`` holds the codes plus each codebook's offset
    ``m*K`` into ``books (M*K, dim)``. Differentiable in ``books``; the backward path is chosen by ``K``."""
    if K <= ONE_HOT_BACKWARD_MAX_K and books.requires_grad and torch.is_grad_enabled():
        return _OneHotBackwardSum.apply(flat, books)
    return F.embedding_bag(flat, books, mode="sum")


def reconstruct(codebooks: Tensor, codes: Tensor) -> Tensor:
    """Sum of the chosen codewords: ``codebooks (M, K, d)``, ``codes (n, M)`` -> ``(n, d)``."""
    M, K, d = codebooks.shape
    offsets = torch.arange(M, device=codes.device) * K
    return codeword_sum(codes.long() + offsets, codebooks.reshape(M * K, d), K)


def reconstruction_mse(x: Tensor, codebooks: Tensor, codes: Tensor, chunk_size: int = 65536) -> float:
    """Mean over rows of the squared error summed over dims, ``mean_i |x_i - sum_m A[m, c_i^m]|^2``."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk_size):
            err = x[start:start + chunk_size] - reconstruct(codebooks, codes[start:start + chunk_size])
            total += float((err.double() ** 2).sum())
    return total / max(1, x.shape[0])


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

@register_table
class CodebookTable(ItemTable):
    """``M`` codebooks of ``K`` vectors (parameter ``codebooks (M, K, dim)``) plus ``M`` codes per item
    (buffer ``codes (num_items + 1, M)``, int64 in memory, row 0 unused); an item is the sum of its
    ``M`` codewords.

    ``dtype`` is the stored (exported) precision of the codebooks: float32, float16, or int8 (each codeword
    symmetric int8 with a float32 scale, :func:`~pocketrec.tables.base.quantize_rows`). Training keeps
    float32 master weights but every lookup sees them rounded to the stored precision (straight-through),
    so what is trained, validated and tested is what the device gets. ``bitpack``
    stores the codes at ``ceil(log2 K)`` bits each instead of uint8/uint16. A fresh table has random
    codes (from ``seed``, or torch's global generator when ``None``) and codewords drawn from
    ``N(0, (init_std / sqrt(M))^2)``, so item vectors start with the same scale as a dense table's.
    Build one from teacher vectors with :meth:`from_vectors` or ``pocketrec.train.codes.learn_codes``.
    """

    kind = "codebook"
    #: ``score`` takes the lookup-table path up to this many queries, the row-rebuild path above it
    #: (one CPU thread, 40k items: the rebuild wins from 32-64 queries for M from 7 to 46, and by 4-14x at
    #: 256, where the LUT path's ``batch x items`` accumulator falls out of cache).
    LUT_MAX_BATCH: ClassVar[int] = 32
    #: Items per rebuilt block on the row-rebuild path.
    ROW_CHUNK: ClassVar[int] = 16384

    def __init__(self, num_items: int, dim: int, M: int = 3, K: int = 256, dtype: str = "float32",
                 bitpack: bool = False, init_std: float = 0.02, seed: int | None = None) -> None:
        super().__init__(num_items, dim)
        if M < 1:
            raise ValueError(f"M (number of codebooks) must be >= 1, got {M}")
        if not 2 <= K <= 65536:
            raise ValueError(f"K (codebook size) must be in 2..65536, got {K}")
        check_stored_dtype(dtype, STORED_DTYPES)
        self.M = int(M)
        self.K = int(K)
        self.stored_dtype = dtype
        self.bitpack = bool(bitpack)
        self.codebooks = nn.Parameter(torch.empty(self.M, self.K, dim))
        self.register_buffer("codes", torch.zeros(self.num_rows, self.M, dtype=torch.long))
        offsets = torch.arange(self.M, dtype=torch.long) * self.K
        self.register_buffer("code_offsets", offsets, persistent=False)
        #: Training-time sum of d(loss)/d(row) per id (see :meth:`track_row_gradients`); never saved.
        self.row_gradients: Tensor | None = None
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        with torch.no_grad():
            self.codebooks.copy_(torch.randn(self.M, self.K, dim, generator=gen) * (init_std / math.sqrt(M)))
            self.codes[1:] = torch.randint(self.K, (self.num_items, self.M), generator=gen)

    # ---- sizes ------------------------------------------------------------------------------------

    @property
    def code_bits(self) -> int:
        """Bits per code when bit-packed, ``ceil(log2 K)``."""
        return bits_for(self.K)

    @property
    def code_dtype(self) -> str:
        """Numpy dtype name of the unpacked codes: ``uint8`` for K <= 256, ``uint16`` up to 65536."""
        return code_dtype(self.K).name

    @staticmethod
    def bytes_for(num_items: int, dim: int, M: int, K: int, dtype: str = "float32",
                  bitpack: bool = False) -> int:
        """Bytes of a codebook table without building it: ``M*K*dim*itemsize`` for the codebooks (int8: plus
        ``M*K*4`` for the scales) plus ``n*M*itemsize(code dtype)`` for the codes, or
        ``ceil(n*M*ceil(log2 K)/8)`` when bit-packed."""
        books = int(M) * int(K) * int(dim) * np.dtype(dtype).itemsize
        if dtype == "int8":
            books += int(M) * int(K) * 4
        count = int(num_items) * int(M)
        codes = packed_nbytes(count, bits_for(K)) if bitpack else count * code_dtype(K).itemsize
        return books + codes

    def nbytes(self) -> int:
        return self.bytes_for(self.num_items, self.dim, self.M, self.K, self.stored_dtype, self.bitpack)

    # ---- lookups and scores -----------------------------------------------------------------------

    def stored_codebooks(self) -> Tensor:
        """The codebooks at the stored precision (the rounding passes gradients straight through)."""
        return as_stored(self.codebooks, self.stored_dtype)

    def forward(self, ids: Tensor) -> Tensor:
        # One fused sum of M codeword lookups per id: no (ids, M, dim) intermediate, forward or backward.
        flat = (self.codes[ids] + self.code_offsets).reshape(-1, self.M)
        books = self.stored_codebooks().reshape(self.M * self.K, self.dim)
        vectors = codeword_sum(flat, books, self.K).reshape(*ids.shape, self.dim)
        if self.row_gradients is not None and vectors.requires_grad:
            sink, flat_ids = self.row_gradients, ids.reshape(-1)

            def add_row_gradients(grad: Tensor) -> None:
                sink.index_add_(0, flat_ids, grad.reshape(-1, sink.shape[1]))

            vectors.register_hook(add_row_gradients)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def _row_blocks(self) -> Iterator[tuple[int, int, Tensor]]:
        """``(start, stop, rows)`` over ids ``0..n`` in blocks of :attr:`ROW_CHUNK` (row 0 is zeros)."""
        for start in range(0, self.num_rows, self.ROW_CHUNK):
            stop = min(start + self.ROW_CHUNK, self.num_rows)
            yield start, stop, self(torch.arange(start, stop, device=self.codes.device))

    def lookup_tables(self, queries: Tensor) -> Tensor:
        """``LUT[b, m, k] = queries[b] . codebooks[m, k]``, shape ``(batch, M, K)``."""
        return torch.einsum("bd,mkd->bmk", queries, self.stored_codebooks().to(queries.dtype))

    def _flat_codes(self) -> Tensor:
        """``(M, num_items + 1)`` contiguous codes with each codebook's offset ``m*K`` added: the index rows
        of :meth:`score`'s gathers (cached; rebuilt when ``codes`` changes, e.g. by ``load_state_dict``)."""
        key = (self.codes.data_ptr(), self.codes._version, self.codes.device)
        if getattr(self, "_flat_key", None) != key:
            self._flat = (self.codes + self.code_offsets).t().contiguous()
            self._flat_key = key
        return self._flat

    def score(self, queries: Tensor) -> Tensor:
        """Scores of every item, differentiable w.r.t. the codebooks and the queries; column 0 masked.

        Up to :attr:`LUT_MAX_BATCH` queries: :meth:`lut_score`; more: rows rebuilt in blocks and multiplied
        (same values up to float rounding; see the module docstring for why both exist).
        """
        if queries.shape[0] <= self.LUT_MAX_BATCH:
            return self.lut_score(queries)
        return self._rebuilt_score(queries, unit_rows=False)

    def cosine_score(self, queries: Tensor) -> Tensor:
        """Cosine scores: on the row-rebuild path each block is normalised before the product."""
        if queries.shape[0] <= self.LUT_MAX_BATCH:
            return super().cosine_score(queries)
        return self._rebuilt_score(queries, unit_rows=True)

    def _rebuilt_score(self, queries: Tensor, unit_rows: bool) -> Tensor:
        needs_grad = torch.is_grad_enabled() and (queries.requires_grad or self.codebooks.requires_grad)
        return score_row_blocks(queries, self._row_blocks(), self.num_rows, unit_rows, needs_grad)

    def lut_score(self, queries: Tensor) -> Tensor:
        """``scores[b, i] = sum_m LUT[b, m, codes[i, m]]``: ``O(M K d + n M)`` per query (EODRec's fast path,
        what the device runs), differentiable w.r.t. the codebooks (and the queries). Column 0 is masked."""
        batch = queries.shape[0]
        lut = self.lookup_tables(queries).reshape(batch, self.M * self.K)
        flat = self._flat_codes()
        scores = lut.index_select(1, flat[0])
        for m in range(1, self.M):
            # index_select's backward needs only the index, so accumulating in place is autograd-safe.
            scores.add_(lut.index_select(1, flat[m]))
        return mask_padding_column(scores)

    def materialize(self) -> Tensor:
        """All ``(num_items + 1, dim)`` rows (row 0 zeros). For checks and export to dense, not scoring."""
        return self(torch.arange(self.num_rows, device=self.codes.device))

    def reconstruction_error(self, vectors: Tensor) -> float:
        """``mean_i |vectors[i] - e_i|^2`` over items ``1..n`` (``vectors`` is ``(n + 1, dim)``)."""
        self._check_vectors(vectors, self.num_items, self.dim)
        return reconstruction_mse(vectors[1:].to(self.codebooks.device, torch.float32),
                                  self.stored_codebooks().detach(), self.codes[1:])

    def set_codes(self, codes: Tensor) -> None:
        """Replace the codes: ``(num_items, M)`` for items ``1..n``, or ``(num_items + 1, M)`` (row 0
        ignored)."""
        codes = torch.as_tensor(codes)
        if codes.shape == (self.num_rows, self.M):
            codes = codes[1:]
        if codes.shape != (self.num_items, self.M):
            raise ValueError(f"codes have shape {tuple(codes.shape)}, expected {(self.num_items, self.M)} "
                             f"or {(self.num_rows, self.M)}")
        codes = codes.to(device=self.codes.device, dtype=torch.long)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.K):
            raise ValueError(f"codes must lie in 0..{self.K - 1}")
        with torch.no_grad():
            self.codes[0].zero_()
            self.codes[1:] = codes

    # ---- code refresh during training ---------------------------------------------------------------

    def track_row_gradients(self, on: bool = True) -> None:
        """Start (or stop) summing the loss gradient of every item's row into :attr:`row_gradients`
        ``(num_items + 1, dim)``, through every differentiable :meth:`forward` (input lookups and the
        catalogue rows alike). A training-time buffer: not a parameter, not saved, not exported."""
        self.row_gradients = torch.zeros(self.num_rows, self.dim, device=self.codes.device) if on else None

    def refresh_codes(self, step: float) -> dict[str, float]:
        """A proximal step on the discrete codes: re-assign every item's codes (one ICM round,
        :func:`reassign_codes`, codebooks fixed at their stored precision) to the point
        ``e_i - step * g_i``, ``g_i`` the row gradient summed since the last refresh, then reset the sums.

        Minimising ``|e_i - step * g_i - e(c)|^2`` over codes ``c`` is minimising the linearised loss
        ``g_i . (e(c) - e_i)`` plus ``|e(c) - e_i|^2 / (2 step)``: codes move where the loss pushes the
        item's vector, and an item the loss leaves alone keeps its codes. Returns the fraction of codes
        and of items that changed and the mean step length.
        """
        if self.row_gradients is None:
            raise RuntimeError("refresh_codes needs track_row_gradients() first")
        with torch.no_grad():
            books = self.stored_codebooks().detach().float()
            old = self.codes[1:].clone()
            rows = reconstruct(books, old)
            moves = step * self.row_gradients[1:]
            new = reassign_codes(rows - moves, books, old)
            changed = new != old
            self.set_codes(new)
            self.row_gradients.zero_()
        return {"codes_changed": float(changed.float().mean()), "items_changed": float(changed.any(1).float().mean()),
                "step_norm": float(moves.norm(dim=1).mean())}

    # ---- export -----------------------------------------------------------------------------------

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``codebooks (M, K, dim)`` at the stored dtype (int8 adds ``codebook_scales (M, K)`` float32) and
        ``codes`` of items ``1..n``: ``(n, M)`` uint8/uint16, or a 1-D uint8 bit stream when bit-packed
        (layout: :mod:`pocketrec.formats.bitpack`)."""
        arrays: dict[str, np.ndarray] = {}
        if self.stored_dtype == "int8":
            values, scales = quantize_rows(self.codebooks)
            arrays["codebooks"], arrays["codebook_scales"] = values.cpu().numpy(), scales.cpu().numpy()
        else:
            arrays["codebooks"] = self.codebooks.detach().cpu().numpy().astype(self.stored_dtype)
        codes = self.codes[1:].cpu().numpy().astype(self.code_dtype)
        arrays["codes"] = pack_codes(codes, self.code_bits) if self.bitpack else codes
        description = {"kind": self.kind, "num_items": self.num_items, "dim": self.dim, "M": self.M,
                       "K": self.K, "dtype": self.stored_dtype, "code_dtype": self.code_dtype,
                       "bitpack": self.bitpack, "code_bits": self.code_bits, "code_rows": "items_1_to_n"}
        return arrays, description

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> CodebookTable:
        """An untrained table (random codes from seed 0) of the structure ``description`` names."""
        if description.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"description is of kind {description.get('kind')!r}, not {cls.kind!r}")
        return cls(int(description["num_items"]), int(description["dim"]), M=int(description["M"]),
                   K=int(description["K"]), dtype=str(description.get("dtype", "float32")),
                   bitpack=bool(description.get("bitpack", False)), seed=0)

    @classmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> CodebookTable:
        table = cls.from_description(description)
        num_items, M, K, dim = table.num_items, table.M, table.K, table.dim
        needed = {"codebooks", "codes"} | ({"codebook_scales"} if table.stored_dtype == "int8" else set())
        if set(arrays) != needed:
            raise ValueError(f"codebook export needs arrays {sorted(needed)}, got {sorted(arrays)}")
        books, codes = dequantized_codebooks(arrays, table.stored_dtype), arrays["codes"]
        if books.shape != (M, K, dim):
            raise ValueError(f"codebooks have shape {books.shape}, expected {(M, K, dim)}")
        if table.bitpack:
            expected = packed_nbytes(num_items * M, table.code_bits)
            if codes.shape != (expected,):
                raise ValueError(f"packed codes have shape {codes.shape}, expected ({expected},)")
            codes = unpack_codes(codes, table.code_bits, num_items * M).reshape(num_items, M)
        elif codes.shape != (num_items, M):
            raise ValueError(f"codes have shape {codes.shape}, expected {(num_items, M)}")
        with torch.no_grad():
            table.codebooks.copy_(torch.from_numpy(books.astype(np.float32)))
        table.set_codes(torch.from_numpy(codes.astype(np.int64)))
        return table

    # ---- budgets ----------------------------------------------------------------------------------

    @classmethod
    def config_for_budget(cls, num_items: int, dim: int, budget_bytes: int, dtype: str = "float32",
                          bitpack: bool = False, M: int | None = None, K: int | None = None,
                          max_codebooks: int = DEFAULT_MAX_CODEBOOKS,
                          max_codebook_size: int = 256) -> tuple[int, int]:
        """The ``(M, K)`` that :meth:`for_budget` builds.

        Rule: among ``K`` in the powers of two ``2..max_codebook_size`` (or the given ``K``) and ``M`` in
        ``1..max_codebooks`` (or the given ``M``) whose :meth:`bytes_for` (codebooks and codes both
        counted) is within the budget, take the largest number of code bits per item ``M * log2 K``;
        ties go to fewer bytes, then to fewer codebooks. ``max_codebooks`` bounds the ``n*M`` gather
        cost of :meth:`score`; ``max_codebook_size = 256`` keeps codes in uint8.
        """
        if max_codebook_size < 2:
            raise ValueError(f"max_codebook_size must be >= 2, got {max_codebook_size}")
        ks = [int(K)] if K is not None else [1 << b for b in range(1, int(math.log2(max_codebook_size)) + 1)]
        ms = [int(M)] if M is not None else list(range(1, int(max_codebooks) + 1))
        best: tuple[float, int, int] | None = None
        best_cfg = (0, 0)
        smallest: tuple[int, int, int] | None = None
        for k in ks:
            for m in ms:
                size = cls.bytes_for(num_items, dim, m, k, dtype, bitpack)
                if smallest is None or size < smallest[0]:
                    smallest = (size, m, k)
                if size > budget_bytes:
                    continue
                key = (m * math.log2(k), -size, -m)
                if best is None or key > best:
                    best, best_cfg = key, (m, k)
        if best is None:
            assert smallest is not None
            size, m, k = smallest
            raise ValueError(f"budget {budget_bytes:,} B is below the smallest codebook table "
                             f"({size:,} B for M={m}, K={k}, {num_items:,} items, dim={dim}, {dtype}"
                             f"{', bit-packed' if bitpack else ''})")
        return best_cfg

    @classmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, dtype: str = "float32",
                   bitpack: bool = False, M: int | None = None, K: int | None = None,
                   max_codebooks: int = DEFAULT_MAX_CODEBOOKS, max_codebook_size: int = 256,
                   **kwargs: Any) -> CodebookTable:
        """A fresh table with the ``(M, K)`` of :meth:`config_for_budget`; ``kwargs`` go to the constructor.

        To fit it to teacher vectors, pass the chosen ``M`` and ``K`` to :meth:`from_vectors`.
        """
        m, k = cls.config_for_budget(num_items, dim, budget_bytes, dtype, bitpack, M, K,
                                     max_codebooks, max_codebook_size)
        return cls(num_items, dim, M=m, K=k, dtype=dtype, bitpack=bitpack, **kwargs)

    # ---- initialisation from teacher vectors ------------------------------------------------------

    @staticmethod
    def _check_vectors(vectors: Tensor, num_items: int | None = None, dim: int | None = None) -> None:
        if vectors.dim() != 2 or vectors.shape[0] < 2:
            raise ValueError(f"vectors must be (num_items + 1, dim) with row 0 the padding row, "
                             f"got shape {tuple(vectors.shape)}")
        if num_items is not None and (vectors.shape[0] != num_items + 1 or vectors.shape[1] != dim):
            raise ValueError(f"vectors have shape {tuple(vectors.shape)}, expected {(num_items + 1, dim)}")

    @classmethod
    def from_vectors(cls, vectors: Tensor, M: int, K: int, method: str = "rq", seed: int = 0, *,
                     iters: int = 25, refit: bool = True, refine_iters: int = 0, dtype: str = "float32",
                     bitpack: bool = False, chunk_size: int | None = None) -> CodebookTable:
        """Fit codebooks and codes to teacher item vectors ``(num_items + 1, dim)`` (row 0 ignored).

        ``method``:

        * ``"rq"`` (default): residual quantisation (:func:`~pocketrec.quantize.kmeans.residual_quantize`),
          whose sums compose like the table;
        * ``"pq"``: product quantisation as zero-padded codebooks (:func:`~pocketrec.quantize.kmeans.product_quantize`);
        * ``"random"``: uniformly random codes (a baseline).

        ``rq`` and ``pq`` are pocketrec's quantizers (:mod:`pocketrec.quantize.ours`; they fit on the CPU and the
        table is moved to the vectors' device). With ``refit`` the codebooks are then replaced by the
        least-squares codebooks for the chosen codes (:func:`~pocketrec.quantize.kmeans.fit_codebooks`, only when
        ``M*K <= 8192`` and when it lowers the error); ``"random"``
        always gets least-squares codebooks. ``refine_iters > 0`` then runs that many rounds of
        :func:`icm_refine` (joint re-assignment of the codes; never raises the error).
        Deterministic for a given ``seed`` on CPU.
        """
        cls._check_vectors(vectors)
        if method not in _INIT_METHODS:
            raise ValueError(f"method must be one of {_INIT_METHODS}, got {method!r}")
        x = vectors[1:].detach().float()
        num_items, dim = x.shape
        if method == "random":
            gen = torch.Generator().manual_seed(int(seed))
            codes = torch.randint(K, (num_items, M), generator=gen).to(x.device)
            books = fit_codebooks(x, codes, K)
        else:  # pocketrec's own quantizers (pocketrec.quantize.ours), least-squares refit included
            from pocketrec.quantize.ours import KMeansQuantizer

            quantizer = KMeansQuantizer(method, iters=iters, chunk_size=chunk_size)
            quantizer.refit = refit
            fitted = quantizer.fit(x.cpu().numpy(), M, K, seed=seed)
            books, codes = torch.from_numpy(fitted.codebooks).to(x.device), torch.from_numpy(fitted.codes).to(x.device)
        if refine_iters > 0:
            books, codes = icm_refine(x, books, codes, iters=refine_iters, chunk_size=chunk_size)
        return cls.from_codes(books, codes, dtype=dtype, bitpack=bitpack, seed=seed)

    @classmethod
    def from_codes(cls, codebooks: Tensor | np.ndarray, codes: Tensor | np.ndarray, dtype: str = "float32",
                   bitpack: bool = False, seed: int = 0) -> CodebookTable:
        """The table of given additive codes: ``codebooks (M, K, dim)``, ``codes (num_items, M)`` for items
        ``1..n`` (what a :class:`~pocketrec.quantize.base.Quantizer` returns), stored at ``dtype``."""
        books, codes = torch.as_tensor(codebooks, dtype=torch.float32), torch.as_tensor(codes)
        M, K, dim = books.shape
        table = cls(int(codes.shape[0]), int(dim), M=int(M), K=int(K), dtype=dtype, bitpack=bitpack, seed=seed)
        table = table.to(books.device)
        with torch.no_grad():
            table.codebooks.copy_(books)
        table.set_codes(codes)
        return table

    def extra_repr(self) -> str:
        packed = ", bitpack" if self.bitpack else ""
        return (f"num_items={self.num_items}, dim={self.dim}, M={self.M}, K={self.K}, "
                f"dtype={self.stored_dtype}{packed}, nbytes={self.nbytes():,}")
