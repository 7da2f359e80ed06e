"""Tensor-train item table with the semi-tensor product (STT), after OD-Rec and TT-Rec.

Papers:

* OD-Rec: Xia et al., "On-Device Next-Item Recommendation with Self-Supervised Knowledge
  Distillation", SIGIR 2022 (arXiv 2204.11091). Its student replaces the dense item table by a tensor
  train whose cores are chained with the *semi-tensor product* (STP) ``A ⋉ B = A · (B ⊗ I_t)``, which
  lets every core after the first shrink its leading rank and its output width by a factor ``t``.
* TT-Rec: Yin et al., "TT-Rec: Tensor Train Compression for Deep Learning Recommendation Model
  Embeddings", MLSys 2021. The per-item layout used here is TT-Rec's: the item id is written in the
  mixed radix of the item factors ``I_1..I_K`` and its row is built only from that id's core slices.

Layout (``K >= 2`` cores, TT ranks ``R_0 = R_K = 1`` and ``R_1 = ... = R_{K-1} = R``; ``t_1 = 1`` and
``t_k = t`` for ``k >= 2``). Core ``k`` is stored as a 4-d array

    G_k : (R_{k-1} / t_k, I_k, J_k / t_k, R_k)

so ``|θ| = I_1 J_1 R + Σ_{k≥2} I_k J_k R_{k-1} R_k / t²``, the parameter count of OD-Rec's code (docs/methods/odrec.md)
(Tmall ``[169, 241] x [16, 8]``, ``R = 60``, ``t = 2``: 191,160 parameters).

Per-item chain. Item ``id`` has digits ``(i_1, ..., i_K)`` with ``id = Σ_k i_k Π_{l>k} I_l``. The running
state after core ``k`` is a ``(J_1···J_k) x R_k`` matrix ``M_k``; ``M_1 = G_1[0, i_1]`` and, for every
output rank ``r`` of core ``k``,

    M_k[:, r] = vec( M_{k-1} ⋉ G_k[:, i_k, :, r] ) = vec( M_{k-1} · (G_k[:, i_k, :, r] ⊗ I_t) ),

``vec`` being row-major, so the new width index is ``j_k = q·t + s`` (``q < J_k/t``, ``s < t``). The row is
``e_id = M_K[:, 0]``. For two cores this is exactly docs/methods/odrec.md's
``e_id[j_1 J_2 + q t + s] = Σ_p G_1[i_1, j_1, p t + s] · G_2[p, i_2, q]``. With ``t = 1`` it is a plain TT.
The Kronecker product with ``I_t`` is never built: it is an interleave, computed with one einsum per core.

What differs from the authors' code (see docs/methods/odrec.md):

* One layout in training and serving. OD-Rec's ``student.py`` trains on ``reshape(n, d)`` of the whole
  ``G_1 ⋉ G_2`` product (a row is a contiguous slice, not an item's TT row), while ``mobile.py`` serves
  the per-item layout; a model trained by the one cannot be served by the other. Here both use the
  per-item layout.
* General ``t`` and ``K``. The code's interleave is hard-wired to ``t = 2``; here any ``t`` dividing
  ``R`` and ``J_2..J_K`` works, with any number of cores ``K >= 2``.
* Middle cores (``K >= 3``). The code shrinks a middle core's *output rank* by ``t`` (its columns are
  ``I_k·J_k·R_k/t``); here every core after the first shrinks its output *width* ``J_k`` by ``t`` and keeps
  its output rank, so each ``M_k`` is an honest ``(J_1···J_k) x R_k`` matrix. The parameter count is the same.
* The vocabulary padding is not ranked: rows ``num_items + 1 .. Π I_k - 1`` exist in the factorised
  index space but ``score`` returns only ``num_items + 1`` columns, column 0 (padding) masked.

Factor choice (:func:`factorize`): the item factors are the multiset with the smallest ``Σ I_k``
subject to ``Π I_k >= num_rows`` (balanced factors), then the least padding ``Π I_k - num_rows``. They
are ordered by cost: the smallest factor goes to the core with the most parameters per slice
(``R_{k-1} J_k R_k / t_k²``), which minimises the bytes of that multiset (2 cores: ascending; 3 cores at
``R > t² J_1 / J_2``: smallest in the middle, largest last). Dimension factors are the exact factorisation
of ``dim`` with the smallest ``Σ J_k`` whose ``J_2..J_K`` are divisible by ``t``, largest first
(``128 -> [16, 8]`` or ``[8, 4, 4]``, as in the code). For Tmall (40,727 items, 40,728 rows, ``R = 60``,
``t = 2``) that gives ``[194, 210] x [16, 8]`` and ``[37, 29, 38] x [8, 4, 4]``; pass explicit
``item_factors`` to reproduce the code's ``[169, 241]`` or ``[13, 13, 241]`` (product 40,729, its n_node).

Item order (``ordered=True``). By default item ``id`` lives at TT index ``id``. An ordered table keeps a
permutation ``slots`` (item id -> TT index, the padding id at 0) and builds item ``id``'s row from the digits
of ``slots[id]``; :func:`pocketrec.tables.tt_order.clustered_slots` picks slots so that items sharing a digit
are alike. The permutation ships with the table (the smallest unsigned type holding ``Π I_k`` values per item,
counted in ``nbytes``); scoring rebuilds the rows in TT-index order and gathers the items' columns (one
``batch x items`` copy; training's catalogue loss uses :meth:`full_weight`, which gathers rows instead).

Initialisation: every core entry is drawn i.i.d. ``N(0, σ²)`` with one ``σ`` for all cores, chosen so
the rebuilt rows have standard deviation ``init_std`` (0.02 by default, like :class:`DenseTable`): an
entry of a row is a sum of ``Π_{k<K} R_k / t`` products of ``K`` core entries, so
``σ = (init_std / sqrt(Π_{k<K} R_k / t))^(1/K)``. :meth:`TTTable.fit_to` warm-starts the cores from a
dense (teacher) table by least squares on random rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.formats.bitpack import code_dtype
from pocketrec.formats.table_arrays import check_slots
from pocketrec.tables.base import (
    ItemTable,
    as_stored,
    check_stored_dtype,
    normalise_row_norms,
    register_table,
    score_row_blocks,
)


# --------------------------------------------------------------------------------------------- factors
def _balanced_item_factors(num_rows: int, num_cores: int) -> list[int]:
    """``num_cores`` factors with ``Π >= num_rows``: smallest sum, then smallest product, ascending."""
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1, got {num_rows}")
    root = max(1, math.ceil(round(num_rows ** (1.0 / num_cores), 9)))
    while root ** num_cores < num_rows:
        root += 1
    best: tuple[int, int, tuple[int, ...]] = (root * num_cores, root ** num_cores, (root,) * num_cores)

    def search(prefix: tuple[int, ...], prod: int, psum: int) -> None:
        nonlocal best
        left = num_cores - len(prefix)
        need = -(-num_rows // prod)  # product the remaining factors must reach
        start = prefix[-1] if prefix else 1
        if left == 1:
            last = max(start, need)
            cand = (psum + last, prod * last, (*prefix, last))
            if cand < best:
                best = cand
            return
        a = start
        while psum + left * a <= best[0]:  # the remaining factors are all >= a
            rest_need = -(-need // a)
            lower = psum + a + (left - 1) * max(a, rest_need ** (1.0 / (left - 1)) - 1e-9)
            if lower <= best[0]:
                search((*prefix, a), prod * a, psum + a)
            a += 1

    search((), 1, 0)
    return list(best[2])


def _dim_factorizations(dim: int, num_cores: int) -> Iterator[tuple[int, ...]]:
    """Every ordered tuple of ``num_cores`` positive integers whose product is ``dim``."""
    if num_cores == 1:
        yield (dim,)
        return
    for d in range(1, dim + 1):
        if dim % d == 0:
            for rest in _dim_factorizations(dim // d, num_cores - 1):
                yield (d, *rest)


def _balanced_dim_factors(dim: int, num_cores: int, t: int) -> list[int]:
    """Exact factors of ``dim``, ``J_2..J_K`` divisible by ``t``: smallest sum, then largest first."""
    valid = [f for f in _dim_factorizations(dim, num_cores) if all(j % t == 0 for j in f[1:])]
    if not valid:
        raise ValueError(f"dim={dim} cannot be split into {num_cores} factors whose factors 2..{num_cores} "
                         f"are divisible by t={t} (dim must be divisible by t^{num_cores - 1} = "
                         f"{t ** (num_cores - 1)})")
    best = min(valid, key=lambda f: (sum(f), tuple(-j for j in f)))
    return list(best)


def _order_item_factors(factors: Sequence[int], dims: Sequence[int], rank: int | None, t: int) -> list[int]:
    """Give the larger item factors to the cores that cost fewer bytes per slice (ascending if no rank)."""
    ascending = sorted(factors)
    if rank is None:
        return ascending
    shapes = _core_shapes([1] * len(dims), dims, rank, t)
    per_slice = [math.prod(shape) for shape in shapes]
    by_cost = sorted(range(len(dims)), key=lambda c: (-per_slice[c], c))  # most expensive first
    order = [0] * len(dims)
    for factor, core in zip(ascending, by_cost, strict=True):
        order[core] = factor
    return order


def factorize(num_rows: int, dim: int, num_cores: int = 2, t: int = 2,
              rank: int | None = None) -> tuple[list[int], list[int]]:
    """Item factors ``I`` (``Π I >= num_rows``) and dimension factors ``J`` (``Π J == dim``) for a TT table.

    Item factors: the multiset with the smallest ``Σ I_k`` (balanced), then the least padding
    ``Π I_k - num_rows``. Their order: with ``rank`` given, the smallest factor goes to the core with the
    most bytes per slice (``R_{k-1} J_k R_k / t_k²``), and so on, which minimises the bytes for that
    multiset; without it, ascending. Dimension factors: the exact factorisation with the smallest
    ``Σ J_k`` whose ``J_2..J_K`` are divisible by ``t``, largest first. Deterministic.
    """
    if num_cores < 2:
        raise ValueError(f"num_cores must be >= 2, got {num_cores}")
    if t < 1:
        raise ValueError(f"t must be >= 1, got {t}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    dims = _balanced_dim_factors(dim, num_cores, t)
    return _order_item_factors(_balanced_item_factors(num_rows, num_cores), dims, rank, t), dims


def _resolve(num_items: int, dim: int, rank: int, num_cores: int | None, t: int,
             item_factors: Sequence[int] | None, dim_factors: Sequence[int] | None,
             ) -> tuple[list[int], list[int]]:
    """Validate a configuration and fill in the factors that were not given."""
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if isinstance(t, bool) or int(t) != t or t < 1:
        raise ValueError(f"t must be an integer >= 1, got {t!r}")
    lengths = {len(f) for f in (item_factors, dim_factors) if f is not None}
    if num_cores is not None:
        lengths.add(int(num_cores))
    if len(lengths) > 1:
        raise ValueError(f"inconsistent number of cores: num_cores={num_cores}, item_factors={item_factors}, "
                         f"dim_factors={dim_factors}")
    k = lengths.pop() if lengths else 2
    if k < 2:
        raise ValueError(f"a TT table needs at least 2 cores, got {k}")
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank % t:
        raise ValueError(f"rank={rank} must be divisible by t={t} (each later core has rank/t leading rows)")
    if dim_factors is None:
        dims = _balanced_dim_factors(dim, k, t)
    else:
        dims = [int(j) for j in dim_factors]
        if any(j < 1 for j in dims):
            raise ValueError(f"dim_factors must be positive, got {dims}")
        if math.prod(dims) != dim:
            raise ValueError(f"dim_factors {dims} multiply to {math.prod(dims)}, not dim={dim}")
        bad = [j for j in dims[1:] if j % t]
        if bad:
            raise ValueError(f"dim_factors {dims}: factors 2..{k} must be divisible by t={t} (got {bad})")
    num_rows = num_items + 1
    if item_factors is None:
        items = _order_item_factors(_balanced_item_factors(num_rows, k), dims, rank, t)
    else:
        items = [int(i) for i in item_factors]
        if any(i < 1 for i in items):
            raise ValueError(f"item_factors must be positive, got {items}")
        if math.prod(items) < num_rows:
            raise ValueError(f"item_factors {items} cover {math.prod(items):,} rows, fewer than the "
                             f"{num_rows:,} rows (num_items + padding row) they must index")
    return items, dims


def _core_shapes(items: Sequence[int], dims: Sequence[int], rank: int, t: int) -> list[tuple[int, ...]]:
    """Shapes ``(R_{k-1}/t_k, I_k, J_k/t_k, R_k)`` of the cores (``t_1 = 1``, ``R_0 = R_K = 1``)."""
    k = len(items)
    shapes = []
    for c in range(k):
        r_in = 1 if c == 0 else rank // t
        width = dims[c] if c == 0 else dims[c] // t
        r_out = 1 if c == k - 1 else rank
        shapes.append((r_in, items[c], width, r_out))
    return shapes


def order_nbytes(num_items: int, num_slots: int) -> int:
    """Bytes of a shipped item order: one slot per item in the smallest unsigned type holding ``num_slots``."""
    return num_items * code_dtype(num_slots).itemsize


# ------------------------------------------------------------------------------------------------ table
@register_table
class TTTable(ItemTable):
    """Per-item (semi-)tensor-train item table; see the module docstring for layout and formulas.

    Args:
        num_items: real items, ids ``1..num_items`` (0 is padding).
        dim: row width, ``Π dim_factors``.
        rank: inner TT rank ``R`` (divisible by ``t``).
        num_cores: ``K >= 2``; taken from the factors when those are given.
        t: semi-tensor-product factor (1 = plain TT).
        item_factors, dim_factors: explicit factors; by default :func:`factorize` picks them.
        init_std: standard deviation of the rebuilt rows at initialisation.
        dtype: stored (exported) precision, ``"float32"`` or ``"float16"``; training keeps float32 master
            cores, but every row is built from the cores rounded to it (straight-through), so training and
            evaluation see what the device loads.
        chunk_size: about how many item rows ``score``/``full_weight`` rebuild at a time.
        ordered: keep an item order (identity until :meth:`set_slots`), shipped and counted in ``nbytes``.
    """

    kind = "tt"

    def __init__(self, num_items: int, dim: int, rank: int = 60, num_cores: int | None = None, t: int = 2,
                 item_factors: Sequence[int] | None = None, dim_factors: Sequence[int] | None = None,
                 init_std: float = 0.02, dtype: str = "float32", chunk_size: int = 16384,
                 ordered: bool = False) -> None:
        super().__init__(num_items, dim)
        check_stored_dtype(dtype)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        items, dims = _resolve(num_items, dim, rank, num_cores, t, item_factors, dim_factors)
        self.item_factors: list[int] = items
        self.dim_factors: list[int] = dims
        self.rank = int(rank)
        self.t = int(t)
        self.num_cores = len(items)
        self.stored_dtype = dtype
        self.chunk_size = int(chunk_size)
        # strides[k] = Π_{l>k} I_l: digit k of an id is (id // strides[k]) % I_k.
        self.strides = [math.prod(items[c + 1:]) for c in range(self.num_cores)]
        self.num_slots = math.prod(items)
        self.cores = nn.ParameterList(
            [nn.Parameter(torch.empty(shape)) for shape in _core_shapes(items, dims, self.rank, self.t)])
        self.slots: Tensor | None
        self.register_buffer("slots", torch.arange(self.num_rows) if ordered else None)
        self.reset_parameters(init_std)

    # ------------------------------------------------------------------------------------- parameters
    def core_std(self, init_std: float) -> float:
        """Per-entry std that gives rebuilt rows of std ``init_std`` (see the module docstring)."""
        terms = (self.rank // self.t) ** (self.num_cores - 1)
        return (init_std / math.sqrt(terms)) ** (1.0 / self.num_cores)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        """Draw every core entry from ``N(0, core_std(init_std)^2)``."""
        std = self.core_std(init_std)
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, std)

    @staticmethod
    def param_count(num_items: int, dim: int, rank: int, num_cores: int | None = None, t: int = 2,
                    item_factors: Sequence[int] | None = None,
                    dim_factors: Sequence[int] | None = None) -> int:
        """``I_1 J_1 R + Σ_{k≥2} I_k J_k R_{k-1} R_k / t²`` without building the table."""
        items, dims = _resolve(num_items, dim, rank, num_cores, t, item_factors, dim_factors)
        return sum(math.prod(s) for s in _core_shapes(items, dims, rank, t))

    @staticmethod
    def bytes_for(num_items: int, dim: int, rank: int, num_cores: int | None = None, t: int = 2,
                  item_factors: Sequence[int] | None = None, dim_factors: Sequence[int] | None = None,
                  dtype: str = "float32", ordered: bool = False) -> int:
        """Exact exported bytes of a TT table without building it."""
        check_stored_dtype(dtype)
        count = TTTable.param_count(num_items, dim, rank, num_cores, t, item_factors, dim_factors)
        order = 0
        if ordered:
            items, _ = _resolve(num_items, dim, rank, num_cores, t, item_factors, dim_factors)
            order = order_nbytes(num_items, math.prod(items))
        return count * np.dtype(dtype).itemsize + order

    def nbytes(self) -> int:
        order = 0 if self.slots is None else order_nbytes(self.num_items, self.num_slots)
        return sum(core.numel() for core in self.cores) * np.dtype(self.stored_dtype).itemsize + order

    @property
    def ordered(self) -> bool:
        return self.slots is not None

    def set_slots(self, slots: Tensor | np.ndarray) -> None:
        """Install an item order: ``slots[id]`` is item ``id``'s TT index (``(num_items + 1,)``, ``slots[0] = 0``,
        distinct values below ``Π I_k``). Only an ``ordered`` table has one (its bytes are counted)."""
        if self.slots is None:
            raise ValueError("this TT table was built without an item order (ordered=False)")
        slots = torch.as_tensor(slots, dtype=torch.long).reshape(-1)
        check_slots(slots.cpu().numpy(), self.num_items, self.num_slots)
        self.slots.copy_(slots.to(self.slots.device))

    def slot_of(self, ids: Tensor) -> Tensor:
        """The TT indices of item ids (the ids themselves without an item order)."""
        return ids if self.slots is None else self.slots[ids]

    # ----------------------------------------------------------------------------------------- rows
    def digits(self, ids: Tensor) -> list[Tensor]:
        """Mixed-radix digits ``(i_1, ..., i_K)`` of ``ids`` in the item factors."""
        pairs = zip(self.strides, self.item_factors, strict=True)
        return [torch.div(ids, stride, rounding_mode="floor") % n for stride, n in pairs]

    def _step(self, state: Tensor, core: Tensor, idx: Tensor | None) -> Tensor:
        """One STP step. ``state`` is ``(n, A, R_in)``; returns ``(m, A·J_k, R_out)``.

        With ``idx`` (per item) ``m = n`` and item ``i`` uses slice ``core[:, idx[i]]``. Without it the
        step is an outer product over all ``I_k`` slices (``m = n·I_k``, new index ``i_prev·I_k + i_k``).
        ``new[.., (a, q, s), r] = Σ_p state[.., a, p·t + s] · core[p, i, q, r]`` — i.e.
        ``M ⋉ B_r = M · (B_r ⊗ I_t)`` for each output rank ``r``, with the interleave done by the reshape.
        """
        n, width, r_in = state.shape
        t = self.t
        s4 = state.reshape(n, width, r_in // t, t)
        if idx is None:
            out = torch.einsum("naps,piqr->niaqsr", s4, core)
            return out.reshape(n * core.shape[1], width * core.shape[2] * t, core.shape[3])
        out = torch.einsum("naps,pnqr->naqsr", s4, core[:, idx])
        return out.reshape(n, width * core.shape[2] * t, core.shape[3])

    def stored_cores(self) -> list[Tensor]:
        """The cores at the stored precision (float16 rounding passes gradients straight through)."""
        return [as_stored(core, self.stored_dtype) for core in self.cores]

    def _rows_of(self, flat_ids: Tensor) -> Tensor:
        """Rows ``(n, dim)`` of a 1-d id tensor, built from each id's own core slices."""
        digits = self.digits(self.slot_of(flat_ids))
        cores = self.stored_cores()
        state = cores[0][0, digits[0]]  # (n, J_1, R_1)
        for core, idx in zip(cores[1:], digits[1:], strict=True):
            state = self._step(state, core, idx)
        return state.reshape(flat_ids.shape[0], self.dim)

    @property
    def _block_rows(self) -> int:
        """TT indices the blocks cover: the ids ``0..num_items``, or every slot of an ordered table."""
        return self.num_rows if self.slots is None else self.num_slots

    def _first_digit_blocks(self, chunk_size: int | None = None) -> Iterator[tuple[int, int, Tensor]]:
        """Yield ``(start, stop, rows)`` covering TT indices ``0.._block_rows`` in blocks of whole first digits.

        A block of first digits ``[lo, hi)`` holds the contiguous TT indices ``[lo·s, hi·s)``
        (``s = Π_{k≥2} I_k``), built as an outer product over the digits, so shared prefixes are computed
        once. Without an item order TT index = item id.
        """
        per_first = self.strides[0]
        step = max(1, (chunk_size or self.chunk_size) // per_first)
        limit = self._block_rows
        firsts = -(-limit // per_first)
        cores = self.stored_cores()
        for lo in range(0, firsts, step):
            hi = min(lo + step, firsts)
            state = cores[0][0, lo:hi]  # (hi - lo, J_1, R_1)
            for core in cores[1:]:
                state = self._step(state, core, None)
            start, stop = lo * per_first, min(hi * per_first, limit)
            yield start, stop, state.reshape(-1, self.dim)[: stop - start]

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        if ids.device.type == "cpu" and ids.numel():  # on an accelerator this check would cost a sync
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high > self.num_items:
                raise IndexError(f"ids must lie in 0..{self.num_items}, got range {low}..{high}")
        flat = ids.reshape(-1)
        rows = self._rows_of(flat).reshape(*ids.shape, self.dim)
        return rows * (ids != 0).unsqueeze(-1).to(rows.dtype)

    def full_weight(self, chunk_size: int | None = None) -> Tensor:
        """The ``(num_items + 1, dim)`` table, rebuilt in chunks (row 0 is the padding id's TT row).

        Differentiable. Row 0 is *not* zeroed: it is what the cores give for id 0; ``forward`` masks it.
        """
        rows = torch.cat([rows for _, _, rows in self._first_digit_blocks(chunk_size)], dim=0)
        return rows if self.slots is None else rows.index_select(0, self.slots)

    materialize = full_weight

    def all_rows(self) -> Tensor:
        return self.full_weight()

    def score(self, queries: Tensor) -> Tensor:
        return self._score_blocks(queries, unit_rows=False)

    def cosine_score(self, queries: Tensor) -> Tensor:
        """Each rebuilt block of rows is normalised before the product (no second pass over the scores)."""
        return self._score_blocks(queries, unit_rows=True)

    def row_norms(self, chunk: int = 16384) -> Tensor:
        """Norms of the rows, rebuilt in blocks of whole first digits (shared prefixes computed once)."""
        norms = torch.cat([rows.norm(dim=-1) for _, _, rows in self._first_digit_blocks(chunk)])
        return normalise_row_norms(norms if self.slots is None else norms.index_select(0, self.slots))

    def _score_blocks(self, queries: Tensor, unit_rows: bool) -> Tensor:
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (batch, {self.dim}), got {tuple(queries.shape)}")

        needs_grad = torch.is_grad_enabled() and (
            queries.requires_grad or any(core.requires_grad for core in self.cores))
        scores = score_row_blocks(queries, self._first_digit_blocks(), self._block_rows, unit_rows, needs_grad)
        # ordered: scores are in TT-index order; slot 0 is the padding id's, so column 0 stays masked
        return scores if self.slots is None else scores.index_select(1, self.slots)

    # ------------------------------------------------------------------------------------ warm start
    def fit_to(self, weight: Tensor | np.ndarray, steps: int = 300, lr: float = 1e-2, batch_rows: int = 4096,
               seed: int = 0) -> float:
        """Least-squares warm start: Adam on ``||row_tt(id) - weight[id]||²`` over random real ids.

        ``weight`` is a ``(num_items + 1, dim)`` dense table (row 0 ignored), e.g. a teacher's. Returns the
        relative squared error ``||W_tt - W||² / ||W||²`` over the real rows after fitting.
        """
        target = torch.as_tensor(weight, dtype=torch.float32)
        if target.shape != (self.num_rows, self.dim):
            raise ValueError(f"weight must be {(self.num_rows, self.dim)}, got {tuple(target.shape)}")
        device = self.cores[0].device
        target = target.to(device)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        batch = min(batch_rows, self.num_items)
        with torch.enable_grad():
            for _ in range(steps):
                ids = torch.randint(1, self.num_items + 1, (batch,), generator=gen).to(device)
                loss = (self._rows_of(ids) - target[ids]).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            fitted = self.full_weight()[1:]
            err = (fitted - target[1:]).pow(2).sum() / target[1:].pow(2).sum().clamp_min(1e-30)
        return float(err)

    # ---------------------------------------------------------------------------------------- export
    def _description(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_items": self.num_items, "dim": self.dim,
                "item_factors": list(self.item_factors), "dim_factors": list(self.dim_factors),
                "rank": self.rank, "t": self.t, "dtype": self.stored_dtype, "ordered": self.ordered}

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``core_k`` at the stored dtype; an ordered table adds ``slots`` of items ``1..n`` (smallest uint type)."""
        arrays = {f"core_{c}": core.detach().cpu().numpy().astype(self.stored_dtype)
                  for c, core in enumerate(self.cores)}
        if self.slots is not None:
            arrays["slots"] = self.slots[1:].cpu().numpy().astype(code_dtype(self.num_slots))
        return arrays, self._description()

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> TTTable:
        if description.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"description is of kind {description.get('kind')!r}, not {cls.kind!r}")
        return cls(int(description["num_items"]), int(description["dim"]), rank=int(description["rank"]),
                   t=int(description["t"]), item_factors=[int(i) for i in description["item_factors"]],
                   dim_factors=[int(j) for j in description["dim_factors"]],
                   dtype=str(description.get("dtype", "float32")), ordered=bool(description.get("ordered", False)))

    @classmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> TTTable:
        table = cls.from_description(description)
        with torch.no_grad():
            for c, core in enumerate(table.cores):
                name = f"core_{c}"
                if name not in arrays:
                    raise ValueError(f"tt export is missing array {name!r}")
                arr = arrays[name]
                if tuple(arr.shape) != tuple(core.shape):
                    raise ValueError(f"tt {name} has shape {tuple(arr.shape)}, expected {tuple(core.shape)}")
                core.copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))
        expected = {f"core_{c}" for c in range(table.num_cores)} | ({"slots"} if table.ordered else set())
        if table.ordered:
            if "slots" not in arrays:
                raise ValueError("tt export of an ordered table is missing array 'slots'")
            table.set_slots(np.concatenate([[0], np.asarray(arrays["slots"], dtype=np.int64)]))
        extra = sorted(set(arrays) - expected)
        if extra:
            raise ValueError(f"tt export has unexpected arrays {extra}")
        return table

    # ---------------------------------------------------------------------------------------- budget
    @classmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, num_cores: int | None = 2, t: int = 2,
                   dtype: str = "float32", item_factors: Sequence[int] | None = None,
                   dim_factors: Sequence[int] | None = None, max_rank: int | None = None, ordered: bool = False,
                   **kwargs: Any) -> TTTable:
        """The TT table with the largest rank ``R`` (a multiple of ``t``, ``<= max_rank``) within the budget.

        ``ordered`` reserves the item order's bytes. Raises ``ValueError`` with the smallest size (``R = t``)
        when even that does not fit.
        """
        if item_factors is not None or dim_factors is not None:
            num_cores = None  # taken from the factors
        items, dims = _resolve(num_items, dim, t, num_cores, t, item_factors, dim_factors)

        def size(rank: int) -> int:
            return cls.bytes_for(num_items, dim, rank, num_cores, t, item_factors, dim_factors, dtype, ordered)

        smallest = size(t)
        if smallest > budget_bytes:
            raise ValueError(f"budget {budget_bytes:,} B is below the smallest tt table: {smallest:,} B at "
                             f"rank={t} (t={t}, item_factors={items}, dim_factors={dims}, "
                             f"{num_items:,} items, dim={dim})")
        if max_rank is not None and max_rank < t:
            raise ValueError(f"max_rank={max_rank} is below the smallest valid rank t={t}")
        # Search m = rank / t (size grows with m): size(lo·t) fits, size(hi·t) does not, or hi = cap.
        cap = None if max_rank is None else max_rank // t
        if cap is not None and size(cap * t) <= budget_bytes:
            lo = hi = cap
        else:
            lo, hi = 1, 2 if cap is None else cap
            while cap is None and size(hi * t) <= budget_bytes:
                lo, hi = hi, hi * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if size(mid * t) <= budget_bytes:
                    lo = mid
                else:
                    hi = mid
        return cls(num_items, dim, rank=lo * t, num_cores=num_cores, t=t, item_factors=item_factors,
                   dim_factors=dim_factors, dtype=dtype, ordered=ordered, **kwargs)

    def describe(self) -> str:
        order = ", ordered" if self.ordered else ""
        return (f"{self.kind}(items={self.num_items}, dim={self.dim}, I={self.item_factors}, "
                f"J={self.dim_factors}, R={self.rank}, t={self.t}{order}, bytes={self.nbytes():,})")

    def extra_repr(self) -> str:
        return (f"num_items={self.num_items}, dim={self.dim}, item_factors={self.item_factors}, "
                f"dim_factors={self.dim_factors}, rank={self.rank}, t={self.t}, nbytes={self.nbytes():,}")
