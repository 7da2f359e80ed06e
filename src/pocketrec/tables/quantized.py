"""Row-wise quantised item table: the post-hoc int8 / int4 baseline a sceptical user asks for first.

Each row ``e_i`` is stored as signed integers ``c_i`` of ``bits`` bits (8 or 4) and one float32 scale
``s_i = max_j |e_ij| / (2^(bits-1) - 1)`` (symmetric, per row, round to nearest), so ``e_i ~ s_i c_i``.
No training: :meth:`QuantizedTable.from_rows` quantises a trained (teacher) table. int4 values are
stored two per byte (low nibble first, two's complement), so ``nbytes()`` is ``(n+1) * (ceil(d*bits/8) + 4)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketrec.formats.bitpack import pack_int4, unpack_int4
from pocketrec.tables.base import ItemTable, mask_padding_column, quantize_rows, register_table

BITS = (8, 4)
_SCORE_CHUNK = 65536


@register_table
class QuantizedTable(ItemTable):
    """Integer rows with a per-row scale (see the module docstring). A frozen table: nothing trains."""

    kind = "quantized"

    def __init__(self, num_items: int, dim: int, bits: int = 8) -> None:
        super().__init__(num_items, dim)
        if bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {bits}")
        self.bits = int(bits)
        self.register_buffer("values", torch.zeros(self.num_rows, dim, dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(self.num_rows))

    @classmethod
    def from_rows(cls, rows: Tensor, bits: int = 8) -> QuantizedTable:
        """Quantise ``rows (num_items + 1, dim)`` (row 0 = padding, stored as zeros)."""
        table = cls(rows.shape[0] - 1, rows.shape[1], bits)
        values, scales = quantize_rows(rows, bits)
        values[0] = 0
        scales[0] = 0.0
        table.values.copy_(values)
        table.scales.copy_(scales)
        return table

    @staticmethod
    def bytes_for(num_items: int, dim: int, bits: int = 8) -> int:
        return (int(num_items) + 1) * (-(-int(dim) * int(bits) // 8) + 4)

    def nbytes(self) -> int:
        return self.bytes_for(self.num_items, self.dim, self.bits)

    def forward(self, ids: Tensor) -> Tensor:
        vectors = self.values[ids].float() * self.scales[ids].unsqueeze(-1)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def score(self, queries: Tensor) -> Tensor:
        out = queries.new_empty((queries.shape[0], self.num_rows))
        for start in range(0, self.num_rows, _SCORE_CHUNK):
            stop = min(start + _SCORE_CHUNK, self.num_rows)
            out[:, start:stop] = (queries @ self.values[start:stop].to(queries.dtype).t()) * self.scales[start:stop]
        return mask_padding_column(out)

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        values = self.values.cpu().numpy()
        stored = values if self.bits == 8 else pack_int4(values)
        return ({"values": stored, "scales": self.scales.cpu().numpy().astype(np.float32)},
                {"kind": self.kind, "num_items": self.num_items, "dim": self.dim, "bits": self.bits})

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> QuantizedTable:
        return cls(int(description["num_items"]), int(description["dim"]), int(description.get("bits", 8)))

    @classmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> QuantizedTable:
        table = cls.from_description(description)
        values = arrays["values"]
        if table.bits == 4:
            values = unpack_int4(values, table.dim)
        if values.shape != (table.num_rows, table.dim) or arrays["scales"].shape != (table.num_rows,):
            raise ValueError(f"quantized table arrays have shapes {values.shape} / {arrays['scales'].shape}, "
                             f"expected {(table.num_rows, table.dim)} / {(table.num_rows,)}")
        table.values.copy_(torch.from_numpy(values.astype(np.int8)))
        table.scales.copy_(torch.from_numpy(arrays["scales"].astype(np.float32)))
        return table

    @classmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, **kwargs: Any) -> QuantizedTable:
        """The most bits (8, then 4) whose table fits; the size is fixed by the bits, not tunable."""
        for bits in BITS:
            if cls.bytes_for(num_items, dim, bits) <= budget_bytes:
                return cls(num_items, dim, bits)
        raise ValueError(f"budget {budget_bytes:,} B is below the smallest quantized table "
                         f"({cls.bytes_for(num_items, dim, 4):,} B at 4 bits, {num_items:,} items, dim={dim})")

    def extra_repr(self) -> str:
        return f"num_items={self.num_items}, dim={self.dim}, bits={self.bits}, nbytes={self.nbytes():,}"
