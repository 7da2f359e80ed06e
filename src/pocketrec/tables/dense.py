"""Dense item table: one full-precision row per item. The teacher's table and the size yardstick."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.tables.base import ItemTable, mask_padding_column, normalise_row_norms, register_table


@register_table
class DenseTable(ItemTable):
    """``(num_items + 1) x dim`` matrix; row 0 is the padding row, kept at zero.

    ``dtype`` is the stored (exported) precision: float32 by default, float16 halves ``nbytes()``.
    Training always happens in float32; the exported copy is cast.
    """

    kind = "dense"

    def __init__(self, num_items: int, dim: int, init_std: float = 0.02, dtype: str = "float32") -> None:
        super().__init__(num_items, dim)
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.stored_dtype = dtype
        self.weight = nn.Parameter(torch.empty(self.num_rows, dim))
        self.reset_parameters(init_std)

    def reset_parameters(self, init_std: float = 0.02) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, init_std)
            self.weight[0].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        # Padding rows are zeroed by the mask, so the padding row gets no gradient either.
        vectors = nn.functional.embedding(ids, self.weight)
        return vectors * (ids != 0).unsqueeze(-1).to(vectors.dtype)

    def score(self, queries: Tensor) -> Tensor:
        return mask_padding_column(queries @ self.weight.t())

    def row_norms(self, chunk: int = 16384) -> Tensor:
        """Norms straight from the weight matrix (one pass, no row rebuild)."""
        return normalise_row_norms(self.weight.norm(dim=-1))

    def all_rows(self) -> Tensor:
        return self.weight

    def cosine_score(self, queries: Tensor) -> Tensor:
        """Rows normalised before the product (``items x dim`` work instead of ``batch x items``)."""
        unit = self.weight / self.row_norms().unsqueeze(1)
        return mask_padding_column(queries @ unit.to(queries.dtype).t())

    @staticmethod
    def bytes_for(num_items: int, dim: int, dtype: str = "float32") -> int:
        """Bytes of a dense table without building it."""
        return (num_items + 1) * dim * np.dtype(dtype).itemsize

    def nbytes(self) -> int:
        return self.bytes_for(self.num_items, self.dim, self.stored_dtype)

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        weight = self.weight.detach().cpu().numpy().astype(self.stored_dtype)
        return {"weight": weight}, {"kind": self.kind, "num_items": self.num_items, "dim": self.dim,
                                    "dtype": self.stored_dtype}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> DenseTable:
        return cls(int(description["num_items"]), int(description["dim"]),
                   dtype=str(description.get("dtype", "float32")))

    @classmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> DenseTable:
        weight = arrays["weight"]
        table = cls.from_description(description)
        if weight.shape != (table.num_rows, table.dim):
            raise ValueError(f"dense weight has shape {weight.shape}, expected {(table.num_rows, table.dim)}")
        with torch.no_grad():
            table.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        return table

    @classmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, dtype: str = "float32",
                   **kwargs: Any) -> DenseTable:
        """A dense table whose width is the largest ``d <= dim`` that fits the budget."""
        per_dim = cls.bytes_for(num_items, 1, dtype)
        width = min(dim, budget_bytes // per_dim)
        if width < 1:
            raise ValueError(f"budget {budget_bytes:,} B is below the smallest dense table "
                             f"({per_dim:,} B for d=1, {num_items:,} items)")
        return cls(num_items, int(width), dtype=dtype, **kwargs)
