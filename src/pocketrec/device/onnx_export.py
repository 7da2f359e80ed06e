"""ONNX export: the same model as the device artifact, as one ONNX graph (single file, no external data).

Graph of a session model: input ``item_ids`` int64 ``(1, L)`` (internal ids, right-padded with 0 or exact
length, ``1 <= L <= max_len``); of a collaborative-filtering model (LightGCN): input ``user_index`` int64
``(1,)``, the row of its user in the ``users`` metadata, whose stored vector is the query and whose own items
are never ranked (:func:`_user_graph`); outputs ``scores`` float32 ``(1, k)`` and ``item_indices`` int64 ``(1, k)``
(internal ids, best first; map back with the ``vocab`` metadata, internal id ``i`` is ``vocab[i-1]``).
The manifest of the safetensors artifact (format, version, table description, encoder config, num_items,
vocab as compact JSON) is stored in the model's ``metadata_props`` (with ``format`` = ``pocketrec-device-onnx``).

How the graph is made. torch exports the session encoder alone (inputs ``item_ids`` and their item vectors,
output the query ``(1, dim)``; constant folding on, it only touches encoder weights). The item table's part
is written with the ``onnx`` package from the artifact's ``table/`` arrays (:meth:`ItemTable.export`) and
spliced around it: ``item_ids -> item vectors`` before the encoder, ``query -> scores of items 1..n`` after
it, then (cosine models) a division by the stored norms (``(num_items,)`` float32), ``TopK`` and ``+1`` on the
indices. Every table array is one initializer at its stored type, the artifact's bytes, decoded by nodes
that run in the graph (nothing is pre-computed into a larger initializer), so the file is the artifact's
size plus the graph's structure (and the vocabulary as JSON rather than an int32 tensor):

* dense: the rows, float32 or float16 (``Cast`` in the graph); scores are one ``Gemm`` with ``transB``
  (no transposed copy of the table);
* tt: the cores at their stored dtype (and an ordered table's ``slots``); each run rebuilds all rows
  with one STP chain over the whole catalogue (``MatMul``/``Reshape``/``Transpose``, as the numpy
  runtime's blocks), then ``Gather`` and ``Gemm``;
* quantized: int8 values, or int4 packed two per byte (uint8, unpacked with int32 ``Div``/``Mod``), and the
  float32 scales, dequantised in the graph;
* codebook: the codebooks (float32, float16, or int8 with their float32 scales) and the codes as stored:
  uint8/uint16 ``(n, M)`` or the bit-packed uint8 stream, unpacked in the graph (:func:`unpack_codes`),
  then cast to int32 gather indices; scores are one lookup table ``(1, M*K)`` (``Gemm``), its groups' outer
  sums (as the numpy scorer's), one ``Gather`` by the groups' combined codes and a ``ReduceSum``;
* elastic: the bit-packed item groups and architecture mask (both unpacked in the graph as codebook codes
  are), the kept blocks of each group at their stored dtype, and for int8 the per-(group, block) scales;
  the graph rebuilds every item's row (``b``-wide for the shared scoring, queried with ``u_bar``; ``D``-wide
  for aligned, zeros in the dropped blocks) with a fixed number of nodes plus one or two per group
  (:class:`ElasticOnnx`), then scores are one ``Gemm``.

One builder class per table kind, registered by kind name in :data:`ONNX_TABLES`
(:func:`register_onnx_table`), as the numpy runtime's scorers are (:mod:`pocketrec.device.np_tables`).
onnxruntime may constant-fold the decoding when it loads a session (it then holds the decoded tables in
memory); what the file stores is the table as the artifact stores it.

Refused like the safetensors artifact (``ValueError``, nothing written): NaN/inf weights, a duplicate id,
a target that is a directory or inside a checkpoint folder, an item-table kind without an ONNX builder, an
``opset`` below 14; also a missing ``onnx`` extra (``onnx`` and ``onnxscript``, which the export
needs). ONNX files carry no checksum nor signature.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.device.artifact import (
    ExportedFile,
    build_artifact,
    check_target,
    chosen_users,
    resolve_model,
    write_atomically,
)
from pocketrec.device.np_users import SEEN_INDPTR, SEEN_ITEMS, VECTORS
from pocketrec.device.runtime import NORMS, ONNX_FORMAT, OnnxModel  # noqa: F401  (re-exported)
from pocketrec.extras import MissingExtraError, require  # noqa: F401  (MissingExtraError: re-exported)
from pocketrec.formats.table_arrays import MAX_GROUP_LUT, lut_groups
from pocketrec.models.session_encoder import last_positions

#: Lowest opset the export supports: the encoder's attention needs 14 (the table's part needs 13, where
#: ``ReduceSum``/``Unsqueeze`` take their axes as inputs).
MIN_OPSET = 14


class _OnnxEncoder(nn.Module):
    """The session encoder of a :class:`SessionRecommender`: ``(item_ids, rows) -> query (1, dim)``.

    ``rows`` are the item vectors of ``item_ids`` from the table's part of the graph; the vector of id 0
    (padding) may be anything, it is masked here as the model's table does.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.config = model.config
        self.positions = model.positions
        self.input_norm = model.input_norm
        self.layers = model.layers
        self.readout = model.readout

    def forward(self, item_ids: Tensor, rows: Tensor) -> Tensor:
        mask = item_ids != 0
        rows = rows * mask.unsqueeze(-1).to(rows.dtype)
        length = item_ids.shape[1]
        h = self.input_norm(rows + self.positions.weight[:length].unsqueeze(0))
        for layer in self.layers:
            h = layer(h)
        z = self.readout.pool(h, mask, rows) if self.readout is not None else last_positions(h, mask)
        if self.config.normalize:
            z = F.normalize(z, dim=-1) * self.config.scale
        return z


