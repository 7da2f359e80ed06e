"""Numpy scorers of the item tables, for the torch-free device runtime (numpy only).

One class per table kind, registered by the kind name of :meth:`ItemTable.export`'s description
(:func:`register_scorer`); the runtime looks the kind up in :data:`SCORERS`, so a new table kind adds a
scorer here (or anywhere, with the decorator) without touching the runtime core. A scorer is built from
the artifact's ``table/`` arrays (names without the prefix) and the description, and offers:

* ``rows(ids)``: ``(len(ids), dim)`` float32 vectors of internal ids (id 0 gives zeros), for the encoder input;
* ``score_blocks(query)``: ``(start, scores)`` for consecutive blocks of ids covering ``0..num_items``, the
  float32 scores of one ``(dim,)`` query, using the table's own fast path a block at a time (so ranking
  never needs the whole catalogue's scores at once); entry 0 (padding) is meaningless and never ranked;
  ``score(query)`` concatenates them, and :func:`stream_top_k` ranks them a block at a time;
* ``row_norms()``: ``(num_items + 1,)`` float32 L2 norms of the rows (entry 0 set to 1), computed in chunks.

Each mirrors its torch table exactly (same formulas, float32 arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from pocketrec.formats.bitpack import packed_nbytes, unpack_codes, unpack_int4
from pocketrec.formats.elastic_arrays import elastic_groups, elastic_nbytes, elastic_priority, select_by_priority
from pocketrec.formats.table_arrays import MAX_GROUP_LUT, check_slots, dequantized_codebooks, lut_groups

SCORERS: dict[str, type[NumpyTable]] = {}

_CHUNK_ROWS = 16384
_SCORE_BLOCK = 65536  # ids per scored block: 256 KiB of scores


def register_scorer(kind: str) -> Callable[[type[NumpyTable]], type[NumpyTable]]:
    """Class decorator: serve tables of ``kind`` with this numpy scorer."""
    def wrap(cls: type[NumpyTable]) -> type[NumpyTable]:
        cls.kind = kind
        SCORERS[kind] = cls
        return cls
    return wrap


class NumpyTable:
    """Base class: ``num_items``, ``dim`` and the three operations (see the module docstring)."""

    kind = ""

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        self.num_items = int(description["num_items"])
        self.dim = int(description["dim"])
        self.num_rows = self.num_items + 1

    def rows(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def score(self, query: np.ndarray) -> np.ndarray:
        return np.concatenate([block for _, block in self.score_blocks(query)])

    def blocks(self) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` id ranges of the scored blocks."""
        for start in range(0, self.num_rows, _SCORE_BLOCK):
            yield start, min(start + _SCORE_BLOCK, self.num_rows)

    def row_blocks(self, chunk: int = _CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, rows)`` over ids ``0..num_items``; default: :meth:`rows` on id ranges."""
        for start in range(0, self.num_rows, chunk):
            stop = min(start + chunk, self.num_rows)
            yield start, stop, self.rows(np.arange(start, stop))

    def row_norms(self) -> np.ndarray:
        norms = np.empty(self.num_rows, dtype=np.float32)
        for start, stop, rows in self.row_blocks():
            norms[start:stop] = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        norms[0] = 1.0
        return np.maximum(norms, np.float32(1e-8))


def _require(arrays: dict[str, np.ndarray], names: list[str], kind: str) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"{kind} table is missing arrays {missing} (has {sorted(arrays)})")


@register_scorer("dense")
class DenseScorer(NumpyTable):
    """Rows stored as they are (float32 or float16); scores are chunked matmuls in float32."""

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        super().__init__(arrays, description)
        _require(arrays, ["weight"], "dense")
        self.weight = arrays["weight"]
        if self.weight.shape != (self.num_rows, self.dim):
            raise ValueError(f"dense weight has shape {self.weight.shape}, expected {(self.num_rows, self.dim)}")

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = self.weight[ids].astype(np.float32)
        out[ids == 0] = 0.0
        return out

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in self.blocks():  # fp16 rows are upcast a block at a time: the table stays fp16
            yield start, self.weight[start:stop].astype(np.float32, copy=False) @ query


@register_scorer("tt")
class TTScorer(NumpyTable):
    """Semi-tensor-product tensor train (:mod:`pocketrec.tables.tt`): rows rebuilt from the cores.

    Core ``k`` is ``(R_{k-1}/t_k, I_k, J_k/t_k, R_k)``; one STP step maps a state ``(n, A, R_in)`` to
    ``new[.., (a, q, s), r] = sum_p state[.., a, p*t + s] * core[p, i, q, r]`` exactly as ``TTTable._step``.
    Scoring rebuilds rows in blocks of whole first digits (``TTTable._first_digit_blocks``). An ordered
    table (``slots``: item id -> TT index) builds item ``id`` from the digits of its slot and scores every
    slot, then gathers the items' columns.
    """

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        super().__init__(arrays, description)
        self.item_factors = [int(i) for i in description["item_factors"]]
        self.dim_factors = [int(j) for j in description["dim_factors"]]
        self.t = int(description["t"])
        names = [f"core_{c}" for c in range(len(self.item_factors))]
        _require(arrays, names, "tt")
        self.cores = [np.ascontiguousarray(arrays[n], dtype=np.float32) for n in names]
        self.strides = [math.prod(self.item_factors[c + 1:]) for c in range(len(self.item_factors))]
        self.num_slots = self.strides[0] * self.item_factors[0]
        if self.num_slots < self.num_rows:
            raise ValueError(f"tt item factors {self.item_factors} cover fewer than {self.num_rows} rows")
        self.slots: np.ndarray | None = None
        if description.get("ordered", False):
            _require(arrays, ["slots"], "tt")
            slots = np.concatenate([[0], np.asarray(arrays["slots"], dtype=np.int64)])
            check_slots(slots, self.num_items, self.num_slots)
            self.slots = slots
        elif "slots" in arrays:
            raise ValueError("tt table has a 'slots' array but its description is not ordered")

    def _step_all(self, state: np.ndarray, core: np.ndarray) -> np.ndarray:
        n, width, r_in = state.shape
        t = self.t
        p, i_k, q, r_out = core.shape
        s4 = state.reshape(n, width, r_in // t, t).transpose(0, 1, 3, 2).reshape(n * width * t, p)
        out = (s4 @ core.reshape(p, i_k * q * r_out)).reshape(n, width, t, i_k, q, r_out)
        out = out.transpose(0, 3, 1, 4, 2, 5)  # (n, i, a, q, s, r)
        return out.reshape(n * i_k, width * q * t, r_out)

    def _step_items(self, state: np.ndarray, core: np.ndarray, idx: np.ndarray) -> np.ndarray:
        n, width, r_in = state.shape
        s4 = state.reshape(n, width, r_in // self.t, self.t)
        sl = core[:, idx].transpose(1, 0, 2, 3)  # (n, p, q, r)
        out = np.einsum("naps,npqr->naqsr", s4, sl)
        return out.reshape(n, width * core.shape[2] * self.t, core.shape[3])

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.num_items):
            raise IndexError(f"ids must lie in 0..{self.num_items}")
        slots = ids if self.slots is None else self.slots[ids]
        digits = [(slots // s) % n for s, n in zip(self.strides, self.item_factors, strict=True)]
        state = self.cores[0][0, digits[0]]
        for core, idx in zip(self.cores[1:], digits[1:], strict=True):
            state = self._step_items(state, core, idx)
        out = state.reshape(ids.size, self.dim).astype(np.float32, copy=False)
        out[ids == 0] = 0.0
        return out

    def _slot_blocks(self, chunk: int = _CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, rows)`` over TT indices in blocks of whole first digits (ids when unordered)."""
        per_first = self.strides[0]
        step = max(1, chunk // per_first)
        limit = self.num_rows if self.slots is None else self.num_slots
        firsts = -(-limit // per_first)
        for lo in range(0, firsts, step):
            hi = min(lo + step, firsts)
            state = self.cores[0][0, lo:hi]
            for core in self.cores[1:]:
                state = self._step_all(state, core)
            start, stop = lo * per_first, min(hi * per_first, limit)
            yield start, stop, state.reshape(-1, self.dim)[: stop - start]

    def row_blocks(self, chunk: int = _CHUNK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
        if self.slots is None:
            yield from self._slot_blocks(chunk)
        else:
            yield from super().row_blocks(chunk)

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if self.slots is None:
            for start, _, rows in self._slot_blocks():
                yield start, rows @ query
            return
        by_slot = np.concatenate([rows @ query for _, _, rows in self._slot_blocks()])
        yield 0, by_slot[self.slots]


@register_scorer("codebook")
class CodebookScorer(NumpyTable):
    """Compositional codes (:mod:`pocketrec.tables.codebook`): ``e_i = sum_m A[m, c_i^m]``.

    Scoring builds the lookup tables ``LUT[m] = A[m] @ q`` (``M*K*dim`` multiply-adds) and sums gathered
    entries per item. Codebooks are *grouped* ``g`` at a time (:func:`~pocketrec.formats.table_arrays.lut_groups`:
    the largest ``g`` with ``K**g <= min(MAX_GROUP_LUT, n)``, 65,536 entries): a group's lookup table is the outer
    sum of its members' (``K**g`` adds, at most 256 KiB, L2 resident) and its items' codes are combined at load
    into one uint16 index, so a score costs ``ceil(M / g)`` gathers per item instead of ``M`` (Tmall's M = 7,
    K = 32: 3 instead of 7; 4-bit codes: 4 codebooks a gather). The grouped codes take ``2 * ceil(M / g)`` bytes
    per item in memory, about what uint8 codes would. ``max_group_lut`` overrides the cap (benchmarks).
    """

    MAX_GROUP_LUT = MAX_GROUP_LUT

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any],
                 max_group_lut: int | None = None) -> None:
        super().__init__(arrays, description)
        dtype = str(description.get("dtype", "float32"))
        names = ["codebooks", "codes"] + (["codebook_scales"] if dtype == "int8" else [])
        _require(arrays, names, "codebook")
        if set(arrays) != set(names):
            raise ValueError(f"codebook table has unexpected arrays {sorted(set(arrays) - set(names))}")
        self.M, self.K = int(description["M"]), int(description["K"])
        books = dequantized_codebooks(arrays, dtype)
        if books.shape != (self.M, self.K, self.dim):
            raise ValueError(f"codebooks have shape {books.shape}, expected {(self.M, self.K, self.dim)}")
        self.codebooks = np.ascontiguousarray(books, dtype=np.float32)
        self.groups = lut_groups(self.M, self.K, self.num_items,
                                 self.MAX_GROUP_LUT if max_group_lut is None else max_group_lut)
        index_type = np.dtype(np.uint16) if len(self.groups[0]) > 1 or self.K > 256 else np.dtype(np.uint8)
        # per group (n,): the members' codes as one mixed-radix index, items 1..n; filled a chunk of items
        # at a time, so loading never holds all the unpacked codes at once
        self.group_codes = [np.empty(self.num_items, dtype=index_type) for _ in self.groups]
        for start, codes in self._code_chunks(arrays["codes"], description):
            if codes.size and int(codes.max()) >= self.K:
                raise ValueError(f"codes must lie in 0..{self.K - 1}")
            for group, target in zip(self.groups, self.group_codes, strict=True):
                combined = np.zeros(len(codes), dtype=np.uint32)
                for m in group:
                    combined = combined * self.K + codes[:, m]
                target[start:start + len(codes)] = combined

    def _code_chunks(self, stored: np.ndarray, description: dict[str, Any], chunk: int = 1 << 16
                     ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first item index, codes (items, M))`` chunks of the stored (plain or bit-packed) codes."""
        count = self.num_items * self.M
        if not description.get("bitpack"):
            if stored.size != count:
                raise ValueError(f"codebook table has {stored.size} codes, expected {count}")
            flat = stored.reshape(self.num_items, self.M)
            for start in range(0, self.num_items, chunk):
                yield start, flat[start:start + chunk]
            return
        bits = int(description["code_bits"])
        if stored.size != packed_nbytes(count, bits):
            raise ValueError(f"codebook table has {stored.size} packed bytes, expected {packed_nbytes(count, bits)}")
        for start in range(0, self.num_items, chunk):  # chunk is a multiple of 8: chunks start on a byte
            items = min(chunk, self.num_items - start)
            byte0 = start * self.M * bits // 8
            yield start, unpack_codes(stored[byte0:], bits, items * self.M).reshape(items, self.M)

    def _codes(self, idx: np.ndarray) -> list[np.ndarray]:
        """Per-codebook codes of items ``idx + 1`` (decoded from the grouped indices)."""
        out: list[np.ndarray] = []
        for group, combined in zip(self.groups, self.group_codes, strict=True):
            values = combined[idx].astype(np.int64)
            for j in range(len(group)):
                out.append((values // self.K ** (len(group) - 1 - j)) % self.K)
        return out

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.zeros((ids.size, self.dim), dtype=np.float32)
        real = ids > 0
        acc = np.zeros((int(real.sum()), self.dim), dtype=np.float32)
        for m, codes in enumerate(self._codes(ids[real] - 1)):
            acc += self.codebooks[m][codes]
        out[real] = acc
        return out

    def lookup_tables(self, query: np.ndarray) -> list[np.ndarray]:
        """One flat lookup table per group: the outer sum of its codebooks' ``A[m] @ q``."""
        per_book = self.codebooks @ query  # (M, K)
        tables = []
        for group in self.groups:
            lut = per_book[group[0]]
            for m in group[1:]:
                lut = (lut[:, None] + per_book[m][None, :]).ravel()
            tables.append(lut)
        return tables

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        tables = self.lookup_tables(query)
        for start, stop in self.blocks():
            block = np.empty(stop - start, dtype=np.float32)
            first = max(start, 1)  # id 0 (padding) has no codes
            block[: first - start] = 0.0
            items = block[first - start:]
            for g, (lut, combined) in enumerate(zip(tables, self.group_codes, strict=True)):
                if g == 0:
                    np.take(lut, combined[first - 1:stop - 1], out=items)
                else:
                    items += lut.take(combined[first - 1:stop - 1])
            yield start, block


@register_scorer("quantized")
class QuantizedScorer(NumpyTable):
    """Row-wise int8 / int4 rows with a float32 scale each (:mod:`pocketrec.tables.quantized`).

    int4 rows are unpacked to int8 once at load (``n x dim`` bytes resident); scores are computed a
    chunk of rows at a time in float32: ``(values @ q) * scales``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        super().__init__(arrays, description)
        _require(arrays, ["values", "scales"], "quantized")
        values = arrays["values"]
        if int(description.get("bits", 8)) == 4:
            values = unpack_int4(values, self.dim)
        if values.shape != (self.num_rows, self.dim) or arrays["scales"].shape != (self.num_rows,):
            raise ValueError(f"quantized table arrays have shapes {values.shape} / {arrays['scales'].shape}")
        self.values = np.ascontiguousarray(values, dtype=np.int8)
        self.scales = np.asarray(arrays["scales"], dtype=np.float32)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = self.values[ids].astype(np.float32) * self.scales[ids, None]
        out[ids == 0] = 0.0
        return out

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for start, stop in self.blocks():
            yield start, (self.values[start:stop].astype(np.float32) @ query) * self.scales[start:stop]


@register_scorer("elastic")
class ElasticScorer(NumpyTable):
    """Elastic blocks (:mod:`pocketrec.tables.elastic`; layout :mod:`pocketrec.formats.elastic_arrays`): each
    item group keeps its stored kept blocks ``(n_g, |S_g| * b)`` and its item ids.

    A group's scores are one product with a per-group query: ``f * sum_{k in S} s_k <x_k, e_k>``, ``x_k``
    being ``u_bar`` (shared, ``f = N / |S|``) or chunk ``u_k`` (aligned, ``f = 1``) and ``s_k`` the block's
    int8 scale (1 for float blocks), so the per-block scales and ``f`` are folded into the query and the stored matrix
    stays compact (float16 / int8, upcast a chunk of rows at a time, as the dense and quantized scorers do).
    The shared scoring instead precomputes the group's ``b``-wide rows ``(N / |S|) * sum_k s_k e_k`` in
    float32 when that takes no more memory than the stored blocks (always at float32; ``|S| >= 2`` at
    float16, ``|S| >= 4`` at int8): ``b`` multiply-adds per item instead of ``|S| * b``.
    Items are scored group by group into one ``(num_items + 1,)`` array, yielded as a single block.

    Resizing (:mod:`pocketrec.device.np_resize`): ``priority`` is the stored block priority (flat indices, ``None``
    without one), ``group_sizes``, ``stored_dtype``; :meth:`mask_for` is the architecture a budget gets under
    the priority and :meth:`table_nbytes` the stored bytes of an architecture.
    """

    def __init__(self, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        super().__init__(arrays, description)
        groups, mask, parts = elastic_groups(arrays, description)
        self.scoring = str(description.get("scoring", "shared"))
        if self.scoring not in ("shared", "aligned"):
            raise ValueError(f"unknown elastic scoring {self.scoring!r}")
        self.num_blocks = int(description["num_blocks"])
        self.block_width = self.dim // self.num_blocks
        self.mask = mask
        self.stored_dtype = str(description.get("dtype", "float32"))
        self.priority = elastic_priority(arrays, description)
        self.group_sizes = np.asarray([len(part.items) for part in parts], dtype=np.int64)
        self.group_of = groups.astype(np.uint8 if len(parts) <= 256 else np.int32)
        self.slot = np.zeros(self.num_rows, dtype=np.int32)  # row of each id in its group's matrix
        #: per group: (items, kept blocks, matrix, column scales of the query or None when summed)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        b = self.block_width
        for part in parts:
            self.slot[part.items] = np.arange(len(part.items), dtype=np.int32)
            factor = np.float32(self.num_blocks / len(part.kept) if self.scoring == "shared" else 1.0)
            scales = (part.scales.astype(np.float32) * factor).astype(np.float32)
            summed_bytes = len(part.items) * b * 4
            if self.scoring == "shared" and summed_bytes <= part.values.nbytes:
                matrix = np.zeros((len(part.items), b), dtype=np.float32)
                for j, s in enumerate(scales):
                    matrix += part.values[:, j * b:(j + 1) * b].astype(np.float32) * s
                self.parts.append((part.items, part.kept, matrix, None))
            else:
                self.parts.append((part.items, part.kept, part.values, np.repeat(scales, b)))

    def table_nbytes(self, mask: np.ndarray | None = None) -> int:
        """Stored bytes of this table under ``mask`` (default: its own architecture), priority array included."""
        return elastic_nbytes(self.group_sizes, self.mask if mask is None else mask, self.block_width,
                              self.stored_dtype, with_priority=self.priority is not None)

    def mask_for(self, budget_bytes: int) -> np.ndarray:
        """The architecture ``(G, N)`` the stored priority gives ``budget_bytes``
        (:func:`~pocketrec.formats.elastic_arrays.select_by_priority`, the rule of the direct build); ``ValueError``
        when the table has no priority or one block per group does not fit."""
        if self.priority is None:
            raise ValueError("this elastic table stores no block priority, so it cannot be resized on the device "
                             "(export it with a priority)")
        return select_by_priority(self.priority, self.group_sizes, self.block_width, self.stored_dtype,
                                  int(budget_bytes), with_priority=True)

    def _group_query(self, queries: np.ndarray, kept: np.ndarray, colscale: np.ndarray | None) -> np.ndarray:
        """``(B, w)`` query of one group's matrix (``w = b`` summed, ``|S| * b`` stored)."""
        chunks = queries.reshape(queries.shape[0], self.num_blocks, self.block_width)
        if self.scoring == "shared":
            u_bar = chunks.sum(axis=1)
            return u_bar if colscale is None else np.tile(u_bar, (1, len(kept))) * colscale
        return chunks[:, kept].reshape(queries.shape[0], -1) * colscale

    def score(self, query: np.ndarray) -> np.ndarray:
        """Scores ``(num_items + 1,)`` of a ``(dim,)`` query, or ``(B, num_items + 1)`` of ``(B, dim)`` queries;
        entry 0 (padding) is 0."""
        queries = np.asarray(query, dtype=np.float32)
        single = queries.ndim == 1
        queries = queries.reshape(-1, self.dim)
        out = np.zeros((queries.shape[0], self.num_rows), dtype=np.float32)
        for items, kept, matrix, colscale in self.parts:
            if not len(items):
                continue
            q = np.ascontiguousarray(self._group_query(queries, kept, colscale).T, dtype=np.float32)
            for start in range(0, len(items), _CHUNK_ROWS):
                rows = matrix[start:start + _CHUNK_ROWS].astype(np.float32, copy=False)
                out[:, items[start:start + _CHUNK_ROWS]] = (rows @ q).T
        return out[0] if single else out

    def score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.score(query)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.num_items):
            raise IndexError(f"ids must lie in 0..{self.num_items}")
        b, n_blocks = self.block_width, self.num_blocks
        out = np.zeros((ids.size, n_blocks, b), dtype=np.float32)
        groups = self.group_of[ids]
        for g in np.unique(groups[ids > 0]):
            at = np.flatnonzero((groups == g) & (ids > 0))
            _, kept, matrix, colscale = self.parts[int(g)]
            stored = matrix[self.slot[ids[at]]].astype(np.float32)
            if colscale is None:  # shared, summed: the b-wide row tiled N times
                out[at] = stored[:, None, :]
                continue
            blocks = (stored * colscale).reshape(len(at), len(kept), b)
            if self.scoring == "shared":
                out[at] = blocks.sum(axis=1)[:, None, :]
            else:
                out[at[:, None], kept[None, :]] = blocks
        return out.reshape(ids.size, self.dim)


