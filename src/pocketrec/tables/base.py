"""The item-table interface every method plugs into.

An item table owns the vectors of a catalogue of ``num_items`` real items with ids ``1..num_items``;
id ``0`` is padding. Tables differ in how they store those vectors (dense rows, tensor-train cores,
codebooks plus integer codes, elastic blocks) and therefore in how many bytes a device needs for them
and in how they score a query against the whole catalogue.

Conventions shared by every table:

* ``forward(ids)`` builds only the rows asked for; id 0 gives a zero vector.
* ``score(queries)`` returns ``(batch, num_items + 1)`` scores, column ``j`` being item ``j``; column 0
  (padding) holds the most negative finite value of the dtype so it is never ranked and never produces
  NaN in a softmax or KL term. It never builds a ``batch x items x dim`` tensor.
* ``nbytes()`` is the exact size of the arrays ``export()`` returns, i.e. what a device stores.
* ``export()`` / ``from_export()`` round-trip through plain numpy arrays and a JSON-able description,
  which is what the device artifact stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

TABLE_KINDS: dict[str, type[ItemTable]] = {}
#: Precisions a table's float weights can be stored (exported) at.
STORED_FLOAT_DTYPES = ("float32", "float16")
#: ``int8``: symmetric int8 per vector (last axis) with a float32 scale each (:func:`quantize_rows`).
STORED_DTYPES = (*STORED_FLOAT_DTYPES, "int8")


def check_stored_dtype(dtype: str, allowed: tuple[str, ...] = STORED_FLOAT_DTYPES) -> None:
    """``ValueError`` unless ``dtype`` is one of ``allowed`` (by default the float precisions)."""
    if dtype not in allowed:
        names = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise ValueError(f"dtype (the stored precision of the weights) must be {names}, got {dtype!r}")


def quantize_rows(rows: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantisation: int8 ``values`` and float32 ``scales`` with ``rows ~ scales * values``.

    ``scale = max |row| / (2^(bits-1) - 1)``, round to nearest; an all-zero row gets scale 0 and zeros.
    """
    rows = rows.detach().float()
    top = 2 ** (bits - 1) - 1
    scales = rows.abs().amax(dim=-1) / top
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    values = torch.round(rows / safe.unsqueeze(-1)).clamp_(-top, top).to(torch.int8)
    return values, scales


def register_table(cls: type[ItemTable]) -> type[ItemTable]:
    """Class decorator: make a table kind loadable by name (``table_from_export``)."""
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `kind`")
    TABLE_KINDS[cls.kind] = cls
    return cls


def mask_padding_column(scores: Tensor) -> Tensor:
    """Set column 0 (the padding id) to the most negative finite value, in place; returns ``scores``."""
    scores[:, 0] = torch.finfo(scores.dtype).min
    return scores