# --------------------------------------------------------------------------------------------------
# Writing graph nodes
# --------------------------------------------------------------------------------------------------

class OnnxGraph:
    """Nodes and initializers of the table's part of the graph (made with ``onnx.helper``).

    :meth:`op` adds one node and returns its output's name; :meth:`initializer` stores an array as it is
    (its dtype kept); :meth:`const` stores a small constant (shapes, axes, offsets). Every name starts with
    ``prefix``, so nothing collides with the names torch gives the encoder's values.
    """

    def __init__(self, prefix: str = "pocketrec/") -> None:
        import onnx

        self.onnx = onnx
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{self.prefix}{base}_{self._count}"

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Store ``array`` at its own dtype under ``prefix + name``; returns the name."""
        full = self.prefix + name
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), full))
        return full

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        """A small constant (an anonymous initializer)."""
        name = self.fresh("const")
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: Sequence[str] | None = None, **attrs: Any) -> str:
        """Add a node; returns its (first) output's name (fresh unless ``outputs`` names them)."""
        names = list(outputs) if outputs is not None else [self.fresh(op_type)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type),
                                                     **attrs))
        return names[0]

    # ---- shorthands -------------------------------------------------------------------------------
    def cast(self, x: str, dtype: Any) -> str:
        return self.op("Cast", x, to=self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def as_float(self, x: str, stored: np.dtype) -> str:
        """``x`` (stored as ``stored``) as float32: a ``Cast`` unless it already is."""
        return x if np.dtype(stored) == np.float32 else self.cast(x, np.float32)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(list(shape)))

    def slice(self, x: str, start: int, stop: int, axis: int) -> str:
        return self.op("Slice", x, self.const([start]), self.const([stop]), self.const([axis]))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", x, self.const(list(axes)))

    def reduce_sum(self, x: str, axis: int) -> str:
        return self.op("ReduceSum", x, self.const([axis]), keepdims=0)