def stream_top_k(blocks: Iterable[tuple[int, np.ndarray]], k: int, exclude: Sequence[int] | np.ndarray = ()
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Ids and scores of the ``k`` best of ``(start, scores)`` blocks over ids ``0..``, ties by smaller id, never id 0
    (padding) nor ``exclude``. Once ``k`` are held, a block contributes only the scores that reach the ``k``-th best
    so far (one comparison per item; a partial sort of the few that pass), so the cost is about one pass."""
    best_ids, best_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if int(k) <= 0:
        return best_ids, best_scores
    excluded = np.unique(np.asarray(exclude, dtype=np.int64))
    for start, block in blocks:
        block = block.copy() if start == 0 or len(excluded) else block
        if start == 0:
            block[0] = -np.inf
        hit = excluded[(excluded >= start) & (excluded < start + len(block))]
        block[hit - start] = -np.inf
        if len(best_scores) == k:  # only what can enter the list
            passed = np.flatnonzero(block >= best_scores[-1])
            block_ids, block_scores = passed + start, block[passed]
        else:
            block_ids, block_scores = np.arange(start, start + len(block)), block
        block_ids, block_scores = _first_k(block_ids, block_scores, k)
        best_ids, best_scores = _first_k(np.concatenate([best_ids, block_ids]),
                                         np.concatenate([best_scores, block_scores]), k)
    return best_ids, best_scores


def _first_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of ``(ids, scores)`` in the order (score descending, id ascending), finite only."""
    if len(scores) > k:
        kth = -np.partition(-scores, k - 1)[k - 1]  # the k-th best score; keep everything tied with it
        keep = scores >= kth
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    ids, scores = ids[order], scores[order]
    finite = np.isfinite(scores)
    return ids[finite], scores[finite]


def make_scorer(arrays: dict[str, np.ndarray], description: dict[str, Any]) -> NumpyTable:
    """The registered numpy scorer of ``description["kind"]``."""
    kind = description.get("kind")
    if kind not in SCORERS:
        raise ValueError(f"no numpy scorer for item-table kind {kind!r} (known: {', '.join(sorted(SCORERS))})")
    return SCORERS[kind](arrays, description)