class ItemTable(nn.Module, ABC):
    """Base class of all item tables (see the module docstring for the contract)."""

    kind: ClassVar[str] = ""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.num_items = int(num_items)
        self.dim = int(dim)

    @property
    def num_rows(self) -> int:
        """Rows a score covers: the real items plus the padding row 0."""
        return self.num_items + 1

    @abstractmethod
    def forward(self, ids: Tensor) -> Tensor:
        """Vectors ``(*ids.shape, dim)`` of the given ids; id 0 gives zeros."""

    @abstractmethod
    def score(self, queries: Tensor) -> Tensor:
        """Scores ``(batch, num_items + 1)`` of ``queries (batch, dim)`` against every item."""

    @abstractmethod
    def nbytes(self) -> int:
        """Exact bytes of what a device stores for this table (the arrays of ``export()``)."""

    @abstractmethod
    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Named numpy arrays at their stored dtypes, and a JSON-able description (with ``kind``)."""

    @classmethod
    @abstractmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> ItemTable:
        """Rebuild the table from what ``export()`` returned."""

    @classmethod
    @abstractmethod
    def from_description(cls, description: dict[str, Any]) -> ItemTable:
        """An untrained table of the structure ``description`` (from ``export()``) names.

        Checkpoints rebuild the module with it and then load the trained weights.
        """

    @classmethod
    @abstractmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, **kwargs: Any) -> ItemTable:
        """The largest table of this kind that fits ``budget_bytes``; check ``nbytes()`` for what it reached.

        Raises ``ValueError`` naming the smallest reachable size when nothing fits.
        """

    def row_norms(self, chunk: int = 16384) -> Tensor:
        """L2 norm of every row ``(num_items + 1,)``, padding row set to 1, clamped away from 0.

        Rebuilds rows in chunks through ``forward``; tables that hold rows directly override it.
        """
        parts = [self(torch.arange(start, min(start + chunk, self.num_rows))).norm(dim=-1)
                 for start in range(0, self.num_rows, chunk)]
        return normalise_row_norms(torch.cat(parts))

    def all_rows(self) -> Tensor:
        """Every row ``(num_items + 1, dim)``, differentiable: what training losses multiply queries with.

        ``O(n x dim)``; row 0 is not used (scores mask column 0). Default: ``forward`` on all ids;
        tables with a cheaper bulk rebuild override it.
        """
        return self(torch.arange(self.num_rows))

    def cosine_score(self, queries: Tensor) -> Tensor:
        """``score`` with every row divided by its norm (``row_norms``): what cosine scoring ranks by.

        Default: divide the scores column-wise. Tables that can normalise their rows before the product
        (dense, TT) override it, which saves a pass over the ``batch x items`` scores.
        """
        return mask_padding_column(self.score(queries) / self.row_norms().to(queries.dtype).unsqueeze(0))

    def describe(self) -> str:
        """One line for budget reports."""
        return f"{self.kind}(items={self.num_items}, dim={self.dim}, bytes={self.nbytes():,})"

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, dim={self.dim}, nbytes={self.nbytes():,}"


def as_stored(weight: Tensor, stored_dtype: str) -> Tensor:
    """``weight`` rounded to the precision a device stores it at, with gradients passed straight through.

    Tables with a float16 (or int8: per vector, :func:`quantize_rows`) ``stored_dtype`` keep float32 master
    weights (Adam's small steps would vanish in float16) but compute every lookup from this, so what is
    trained, validated and tested is exactly what the exported arrays give.
    """
    if stored_dtype == "float32":
        return weight
    if stored_dtype == "int8":  # per vector along the last axis
        values, scales = quantize_rows(weight)
        return weight + (values.to(weight.dtype) * scales.to(weight.dtype).unsqueeze(-1) - weight).detach()
    return weight + (weight.to(getattr(torch, stored_dtype)).to(weight.dtype) - weight).detach()


def normalise_row_norms(norms: Tensor) -> Tensor:
    norms = norms.clone()
    norms[0] = 1.0
    return norms.clamp_min(1e-8)


def score_row_blocks(queries: Tensor, blocks: Iterable[tuple[int, int, Tensor]], num_rows: int, unit_rows: bool,
                     needs_grad: bool) -> Tensor:
    """Scores ``(batch, num_rows)`` from rebuilt row blocks ``(start, stop, rows)`` covering ``0..num_rows``.

    The path of tables that rebuild rows in chunks (TT, codebooks at large batches): each block is one
    ``queries @ rows.T``, so only a block of rows is alive at a time. ``unit_rows`` normalises each block's
    rows first (cosine scoring without a second pass over the scores). With ``needs_grad`` the blocks are
    concatenated (autograd keeps them anyway); otherwise they are written into one preallocated output.
    """

    def block(start: int, rows: Tensor) -> Tensor:
        if unit_rows:
            norms = rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            if start == 0:  # the padding row is masked anyway; keep it finite
                norms = torch.cat([norms.new_ones(1, 1), norms[1:]])
            rows = rows / norms
        return queries @ rows.to(queries.dtype).t()

    if needs_grad:
        return mask_padding_column(torch.cat([block(start, rows) for start, _, rows in blocks], dim=1))
    out = queries.new_empty((queries.shape[0], num_rows))
    for start, stop, rows in blocks:
        out[:, start:stop] = block(start, rows)
    return mask_padding_column(out)


def table_from_export(arrays: dict[str, np.ndarray], description: dict[str, Any]) -> ItemTable:
    """Rebuild any registered table kind from its export."""
    kind = description.get("kind")
    if kind not in TABLE_KINDS:
        known = ", ".join(sorted(TABLE_KINDS)) or "none"
        raise ValueError(f"unknown item-table kind {kind!r} (known: {known})")
    return TABLE_KINDS[kind].from_export(arrays, description)


def array_nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Total bytes of a dict of arrays; the yardstick every ``nbytes()`` is tested against."""
    return int(sum(a.nbytes for a in arrays.values()))