def unpack_codes(graph: OnnxGraph, packed: str, nbytes: int, bits: int, count: int) -> str:
    """Nodes decoding ``count`` codes of ``bits`` bits (1..16) from the uint8 stream ``packed`` (``nbytes``
    bytes, the :mod:`pocketrec.formats.bitpack` layout: C order, most-significant bit first); returns the
    name of the ``(count,)`` int32 codes.

    Every ``8 / gcd(bits, 8)`` codes fill ``bits / gcd(bits, 8)`` whole bytes, so code ``j`` of each such
    group always starts at the same byte and bit: the graph reads the 3-byte big-endian window at every
    byte (24 bits hold any code of up to 16 bits at any bit offset), keeps the window at each code's start
    byte (one ``Gather`` of a group's few start offsets) and shifts and masks it with ``Div``/``Mod`` by
    per-position powers of two. Nothing of size ``count`` is stored.
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bit-packed codes need 1..16 bits in the ONNX graph, got {bits}")
    common = math.gcd(bits, 8)
    per_group, group_bytes = 8 // common, bits // common
    groups = -(-count // per_group)
    length = groups * group_bytes
    if not 0 < nbytes <= length:
        raise ValueError(f"{count} codes of {bits} bits need {-(-count * bits // 8)} bytes, got {nbytes}")
    x = graph.op("Concat", graph.cast(packed, np.int32), graph.const(np.zeros(length + 2 - nbytes), np.int32),
                 axis=0)
    window = graph.op("Add", graph.op("Mul", graph.slice(x, 0, length, 0), graph.const(1 << 16, np.int32)),
                      graph.op("Mul", graph.slice(x, 1, length + 1, 0), graph.const(1 << 8, np.int32)))
    window = graph.op("Add", window, graph.slice(x, 2, length + 2, 0))
    starts = [j * bits // 8 for j in range(per_group)]
    shifts = [1 << (24 - j * bits % 8 - bits) for j in range(per_group)]
    at_start = graph.op("Gather", graph.reshape(window, (groups, group_bytes)), graph.const(starts), axis=1)
    codes = graph.op("Mod", graph.op("Div", at_start, graph.const(shifts, np.int32)), graph.const(1 << bits, np.int32))
    codes = graph.reshape(codes, (groups * per_group,))
    return codes if groups * per_group == count else graph.slice(codes, 0, count, 0)


# --------------------------------------------------------------------------------------------------
# One builder per table kind
# --------------------------------------------------------------------------------------------------

ONNX_TABLES: dict[str, type[OnnxTable]] = {}


def register_onnx_table(kind: str) -> Callable[[type[OnnxTable]], type[OnnxTable]]:
    """Class decorator: write tables of ``kind`` into ONNX graphs with this builder."""
    def wrap(cls: type[OnnxTable]) -> type[OnnxTable]:
        cls.kind = kind
        ONNX_TABLES[kind] = cls
        return cls
    return wrap


class OnnxTable:
    """Base class of the table builders: made from the artifact's ``table/`` arrays (names without the
    prefix) and the table description, stored into ``graph`` as they are; offers

    * ``rows(ids)``: the ``(1, L, dim)`` float32 vectors of the int64 ``(1, L)`` ids (the vector of id 0 may
      be anything: the encoder masks it);
    * ``scores(query)``: the ``(1, num_items)`` float32 scores of items ``1..n`` for a ``(1, dim)`` query.

    Both take and return value names; :meth:`rows` is called first, so nodes it makes (a decoded table)
    can be reused by :meth:`scores`.
    """

    kind = ""

    def __init__(self, graph: OnnxGraph, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        self.graph = graph
        self.arrays = arrays
        self.description = description
        self.num_items = int(description["num_items"])
        self.dim = int(description["dim"])
        self.num_rows = self.num_items + 1

    def store(self, name: str) -> str:
        """The table array ``name`` as an initializer (``table/<name>``, its stored dtype)."""
        return self.graph.initializer(f"table/{name}", self.arrays[name])

    def rows(self, ids: str) -> str:
        raise NotImplementedError

    def scores(self, query: str) -> str:
        raise NotImplementedError


class RowTable(OnnxTable):
    """Tables that decode to a float32 ``(num_rows, dim)`` matrix (:meth:`matrix`), optionally times a
    per-row scale (:meth:`row_scales`, ``(num_rows,)`` float32): rows are a ``Gather``, scores a ``Gemm``
    with ``transB`` (then the scales), column 0 (padding) dropped."""

    _matrix: str | None = None

    def matrix(self) -> str:
        raise NotImplementedError

    def row_scales(self) -> str | None:
        return None

    def _decoded(self) -> str:
        if self._matrix is None:
            self._matrix = self.matrix()
        return self._matrix

    def rows(self, ids: str) -> str:
        g = self.graph
        rows = g.op("Gather", self._decoded(), ids, axis=0)
        scales = self.row_scales()
        return rows if scales is None else g.op("Mul", rows, g.unsqueeze(g.op("Gather", scales, ids, axis=0), [-1]))

    def scores(self, query: str) -> str:
        g = self.graph
        scores = g.op("Gemm", query, self._decoded(), transB=1)  # (1, num_rows)
        scales = self.row_scales()
        if scales is not None:
            scores = g.op("Mul", scores, scales)
        return g.slice(scores, 1, self.num_rows, 1)


@register_onnx_table("dense")
class DenseOnnx(RowTable):
    """The rows as stored (float32 or float16)."""

    def matrix(self) -> str:
        return self.graph.as_float(self.store("weight"), self.arrays["weight"].dtype)


@register_onnx_table("quantized")
class QuantizedOnnx(RowTable):
    """int8 rows, or int4 rows packed two per byte (low nibble = even column, two's complement), times the
    float32 per-row scales; the nibbles are split with int32 ``Div``/``Mod`` in the graph."""

    _scales: str | None = None

    def matrix(self) -> str:
        g = self.graph
        values = self.store("values")
        if int(self.description.get("bits", 8)) == 8:
            return g.cast(values, np.float32)
        half = self.arrays["values"].shape[1]
        packed = g.cast(values, np.int32)  # (num_rows, half), each byte two nibbles
        sixteen = g.const(16, np.int32)
        low, high = g.op("Mod", packed, sixteen), g.op("Div", packed, sixteen)
        nibbles = g.op("Concat", g.unsqueeze(low, [2]), g.unsqueeze(high, [2]), axis=2)
        nibbles = g.reshape(nibbles, (self.num_rows, 2 * half))
        if 2 * half != self.dim:
            nibbles = g.slice(nibbles, 0, self.dim, 1)
        eight = g.const(8, np.int32)  # 0..15 -> -8..7: ((x + 8) mod 16) - 8
        signed = g.op("Sub", g.op("Mod", g.op("Add", nibbles, eight), sixteen), eight)
        return g.cast(signed, np.float32)

    def row_scales(self) -> str:
        if self._scales is None:
            self._scales = self.graph.as_float(self.store("scales"), self.arrays["scales"].dtype)
        return self._scales


@register_onnx_table("tt")
class TTOnnx(RowTable):
    """The cores (``core_k``: ``(R_{k-1}/t_k, I_k, J_k/t_k, R_k)``) at their stored dtype; the graph rebuilds
    every TT row with one STP chain, step by step as ``np_tables.TTScorer._step_all``, then keeps rows
    ``0..num_items`` (or, ordered, gathers item ``i``'s row at ``slots[i]``)."""

    def matrix(self) -> str:
        g = self.graph
        t = int(self.description["t"])
        count = len(self.description["item_factors"])
        names = [f"core_{c}" for c in range(count)]
        cores = [g.as_float(self.store(n), self.arrays[n].dtype) for n in names]
        shapes = [self.arrays[n].shape for n in names]
        _, n, width, rank = shapes[0]
        state = g.reshape(cores[0], (n, width, rank))
        for core, (p, i_k, q, r_out) in zip(cores[1:], shapes[1:], strict=True):
            s = g.op("Transpose", g.reshape(state, (n * width, p, t)), perm=[0, 2, 1])  # (n*width, t, p)
            out = g.op("MatMul", g.reshape(s, (n * width * t, p)), g.reshape(core, (p, i_k * q * r_out)))
            out = g.op("Transpose", g.reshape(out, (n, width, t, i_k, q, r_out)), perm=[0, 3, 1, 4, 2, 5])
            n, width = n * i_k, width * q * t
            state = g.reshape(out, (n, width, r_out))
        weight = g.reshape(state, (n, self.dim))  # every TT index (slot)
        if not self.description.get("ordered", False):
            return g.slice(weight, 0, self.num_rows, 0)
        slots = g.op("Concat", g.const([0]), g.cast(self.store("slots"), np.int64), axis=0)
        return g.op("Gather", weight, slots, axis=0)


@register_onnx_table("codebook")
class CodebookOnnx(OnnxTable):
    """Codebooks (float32, float16, or int8 times ``codebook_scales``) and codes of items ``1..n`` as
    stored: uint8/uint16 ``(n, M)`` or a bit-packed stream (:func:`unpack_codes`). The codes become int32
    indices ``code + m*K`` into the flattened ``(M*K, dim)`` codebooks (rows) and, for scoring, indices into the
    concatenated lookup tables of the codebook groups (:func:`~pocketrec.formats.table_arrays.lut_groups`)."""

    def __init__(self, graph: OnnxGraph, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        super().__init__(graph, arrays, description)
        g = graph
        self.M, self.K = int(description["M"]), int(description["K"])
        books = g.as_float(self.store("codebooks"), arrays["codebooks"].dtype)
        if description.get("dtype") == "int8":
            scales = g.as_float(self.store("codebook_scales"), arrays["codebook_scales"].dtype)
            books = g.op("Mul", books, g.unsqueeze(scales, [2]))
        self.books = g.reshape(books, (self.M * self.K, self.dim))
        count = self.num_items * self.M
        if description.get("bitpack"):
            codes = unpack_codes(g, self.store("codes"), arrays["codes"].size, int(description["code_bits"]), count)
        else:
            codes = g.cast(self.store("codes"), np.int32)
        codes = g.op("Transpose", g.reshape(codes, (self.num_items, self.M)), perm=[1, 0])
        offsets = np.arange(self.M, dtype=np.int32).reshape(self.M, 1) * self.K
        self.book_index = self.index = g.op("Add", codes, g.const(offsets, np.int32))  # (M, n)
        # scoring gathers one entry per group of codebooks (lut_groups, as the numpy scorer): each group's codes
        # combined into one mixed-radix index into its outer-sum table, offset into the concatenated tables, by
        # one int32 MatMul (G, M) @ (M, n); all from initializers, so onnxruntime folds the (G, n) index at load
        self.groups = lut_groups(self.M, self.K, self.num_items, MAX_GROUP_LUT)
        if len(self.groups) < self.M:
            radix, offsets, offset = np.zeros((len(self.groups), self.M), np.int32), [], 0
            for gi, group in enumerate(self.groups):
                radix[gi, group] = [self.K ** (len(group) - 1 - j) for j in range(len(group))]
                offsets.append([offset])
                offset += self.K ** len(group)
            self.index = g.op("Add", g.op("MatMul", g.const(radix, np.int32), codes),
                              g.const(np.array(offsets, np.int32), np.int32))  # (G, n)

    def rows(self, ids: str) -> str:
        g = self.graph
        items = g.op("Max", g.op("Sub", ids, g.const(1)), g.const(0))  # id 0 reads item 1; masked later
        books = g.op("Gather", self.books, g.op("Gather", self.book_index, items, axis=1), axis=0)  # (M, 1, L, dim)
        return g.reduce_sum(books, 0)

    def scores(self, query: str) -> str:
        g = self.graph
        lut = g.op("Gemm", query, self.books, transB=1)  # (1, M*K)
        if len(self.groups) < self.M:  # one table per group: the outer sum of its codebooks' tables, flattened
            per_book, tables = g.reshape(lut, (self.M, self.K)), []
            for group in self.groups:
                table = g.reshape(g.slice(per_book, group[0], group[0] + 1, 0), (self.K,))
                for m in group[1:]:
                    table = g.reshape(g.op("Add", g.unsqueeze(table, [1]), g.slice(per_book, m, m + 1, 0)), (-1,))
                tables.append(table)
            lut = g.op("Concat", *tables, axis=0)
        else:
            lut = g.reshape(lut, (self.M * self.K,))
        return g.unsqueeze(g.reduce_sum(g.op("Gather", lut, self.index, axis=0), 0), [0])  # (G, n) -> (1, n)


def _unpack_small_codes(graph: OnnxGraph, packed: str, nbytes: int, bits: int, count: int) -> str:
    """:func:`unpack_codes` with fewer nodes when ``bits`` divides 8 (1, 2, 4, 8: every byte holds ``8 / bits``
    whole codes, split by one ``Div``/``Mod`` pair), else :func:`unpack_codes` itself."""
    if 8 % bits:
        return unpack_codes(graph, packed, nbytes, bits, count)
    per_byte = 8 // bits
    shifts = [1 << (8 - bits * (j + 1)) for j in range(per_byte)]
    x = graph.unsqueeze(graph.cast(packed, np.int32), [1])  # (nbytes, 1)
    codes = graph.op("Mod", graph.op("Div", x, graph.const(shifts, np.int32)), graph.const(1 << bits, np.int32))
    codes = graph.reshape(codes, (nbytes * per_byte,))
    return codes if nbytes * per_byte == count else graph.slice(codes, 0, count, 0)


@register_onnx_table("elastic")
class ElasticOnnx(OnnxTable):
    """Elastic blocks (:mod:`pocketrec.formats.elastic_arrays`); see the module docstring.

    The builder reads the architecture (it fixes the shapes: each group's stored width, the zero padding, the
    ``(G, N)`` int32 constant of each block's place in its group's padded row, only when some group keeps
    blocks that are not a prefix); the graph decodes the rest. The mask, unpacked in the graph, gives each
    group's ``N / |S_g|`` (shared scoring only) and the block scale table ``(G, N)`` (that factor times the
    int8 scale of a kept block, 0 for a dropped one). Each group's stored rows are cast to float32 and
    zero-padded to ``D`` columns, all groups are concatenated (group order: groups in turn, ids increasing
    within a group, as a stable sort of the item groups gives: ``TopK`` on ``group * n + index``), every row's
    blocks are gathered into block order (a dropped block reads a zero slot) and scaled, summed over blocks
    for the shared scoring, and put back in item order. The rows matrix is ``(num_items, w)``, items
    ``1..n``, ``w = b`` (shared, queried with
    ``u_bar``) or ``D`` (aligned).
    """

    def __init__(self, graph: OnnxGraph, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> None:
        from pocketrec.formats.elastic_arrays import elastic_groups, group_bits

        super().__init__(graph, arrays, description)
        g = graph
        _, mask, parts = elastic_groups(arrays, description)
        self.scoring = str(description.get("scoring", "shared"))
        num_groups, num_blocks = mask.shape
        self.num_blocks, self.block_width = num_blocks, self.dim // num_blocks
        n, b = self.num_items, self.block_width
        groups, packed_mask = self.store("groups"), self.store("mask")
        if num_groups == 1:  # the groups stream is empty: read it with the mask's, so every stored array is used
            packed_mask = g.op("Concat", groups, packed_mask, axis=0)
        flat_mask = _unpack_small_codes(g, packed_mask, arrays["mask"].size, 1, num_groups * num_blocks)
        keep = g.reshape(flat_mask, (num_groups, num_blocks, 1))  # int32 0/1
        keep_f = g.cast(keep, np.float32)
        block_scale = keep_f  # (G, N, 1); the shared scoring's kept blocks also count N / |S_g|
        if self.scoring == "shared":
            count = g.op("ReduceSum", keep_f, g.const([1]), keepdims=1)  # (G, 1, 1): |S_g|
            block_scale = g.op("Mul", keep_f, g.op("Div", g.const(float(num_blocks), np.float32), count))
        if description.get("dtype") == "int8":
            # the stored scales are the kept blocks' only: spread them over (G, N), 0 where a block is dropped
            slot = np.zeros(mask.shape, dtype=np.int32)
            slot[mask] = np.arange(1, int(mask.sum()) + 1)
            padded = g.op("Concat", g.const([0.0], np.float32), self.store("scales"), axis=0)
            block_scale = g.op("Mul", block_scale, g.reshape(g.op("Gather", padded, g.const(slot, np.int32), axis=0),
                                                             (num_groups, num_blocks, 1)))
        stored = []
        for index, part in enumerate(parts):
            name = f"blocks/{index}"
            values = g.as_float(self.store(name), arrays[name].dtype)
            if len(part.kept) < num_blocks:
                values = g.op("Pad", values, g.const([0, 0, 0, (num_blocks - len(part.kept)) * b]))
            stored.append(values)
        blocks = g.reshape(stored[0] if len(stored) == 1 else g.op("Concat", *stored, axis=0), (n, num_blocks, b))
        row_groups: str | None = None
        inverse: str | None = None
        if num_groups > 1:  # keys group * n + index: TopK's ascending order is the stored row order
            codes = _unpack_small_codes(g, groups, arrays["groups"].size, group_bits(num_groups), n)
            key_type = np.int32 if num_groups * n < 2**31 else np.int64
            if key_type is np.int64:
                codes = g.cast(codes, np.int64)
            positions = g.op("Range", g.const(0, key_type), g.const(n, key_type), g.const(1, key_type))
            keys = g.op("Add", g.op("Mul", codes, g.const(n, key_type)), positions)
            order = g.fresh("order")
            g.op("TopK", keys, g.const([n]), axis=0, largest=0, sorted=1, outputs=[g.fresh("sorted"), order])
            row_groups = g.op("Gather", codes, order, axis=0)  # (n,): the group of each stored row
            inverse = g.op("ScatterElements", positions, order, positions, axis=0)  # item -> stored row
        if not all(np.array_equal(p.kept, np.arange(len(p.kept))) for p in parts):  # blocks to their places
            where = np.full((num_groups, num_blocks, 1), num_blocks - 1, dtype=np.int32)  # dropped: a zero slot
            for index, part in enumerate(parts):
                where[index, part.kept, 0] = np.arange(len(part.kept))
            slots = g.const(where, np.int32)  # (G, N, 1): the slot of every block in its group's padded row
            slots = slots if row_groups is None else g.op("Gather", slots, row_groups, axis=0)
            index = g.op("Expand", slots, g.const([n, num_blocks, b]))
            blocks = g.op("GatherElements", blocks, index, axis=1)
        scale = block_scale if row_groups is None else g.op("Gather", block_scale, row_groups, axis=0)
        blocks = g.op("Mul", blocks, scale)  # (n, N, b)
        rows = g.reduce_sum(blocks, 1) if self.scoring == "shared" else g.reshape(blocks, (n, self.dim))
        if inverse is not None:  # stored (group) order -> item order
            rows = g.op("Gather", rows, inverse, axis=0)
        self.matrix = rows

    def rows(self, ids: str) -> str:
        g = self.graph
        items = g.op("Max", g.op("Sub", ids, g.const(1)), g.const(0))  # id 0 reads item 1; masked later
        rows = g.op("Gather", self.matrix, items, axis=0)  # (1, L, w)
        return g.op("Tile", rows, g.const([1, 1, self.num_blocks])) if self.scoring == "shared" else rows

    def scores(self, query: str) -> str:
        g = self.graph
        if self.scoring == "shared":
            query = g.reduce_sum(g.reshape(query, (1, self.num_blocks, self.block_width)), 1)  # u_bar (1, b)
        return g.op("Gemm", query, self.matrix, transB=1)


def make_onnx_table(graph: OnnxGraph, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> OnnxTable:
    """The registered ONNX builder of ``description["kind"]`` (``ValueError`` for a kind without one)."""
    kind = description.get("kind")
    if kind not in ONNX_TABLES:
        raise ValueError(f"ONNX export does not support item-table kind {kind!r} "
                         f"(known: {', '.join(sorted(ONNX_TABLES))})")
    return ONNX_TABLES[kind](graph, arrays, description)


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------

#: What the ``onnx`` extra of pyproject.toml provides and the export needs (onnxruntime only runs the file).
_EXPORT_NEEDS = ("onnx", "onnxscript")


def require_onnx() -> None:
    """Raise :class:`~pocketrec.extras.MissingExtraError` unless the packages the ONNX export needs import."""
    require(_EXPORT_NEEDS, "ONNX export needs the onnx extra: pip install 'pocketrec[onnx]'")


def _table_graph(tensors: dict[str, np.ndarray], description: dict[str, Any], k: int
                 ) -> tuple[OnnxGraph, str, int]:
    """The table's part of the graph: ``(graph, rows name, number of nodes before the encoder)``.

    The nodes before the split read ``item_ids``; those after read the encoder's ``query`` and end in the
    outputs ``scores`` and ``item_indices``.
    """
    graph = OnnxGraph()
    arrays = {name[len("table/"):]: arr for name, arr in tensors.items() if name.startswith("table/")}
    table = make_onnx_table(graph, arrays, description)
    rows = table.rows("item_ids")
    split = len(graph.nodes)
    scores = table.scores("query")
    if NORMS in tensors:  # cosine scores: divided by the stored norms of items 1..n
        norms = tensors[NORMS][1:].astype(np.float32)
        scores = graph.op("Div", scores, graph.initializer("scoring/norms", norms))
    positions = graph.fresh("positions")  # TopK's indices count from item 1: add 1 to get internal ids
    graph.op("TopK", scores, graph.const([k]), axis=-1, largest=1, sorted=1, outputs=["scores", positions])
    graph.op("Add", positions, graph.const(1), outputs=["item_indices"])
    return graph, rows, split


def table_query_model(arrays: dict[str, np.ndarray], description: dict[str, Any], k: int, opset: int = 17) -> Any:
    """The item table's scoring alone as an ``onnx.ModelProto``: input ``query`` float32 ``(1, dim)``, outputs
    ``scores`` / ``item_indices`` as a device file's (for speed benchmarks; a device file has its query side too).
    ``arrays``: the table's exported arrays (names without ``table/``); dot-product scores."""
    import onnx

    require_onnx()
    graph, _, _ = _table_graph({f"table/{name}": a for name, a in arrays.items()}, description, k)
    nodes, reading_ids = [], {"item_ids"}  # every node but the rows' (those reading item_ids, directly or not)
    for node in graph.nodes:
        if reading_ids.intersection(node.input):
            reading_ids.update(node.output)
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    k = min(int(k), int(description["num_items"]))
    body = onnx.helper.make_graph(
        nodes, "pocketrec-table",
        [onnx.helper.make_tensor_value_info("query", onnx.TensorProto.FLOAT, [1, int(description["dim"])])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, k]),
         onnx.helper.make_tensor_value_info("item_indices", onnx.TensorProto.INT64, [1, k])],
        initializer=[t for t in graph.initializers if t.name in used])
    return onnx.helper.make_model(body, opset_imports=[onnx.helper.make_opsetid("", int(opset))])


def _splice(proto: Any, graph: OnnxGraph, rows: str, split: int, k: int) -> None:
    """Put the table's nodes around the encoder graph ``proto`` (torch's: ``item_ids``, ``rows`` -> ``query``)."""
    import onnx

    encoder = proto.graph
    taken = {v for node in encoder.node for v in [*node.input, *node.output]} | {t.name for t in encoder.initializer}
    clash = taken & ({t.name for t in graph.initializers} | {v for node in graph.nodes for v in node.output})
    if clash:
        raise RuntimeError(f"the encoder graph already uses the names {sorted(clash)[:5]}")
    for node in encoder.node:
        for i, name in enumerate(node.input):
            if name == "rows":
                node.input[i] = rows
    nodes = [*graph.nodes[:split], *encoder.node, *graph.nodes[split:]]
    inputs = [v for v in encoder.input if v.name != "rows"]
    del encoder.node[:], encoder.input[:], encoder.output[:]
    encoder.node.extend(nodes)
    encoder.input.extend(inputs)
    encoder.initializer.extend(graph.initializers)
    encoder.output.extend([onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, k]),
                           onnx.helper.make_tensor_value_info("item_indices", onnx.TensorProto.INT64, [1, k])])


def _user_graph(tensors: dict[str, np.ndarray], description: dict[str, Any], k: int) -> OnnxGraph:
    """The whole graph of a collaborative-filtering model: input ``user_index`` int64 ``(1,)`` (the user's row
    in the file, see the ``users`` metadata), its stored vector as the query, the table's scores of items
    ``1..n``, the user's own items (CSR ``users/seen_*``) set to ``-inf``, ``TopK`` and ``+1``."""
    graph = OnnxGraph()
    arrays = {name[len("table/"):]: arr for name, arr in tensors.items() if name.startswith("table/")}
    table = make_onnx_table(graph, arrays, description)
    vectors = graph.initializer(VECTORS, tensors[VECTORS].astype(np.float32))
    query = graph.op("Gather", vectors, "user_index", axis=0)  # (1, dim)
    scores = table.scores(query)
    indptr = graph.initializer(SEEN_INDPTR, tensors[SEEN_INDPTR].astype(np.int64))
    start = graph.op("Gather", indptr, "user_index", axis=0)
    end = graph.op("Gather", indptr, graph.op("Add", "user_index", graph.const([1])), axis=0)
    seen = graph.op("Slice", graph.initializer(SEEN_ITEMS, tensors[SEEN_ITEMS].astype(np.int64)), start, end)
    positions = graph.unsqueeze(graph.op("Sub", seen, graph.const(1)), [0])  # (1, s): columns of items 1..n
    minus_inf = graph.op("Expand", graph.const([[-np.inf]], np.float32), graph.op("Shape", positions))
    scores = graph.op("ScatterElements", scores, positions, minus_inf, axis=1)
    found = graph.fresh("positions")
    graph.op("TopK", scores, graph.const([k]), axis=-1, largest=1, sorted=1, outputs=["scores", found])
    graph.op("Add", found, graph.const(1), outputs=["item_indices"])
    return graph


def _write_user_graph(graph: OnnxGraph, manifest: dict[str, str], k: int, opset: int) -> Callable[[str], None]:
    import onnx

    def write(tmp: str) -> None:
        body = onnx.helper.make_graph(
            graph.nodes, "pocketrec-user-vectors",
            [onnx.helper.make_tensor_value_info("user_index", onnx.TensorProto.INT64, [1])],
            [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [1, k]),
             onnx.helper.make_tensor_value_info("item_indices", onnx.TensorProto.INT64, [1, k])],
            initializer=graph.initializers)
        proto = onnx.helper.make_model(body, opset_imports=[onnx.helper.make_opsetid("", int(opset))])
        for key, value in manifest.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return write


def export_onnx(checkpoint_or_model: Any, path: str | Path, k: int = 100, vocab: list[str] | None = None,
                dataset: str | None = None, opset: int = 17, users: Sequence[str] | None = None,
                data: Any = None) -> ExportedFile:
    """Write the ONNX graph of a checkpoint folder (or a model) to ``path`` atomically; returns ``path`` (with
    ``nbytes``, the size written).

    ``k`` (capped at ``num_items``) is the number of ranked items the graph returns; ``opset`` must be at
    least :data:`MIN_OPSET`. A collaborative-filtering model (LightGCN) takes ``users`` and ``data`` as
    :func:`~pocketrec.device.artifact.export_artifact` does; its graph's input is ``user_index`` (the row of
    the user in the ``users`` metadata) instead of ``item_ids``.
    """
    path = check_target(path)
    require_onnx()
    import onnx

    if int(opset) < MIN_OPSET:
        raise ValueError(f"ONNX export needs opset {MIN_OPSET} or later, got {opset}")
    model, vocab, dataset, meta = resolve_model(checkpoint_or_model, vocab, dataset)
    model = model.eval()
    chosen = chosen_users(model, meta, users, data)
    tensors, manifest = build_artifact(model, vocab, False, dataset or "", chosen)
    manifest = {key: value for key, value in manifest.items() if key not in ("checksum", "signature")}
    manifest["format"] = ONNX_FORMAT
    manifest["vocab"] = json.dumps([str(v) for v in vocab] if vocab is not None
                                   else [str(i) for i in range(1, model.num_items + 1)], separators=(",", ":"))
    k = max(1, min(int(k), model.num_items))
    manifest["k"] = str(k)
    if chosen is not None:
        return write_atomically(path, _write_user_graph(_user_graph(tensors, json.loads(manifest["table"]), k),
                                                        manifest, k, opset))
    graph, rows, split = _table_graph(tensors, json.loads(manifest["table"]), k)
    encoder = _OnnxEncoder(model).eval()
    length = min(model.config.max_len, 4)
    example_ids = torch.arange(1, length + 1, dtype=torch.long).clamp_max(model.num_items).view(1, -1)
    example_rows = torch.zeros(1, length, model.config.dim)

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is "legacy"
            torch.onnx.export(encoder, (example_ids, example_rows), tmp, input_names=["item_ids", "rows"],
                              output_names=["query"], dynamic_axes={"item_ids": {1: "length"}, "rows": {1: "length"}},
                              opset_version=int(opset), dynamo=False)
        proto = onnx.load(tmp)
        _splice(proto, graph, rows, split, k)
        for key, value in manifest.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    return write_atomically(path, write)
